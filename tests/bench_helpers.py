"""Loading a bench/ script as a module in tests (bench/ is not a package), and a rate record."""

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(k: int, n: int) -> dict:
    """A Rate.as_dict() stand-in with a placeholder interval."""
    return {"k": k, "n": n, "rate": k / n, "low": 0.0, "high": 1.0}
