"""Statistics: failure-rate intervals, strategy comparisons, adaptive stopping, number formats.

Everything here is a pure function of counts, in the standard library: the normal quantile is
`statistics.NormalDist`'s, the rest is closed forms and one sum. (scipy gives the same numbers,
as tests/test_stats.py checks, but ``import scipy.stats`` cost ~1.8 s of every 2 s one-run
campaign on this project's machines, and every report needs these numbers.)

- a rate's interval is the Wilson score interval (scipy's ``binomtest(...).proportion_ci(
  method="wilson")``), which behaves at 0 and n failures, where the textbook normal interval
  collapses. With zero failures only its upper bound means anything, so it is shown as
  "< 0.13%" (0/3000): the two-sided 95% upper bound, i.e. a conservative one-sided 97.5% bound;
- two strategies are compared with Fisher's exact test, two-sided as scipy's ``fisher_exact``
  defines it (the probability of every table, with the same margins, no more likely than the
  one seen; the hypergeometric terms are summed outward from the mode), and the rate ratio
  with its Katz log interval (scipy's ``relative_risk(...).confidence_interval``). When a count
  is zero the ratio's interval is undefined, so the Haldane-Anscombe correction (add 0.5 to
  every cell) is used for the interval only; the point estimate stays 0 (or infinite).

Counts are always (failures, runs): runs exclude `infra` runs, failures are `crash` + `error`
+ `hang` runs (see `harness.aggregate`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from shutdown_harness.errors import UsageError

__all__ = [
    "CONFIDENCE",
    "ALPHA",
    "FIDELITY_ALPHA",
    "Comparison",
    "wilson_interval",
    "interval_halfwidth",
    "cell_done",
    "parse_halfwidth",
    "compare",
    "fisher_exact",
    "format_pct",
    "format_rate",
    "format_p",
    "format_ratio",
    "format_reduction",
]

CONFIDENCE = 0.95
ALPHA = 0.05  # significance level of the verdict sentences
#: Below this Fisher p-value, a cell's warm and cold runs differ: its warm numbers are not
#: trusted (the reports say so loudly and gates fail; harness/warm.py).
FIDELITY_ALPHA = 0.01
#: scipy's tolerance for tables as likely as the one seen (floating-point ties count as ties).
_TIE = 1 + 1e-7


@cache
def _z(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    # Imported here, where a number needs it: statistics pulls decimal, fractions and random
    # (~6 ms of every run's start-up, -X importtime), and a campaign needs it only to report.
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of k failures in n runs; (0, 1) when there are no runs."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k} n={n}")
    if n == 0:
        return (0.0, 1.0)
    z2 = _z(confidence) ** 2
    center = (k + z2 / 2) / (n + z2)
    half = math.sqrt(z2) / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    lo, hi = center - half, center + half
    # The closed form can land a hair outside [0, 1] or off the exact ends at k=0 / k=n.
    return (0.0 if k == 0 else max(0.0, lo), 1.0 if k == n else min(1.0, hi))


def interval_halfwidth(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Half the width of the Wilson interval (0.5 with no runs)."""
    lo, hi = wilson_interval(k, n, confidence)
    return (hi - lo) / 2


def cell_done(failures: int, runs: int, halfwidth: float,
              confidence: float = CONFIDENCE) -> bool:
    """Adaptive stopping (`--until-halfwidth W`): is this cell's interval already narrow enough?

    `runs` counts finished non-infra runs, `failures` the crash/error/hang ones among them. A cell
    that never fails stops once its upper bound is below 2W (e.g. W=0.01 needs ~190 clean runs);
    a cell failing half the time needs ~9600 runs, so the scheduler's time goes where the verdict
    is still open. `--runs` stays the cap: the caller checks it.
    """
    if halfwidth <= 0:
        raise ValueError("the half-width target must be positive")
    if runs <= 0:
        return False
    return interval_halfwidth(failures, runs, confidence) <= halfwidth


def parse_halfwidth(text: str) -> float:
    """`--until-halfwidth` value: a fraction ("0.02") or a percentage ("2%"), in (0, 0.5]."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"--until-halfwidth: not a number: {text!r}") from None
    if not 0 < value <= 0.5:
        raise UsageError(f"--until-halfwidth must be in (0, 0.5] (or (0%, 50%]), got {text!r}")
    return value


@dataclass(frozen=True)
class Comparison:
    """Strategy `b` against the baseline `a`, both (failures, runs) in the same scenario and load.

    `ratio` is rate_b / rate_a with its interval (`ratio_lo`, `ratio_hi`); the relative reduction
    is 1 - ratio. `p_value` is Fisher's exact two-sided test. NaN where a quantity is undefined
    (e.g. the ratio when neither fails).
    """

    a: str
    b: str
    k_a: int
    n_a: int
    k_b: int
    n_b: int
    p_value: float
    ratio: float
    ratio_lo: float
    ratio_hi: float
    confidence: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.confidence

    @property
    def rate_a(self) -> float:
        return self.k_a / self.n_a if self.n_a else math.nan

    @property
    def rate_b(self) -> float:
        return self.k_b / self.n_b if self.n_b else math.nan

    @property
    def direction(self) -> str:
        """'lower', 'higher' (b against a, significant at the confidence level), or 'same'."""
        if not self.significant:
            return "same"
        return "lower" if self.rate_b < self.rate_a else "higher"

    def sentence(self) -> str:
        """The verdict in one plain sentence, with counts, intervals and the p-value."""
        b_stats = f"{self.k_b}/{self.n_b} ({format_rate(self.k_b, self.n_b)})"
        a_stats = f"{self.k_a}/{self.n_a} ({format_rate(self.k_a, self.n_a)})"
        p = format_p(self.p_value)
        if self.n_a == 0 or self.n_b == 0:
            return f"{self.b} vs {self.a}: not enough runs to compare ({b_stats} vs {a_stats})."
        if self.k_a == 0 and self.k_b == 0:
            return (f"Neither {self.b} ({self.k_b}/{self.n_b}, {format_rate(0, self.n_b)}) nor "
                    f"{self.a} ({self.k_a}/{self.n_a}, {format_rate(0, self.n_a)}) failed: "
                    "these runs cannot tell them apart.")
        counts = f"{b_stats} vs {a_stats} on {self.a}"
        if self.direction == "lower":
            if self.k_b == 0:
                verb = "removes the failures"
            else:
                verb = f"reduces the failure rate by {format_reduction(self)}"
            return f"{self.b} {verb}: {counts}, Fisher {p}."
        if self.direction == "higher":
            if self.k_a == 0:
                verb = "introduces failures"
            else:
                verb = f"raises the failure rate {format_ratio(self)}"
            return f"{self.b} {verb}: {counts}, Fisher {p}."
        return (f"No significant difference between {self.b} ({self.k_b}/{self.n_b}, "
                f"{format_rate(self.k_b, self.n_b)}) and {self.a} ({self.k_a}/{self.n_a}, "
                f"{format_rate(self.k_a, self.n_a)}): Fisher {p}.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("p_value", "ratio", "ratio_lo", "ratio_hi"):
            data[key] = _json_float(data[key])
        data.update(significant=self.significant, direction=self.direction,
                    reduction=_json_float(1 - self.ratio), sentence=self.sentence())
        return data


def compare(a: str, k_a: int, n_a: int, b: str, k_b: int, n_b: int,
            confidence: float = CONFIDENCE) -> Comparison:
    """Compare strategy `b` (k_b failures in n_b runs) against the baseline `a`."""
    if n_a == 0 or n_b == 0:
        return Comparison(a, b, k_a, n_a, k_b, n_b, math.nan, math.nan, math.nan, math.nan,
                          confidence)
    p = fisher_exact(k_b, n_b - k_b, k_a, n_a - k_a)
    ratio, lo, hi = _rate_ratio(k_b, n_b, k_a, n_a, confidence)
    return Comparison(a, b, k_a, n_a, k_b, n_b, p, ratio, lo, hi, confidence)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Fisher's exact test, two-sided, of the table ``[[a, b], [c, d]]``: its p-value.

    With the margins fixed, ``a`` is hypergeometric; the p-value is the probability of every
    ``a`` no more likely than the one seen. The terms are relative to the mode (1 there) and
    made by the ratio of consecutive terms, so nothing overflows; terms below 1e-300 of the
    mode's are left out, which moves no p-value that `format_p` shows (it stops at 1e-100).
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"a table needs counts >= 0, got {[[a, b], [c, d]]}")
    row, col, total = a + b, a + c, a + b + c + d
    lo, hi = max(0, row + col - total), min(row, col)
    if lo == hi:
        return 1.0
    mode = (row + 1) * (col + 1) // (total + 2)
    other = total - row - col  # d - a, the constant in the ratio of consecutive terms
    terms = {mode: 1.0}
    term, x = 1.0, mode
    while x < hi and term > 1e-300:  # P(x+1) / P(x)
        term *= (col - x) * (row - x) / ((x + 1) * (other + x + 1))
        x += 1
        terms[x] = term
    term, x = 1.0, mode
    while x > lo and term > 1e-300:  # P(x-1) / P(x)
        term *= x * (other + x) / ((col - x + 1) * (row - x + 1))
        x -= 1
        terms[x] = term
    seen = terms.get(a, 0.0) * _TIE
    tail = math.fsum(t for t in terms.values() if t <= seen)
    return min(1.0, tail / math.fsum(terms.values()))


def _rate_ratio(k_b: int, n_b: int, k_a: int, n_a: int,
                confidence: float) -> tuple[float, float, float]:
    """rate_b / rate_a and its Katz log interval (Haldane-Anscombe corrected at zero counts)."""
    if k_a == 0 and k_b == 0:
        return (math.nan, math.nan, math.nan)
    z = _z(confidence)
    if k_a > 0 and k_b > 0:
        rr = (k_b / n_b) / (k_a / n_a)
        se = math.sqrt(1 / k_b - 1 / n_b + 1 / k_a - 1 / n_a)
        return (rr, rr * math.exp(-z * se), rr * math.exp(z * se))
    # One side is zero: the Katz interval is undefined there. Corrected counts for the interval.
    a, b, c, d = k_b + 0.5, n_b + 1.0, k_a + 0.5, n_a + 1.0
    log_rr = math.log((a / b) / (c / d))
    se = math.sqrt(1 / a - 1 / b + 1 / c - 1 / d)
    lo, hi = math.exp(log_rr - z * se), math.exp(log_rr + z * se)
    if k_b == 0:
        return (0.0, 0.0, hi)
    return (math.inf, lo, math.inf)


# ---------------------------------------------------------------------------------------------
# Formatting

def format_pct(x: float, direction: str = "nearest") -> str:
    """A fraction as a percentage: one decimal from 1% up ('20.6%'), two significant digits
    below ('0.13%').

    `direction` is 'up' for upper bounds and 'down' for lower bounds, so rounding never makes a
    bound claim more than the data does; 'nearest' for point estimates.
    """
    if not math.isfinite(x):
        return "n/a"
    pct = x * 100
    if pct <= 0:
        return "0%"
    if pct >= 100:
        return "100%"
    decimals = 1 if pct >= 1 else 1 - math.floor(math.log10(pct))
    scale = 10.0**decimals
    if direction == "up":
        value = math.ceil(pct * scale - 1e-9) / scale
    elif direction == "down":
        value = math.floor(pct * scale + 1e-9) / scale
    else:
        value = round(pct, decimals)
    if value >= 100:
        return "100%"
    if value >= 1:
        decimals = 1
    return f"{value:.{decimals}f}%"


def format_rate(k: int, n: int, confidence: float = CONFIDENCE) -> str:
    """'20.6% [18.9–22.4%]', '< 0.13%' for zero failures, 'no runs' without runs."""
    if n == 0:
        return "no runs"
    lo, hi = wilson_interval(k, n, confidence)
    if k == 0:
        return f"< {format_pct(hi, 'up')}"
    lo_s, hi_s = format_pct(lo, "down"), format_pct(hi, "up")
    return f"{format_pct(k / n)} [{lo_s.rstrip('%')}–{hi_s}]"


def format_p(p: float) -> str:
    """'p = 0.041', 'p = 3.2e-30', 'p < 1e-100' (beyond that the digits are noise)."""
    if not math.isfinite(p):
        return "p = n/a"
    if p < 1e-100:
        return "p < 1e-100"
    if p >= 0.001:
        return f"p = {p:.2g}" if p < 0.995 else "p = 1"
    return f"p = {p:.1e}".replace("e-0", "e-")


def format_ratio(c: Comparison) -> str:
    """'5.2x [3.9–7.0x]' for rate_b / rate_a."""
    if math.isnan(c.ratio):
        return "n/a"
    if math.isinf(c.ratio):
        return f"from zero (ratio > {c.ratio_lo:.3g}x)"
    return f"{c.ratio:.3g}x [{c.ratio_lo:.3g}–{c.ratio_hi:.3g}x]"


def format_reduction(c: Comparison) -> str:
    """'81% [74–86%]': 1 - ratio, with its interval (1 - ratio_hi, 1 - ratio_lo)."""
    if math.isnan(c.ratio) or math.isinf(c.ratio):
        return "n/a"
    lo = format_pct(max(0.0, 1 - c.ratio_hi), "down")
    hi = format_pct(min(1.0, 1 - c.ratio_lo), "up")
    return f"{format_pct(1 - c.ratio)} [{lo.rstrip('%')}–{hi}]"


def _json_float(x: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return x if math.isfinite(x) else None
