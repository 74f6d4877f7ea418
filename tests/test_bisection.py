from __future__ import annotations

import pytest
from shutdown_harness import bisection


def test_posterior_puts_the_change_where_the_counts_change() -> None:
    counts = [(10, 40), (9, 40), (11, 40), (0, 40), (0, 40)]
    p = bisection.posterior(counts)
    assert len(p) == 4 and sum(p) == pytest.approx(1.0)
    k, prob = bisection.best(counts)
    assert k == 3 and prob > 0.99  # releases 0-2 old side, 3-4 new side


def test_unmeasured_releases_keep_the_change_point_open() -> None:
    counts = [(10, 40), (0, 0), (0, 0), (0, 0), (0, 40)]
    p = bisection.posterior(counts)
    assert max(p) < 0.3  # four places equally possible
    gains = bisection.gains(counts, 10)
    # the middle of the unknown releases tells the most; the measured ends the least
    assert bisection.next_probe(counts, 10) == 2
    assert gains[2] > gains[1] > gains[0]
    assert bisection.information_gain(counts, 2, 10) == pytest.approx(gains[2])


def test_a_quiet_release_on_a_five_percent_side_is_not_taken_for_fixed() -> None:
    """0/20 at a release is little evidence against 5%: the posterior must not reach 99%."""
    counts = [(10, 200), (0, 20), (0, 200)]
    assert bisection.best(counts)[1] < bisection.CONFIDENCE


def test_ends_differ_is_fishers_p() -> None:
    assert bisection.ends_differ((12, 40), (0, 40)) < 0.001
    assert bisection.ends_differ((1, 10), (0, 10)) == pytest.approx(1.0)
    assert bisection.ends_differ((0, 0), (0, 10)) == 1.0


def test_deflaked_bisection_steps() -> None:
    counts = [(20, 100), (0, 0), (0, 0), (0, 100)]
    assert bisection.deflaked_next(counts, 0, 3, 0.01) == ("run", 1)
    counts[1] = (5, 10)
    assert bisection.deflaked_next(counts, 0, 3, 0.01) == ("old", 1)
    assert bisection.deflaked_next(counts, 2, 3, 0.01) == ("done", 3)


@pytest.mark.parametrize("method", ["bayes", "deflaked"])
def test_simulated_search_finds_a_clear_change(method: str) -> None:
    rates = [0.3] * 5 + [0.0] * 11
    trial = bisection.simulate(rates, method, batch=10, seed=3)
    assert trial.truth == 5 and trial.answer == 5 and trial.runs > 0
    refused = bisection.simulate([0.1] * 4 + [0.09] * 4, method, end_cap=40, seed=1)
    assert refused.answer is None and refused.runs == 80  # the ends could not be told apart
