"""Clopper-Pearson bounds for a paired top-1 drop (``runtimes.labelled``), checked against
closed forms, a brute-force search over p with exact binomial sums, and a simulation of
how often the bound covers the true drop."""

from __future__ import annotations

import functools
import math
import random

import pytest

from runtimes.labelled import (
    CONFIDENCE,
    binomial_lower,
    binomial_upper,
    detectable_drop,
    drop_bound,
    images_needed,
)

ALPHA = (1 - CONFIDENCE) / 2


def exact_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def grid_search(holds, step: float = 1e-5) -> list[float]:
    """Every p on a grid of ``step`` at which ``holds(p)``, scanning a 1e-3 grid first and every
    1e-5 step around each point where the coarse scan changes."""
    coarse = [i * 1e-3 for i in range(1001)]
    found = [p for p in coarse if holds(p)]
    for a, b in zip(coarse, coarse[1:]):
        if holds(a) != holds(b):
            found += [p for p in (a + i * step for i in range(1, round(1e-3 / step))) if holds(p)]
    return found


def brute_upper(k: int, n: int, alpha: float) -> float:
    """The largest p on the grid at which P(X <= k) is still at least alpha."""
    return max(grid_search(lambda p: exact_cdf(k, n, p) >= alpha))


def brute_lower(k: int, n: int, alpha: float) -> float:
    """The smallest p on the grid at which P(X >= k) is still at least alpha."""
    return min(grid_search(lambda p: 1 - exact_cdf(k - 1, n, p) >= alpha))


def test_no_success_has_the_closed_form():
    """k = 0 of n: the upper bound is 1 - alpha**(1/n) (e.g. n = 18, alpha = 0.025)."""
    for n in (1, 18, 100, 3000):
        assert binomial_upper(0, n, 0.025) == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    assert binomial_upper(0, 18, 0.025) == pytest.approx(0.185302, abs=1e-6)


@pytest.mark.parametrize("k,n", [(0, 18), (1, 18), (3, 20), (7, 50), (25, 50), (49, 50)])
def test_bounds_match_a_brute_force_search(k, n):
    """Upper and lower Clopper-Pearson bounds agree with a grid search over p using exact
    binomial sums (math.comb), to the grid's step."""
    assert binomial_upper(k, n, ALPHA) == pytest.approx(brute_upper(k, n, ALPHA), abs=2e-5)
    if k > 0:
        assert binomial_lower(k, n, ALPHA) == pytest.approx(brute_lower(k, n, ALPHA), abs=2e-5)


def test_known_clopper_pearson_interval():
    """3 of 20 at 95% two-sided: the textbook interval 0.0321-0.3789."""
    assert binomial_lower(3, 20, 0.025) == pytest.approx(0.0321, abs=1e-4)
    assert binomial_upper(3, 20, 0.025) == pytest.approx(0.3789, abs=1e-4)


@pytest.mark.parametrize("k,n", [(5, 5000), (40, 20000)])
def test_bounds_hold_for_many_images(k, n):
    """For large n (no overflow in log space) the upper bound is where P(X <= k) crosses alpha."""
    upper = binomial_upper(k, n, ALPHA)
    assert exact_cdf(k, n, upper * (1 - 1e-3)) > ALPHA > exact_cdf(k, n, upper * (1 + 1e-3))


def test_edges():
    """All successes bound at 1 above; none at 0 below."""
    assert binomial_upper(10, 10, ALPHA) == 1.0
    assert binomial_lower(0, 10, ALPHA) == 0.0
    assert binomial_lower(10, 10, 0.025) == pytest.approx(0.025 ** (1 / 10), rel=1e-9)


def test_drop_bound_is_monotonic():
    """The bound on the drop grows with every image lost and shrinks with every image gained."""
    images = 200
    by_lost = [drop_bound(lost, 3, images) for lost in range(0, 30)]
    by_gained = [drop_bound(8, gained, images) for gained in range(0, 30)]
    assert all(a < b for a, b in zip(by_lost, by_lost[1:]))
    assert all(a > b for a, b in zip(by_gained, by_gained[1:]))
    assert drop_bound(5, 5, images) > 0 > drop_bound(0, 20, images)


def test_detectable_drop_falls_with_more_images():
    """More images bound a smaller drop; with none differing it is 1 - alpha**(1/n)."""
    drops = [detectable_drop(n) for n in (10, 50, 100, 500, 1000, 5000)]
    assert all(a > b for a, b in zip(drops, drops[1:]))
    assert detectable_drop(500) == pytest.approx(1 - ALPHA ** (1 / 500), rel=1e-9)


@pytest.mark.parametrize("drop", [0.1, 0.05, 0.02, 0.0123, 0.01, 0.005])
def test_images_needed_is_the_smallest_that_suffices(drop):
    """images_needed(d) images bound a drop of d with none differing; one image fewer does not."""
    n = images_needed(drop)
    assert detectable_drop(n) <= drop < detectable_drop(n - 1)


def test_the_bound_covers_the_true_drop():
    """Simulated paired evaluations (true loss rate 4%, gain rate 1%, 300 images): the 95% bound
    lies at or above the true drop of 3 points in at least 95% of 400 runs."""
    rng = random.Random(0)
    p_lost, p_gained, images = 0.04, 0.01, 300
    bound = functools.lru_cache(maxsize=None)(drop_bound)
    covered = 0
    for _ in range(400):
        lost = gained = 0
        for _ in range(images):
            u = rng.random()
            lost += u < p_lost
            gained += p_lost <= u < p_lost + p_gained
        covered += bound(lost, gained, images) >= p_lost - p_gained
    print(f"\ndrop_bound covered the true drop in {covered} of 400 runs")
    assert covered >= 0.95 * 400
