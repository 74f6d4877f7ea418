from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
from shutdown_harness import stats
from shutdown_harness.errors import UsageError


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(412, 2000), (1, 3), (7, 100000), (0, 3000), (50, 50)])
def test_wilson_interval_matches_the_closed_form(k: int, n: int) -> None:
    lo, hi = stats.wilson_interval(k, n)
    ref_lo, ref_hi = _wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0.0, ref_lo), abs=1e-12)
    assert hi == pytest.approx(min(1.0, ref_hi), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_edges() -> None:
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.wilson_interval(0, 10)[0] == 0.0
    assert stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(5, 100, confidence=0.99)[1] > stats.wilson_interval(5, 100)[1]
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)


def _percent(text: str) -> float:
    return float(re.search(r"([\d.]+)%", text).group(1)) / 100  # type: ignore[union-attr]


def test_zero_failures_read_as_an_upper_bound_never_rounded_down() -> None:
    text = stats.format_rate(0, 3000)
    assert text == "< 0.13%"
    for n in (3, 30, 299, 3000, 123457):
        shown = _percent(stats.format_rate(0, n))
        assert shown >= stats.wilson_interval(0, n)[1]


def test_format_rate_interval_bounds_round_outwards() -> None:
    assert stats.format_rate(412, 2000) == "20.6% [18.8–22.5%]"
    for k, n in ((1, 7), (13, 997), (5, 100000)):
        text = stats.format_rate(k, n)
        lo, hi = stats.wilson_interval(k, n)
        lo_s, hi_s = re.search(r"\[([\d.]+)–([\d.]+)%\]", text).groups()  # type: ignore[union-attr]
        assert float(lo_s) / 100 <= lo and float(hi_s) / 100 >= hi
    assert stats.format_rate(0, 0) == "no runs"


def test_format_p() -> None:
    assert stats.format_p(1e-135) == "p < 1e-100"
    assert stats.format_p(3.2e-30) == "p = 3.2e-30"
    assert stats.format_p(0.041) == "p = 0.041"
    assert stats.format_p(math.nan) == "p = n/a"


def test_compare_fixed_crash_reads_as_a_verdict() -> None:
    c = stats.compare("0.4.1", 412, 2000, "0.5.1", 0, 2000)
    assert c.p_value < 1e-100 and c.direction == "lower"
    assert c.ratio == 0.0 and 0 < c.ratio_hi < 0.05
    assert c.sentence() == ("0.5.1 removes the failures: 0/2000 (< 0.20%) vs 412/2000 "
                            "(20.6% [18.8–22.5%]) on 0.4.1, Fisher p < 1e-100.")
    assert c.to_dict()["reduction"] == 1.0


def test_compare_partial_reduction_and_increase() -> None:
    c = stats.compare("a", 412, 2000, "b", 40, 2000)
    assert c.ratio == pytest.approx(40 / 412)
    assert c.ratio_lo < c.ratio < c.ratio_hi
    assert "b reduces the failure rate by 90.3% [" in c.sentence()
    assert "p = 2.2e-87" in c.sentence()
    up = stats.compare("b", 40, 2000, "a", 412, 2000)
    assert up.direction == "higher" and "raises the failure rate 10.3x" in up.sentence()
    new = stats.compare("a", 0, 2000, "b", 40, 2000)
    assert math.isinf(new.ratio) and new.ratio_lo > 1
    assert "b introduces failures" in new.sentence()
    assert new.to_dict()["ratio"] is None  # JSON has no infinity


def test_compare_inconclusive_and_empty() -> None:
    same = stats.compare("a", 3, 200, "b", 4, 200)
    assert not same.significant
    assert same.sentence() == ("No significant difference between b (4/200, 2.0% [0.78–5.1%]) "
                               "and a (3/200, 1.5% [0.51–4.4%]): Fisher p = 1.")
    assert stats.compare("a", 0, 200, "b", 0, 200).sentence() == (
        "Neither b (0/200, < 1.9%) nor a (0/200, < 1.9%) failed: "
        "these runs cannot tell them apart.")
    assert "not enough runs" in stats.compare("a", 0, 0, "b", 1, 10).sentence()


def test_cell_done_stops_clear_cells_first() -> None:
    # A cell that never fails is settled after ~190 runs at W=1%; a 50% cell needs ~9600.
    assert not stats.cell_done(0, 150, 0.01)
    assert stats.cell_done(0, 200, 0.01)
    assert not stats.cell_done(2500, 5000, 0.01)
    assert stats.cell_done(5000, 10000, 0.01)
    assert not stats.cell_done(0, 0, 0.5)
    with pytest.raises(ValueError):
        stats.cell_done(1, 10, 0)


def test_parse_halfwidth() -> None:
    assert stats.parse_halfwidth("0.02") == 0.02
    assert stats.parse_halfwidth("2%") == pytest.approx(0.02)
    for bad in ("x", "0", "60%", "-1"):
        with pytest.raises(UsageError):
            stats.parse_halfwidth(bad)


# -- the same numbers as scipy (a test dependency only: the harness does not import it) ------
_TABLES = [(412, 1588, 0, 2000), (40, 1960, 412, 1588), (3, 197, 4, 196), (0, 200, 0, 200),
           (1, 0, 0, 1), (5, 0, 0, 5), (7, 3, 2, 8), (0, 10, 10, 0), (2, 30, 30, 2),
           (1, 99999, 7, 99993), (120, 2880, 95, 2905), (25000, 25000, 24700, 25300),
           (0, 3000, 1, 2999), (9, 1, 11, 0), (50, 50, 50, 50), (3, 5, 3, 5)]


@pytest.mark.parametrize("table", _TABLES, ids=[str(t) for t in _TABLES])
def test_fisher_exact_is_scipys_two_sided_test(table: tuple[int, int, int, int]) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b, c, d = table
    expected = float(scipy_stats.fisher_exact([[a, b], [c, d]], alternative="two-sided")[1])
    got = stats.fisher_exact(a, b, c, d)
    if expected < 1e-250:  # beyond the digits format_p shows
        assert got < 1e-100
    else:
        assert got == pytest.approx(expected, rel=1e-9)


def test_fisher_exact_symmetries_and_bad_input() -> None:
    for a, b, c, d in _TABLES:
        p = stats.fisher_exact(a, b, c, d)
        assert 0.0 <= p <= 1.0
        assert stats.fisher_exact(c, d, a, b) == pytest.approx(p, rel=1e-9)  # rows swapped
        assert stats.fisher_exact(a, c, b, d) == pytest.approx(p, rel=1e-9)  # transposed
    with pytest.raises(ValueError):
        stats.fisher_exact(-1, 2, 3, 4)


@pytest.mark.parametrize(("k", "n"), [(412, 2000), (1, 3), (7, 100000), (0, 3000), (50, 50),
                                      (2, 9)])
def test_wilson_interval_is_scipys(k: int, n: int) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for confidence in (0.9, 0.95, 0.99):
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=confidence,
                                                       method="wilson")
        lo, hi = stats.wilson_interval(k, n, confidence)
        assert lo == pytest.approx(max(0.0, float(ci.low)), abs=1e-12)
        assert hi == pytest.approx(min(1.0, float(ci.high)), abs=1e-12)


@pytest.mark.parametrize(("k_b", "n_b", "k_a", "n_a"),
                         [(40, 2000, 412, 2000), (412, 2000, 40, 2000), (1, 10, 3, 7)])
def test_rate_ratio_interval_is_scipys_katz_interval(k_b: int, n_b: int, k_a: int,
                                                     n_a: int) -> None:
    contingency = pytest.importorskip("scipy.stats.contingency")
    rr = contingency.relative_risk(k_b, n_b, k_a, n_a)
    ci = rr.confidence_interval(confidence_level=0.95)
    c = stats.compare("a", k_a, n_a, "b", k_b, n_b)
    assert (c.ratio, c.ratio_lo, c.ratio_hi) == pytest.approx(
        (float(rr.relative_risk), float(ci.low), float(ci.high)), rel=1e-9)


def test_the_numbers_need_no_scipy() -> None:
    code = ("import sys; from shutdown_harness import reports, stats, workflow, cli; "
            "stats.compare('a', 3, 10, 'b', 1, 10); stats.format_rate(1, 10); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
