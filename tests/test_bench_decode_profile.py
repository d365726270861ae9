"""bench/decode_profile.py runs (--quick, tiny model) and its per-step accounting adds up: proof the
profile is read right, not a measurement."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def profile(*args):
    return subprocess.run([sys.executable, BENCH / "decode_profile.py", "--quick", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_decode_profile_splits_each_step_and_counts_the_matmul_flops(tiny_dir, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "profile.json"
    proc = profile("--model", tiny_dir, "--batch", 3, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "decode step (mean of 5, batch 3 -> 3)" in proc.stdout, proc.stdout
    result = json.loads(out.read_text())["batches"][0]
    steps = result["steps"]
    # --quick decodes 6 tokens: 6 steps, each choosing a token; all but the last run a forward
    assert [s["forward"] for s in steps] == [True] * 5 + [False]
    assert result["prefill_ms"] > 0

    cfg = AutoConfig.from_pretrained(tiny_dir)
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_token = cfg.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)
    for s in steps[:-1]:
        assert s["batch"] == 3
        # one new token per row: 2 FLOPs per weight per row in the layers, and the head at that one position
        assert s["flops"]["matmul"] == 2 * 3 * per_token
        assert s["flops"]["lm_head"] == 2 * 3 * h * cfg.vocab_size
        assert sum(s["ms"].values()) == pytest.approx(s["wall_ms"], rel=1e-6)
        assert all(s["ms"][c] > 0 for c in ("matmul", "attention", "lm_head", "other_aten", "overhead")), s["ms"]
        assert 0 < s["forward_ms"] < s["wall_ms"]
    mean = result["per_step_mean"]
    assert len(mean["top_ops"]) == 15 and mean["top_ops"][0]["self_ms"] >= mean["top_ops"][-1]["self_ms"]
    assert 0 < mean["matmul_rates"]["lm_head"]["fraction_of_peak"]


def test_decode_profile_rejects_bad_batch_before_loading_a_model(tmp_path):
    proc = profile("--model", tmp_path / "no-such-model", "--batch", 0)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --batch must be positive, got [0]"
