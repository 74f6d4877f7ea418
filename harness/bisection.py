"""Bisection of a flaky crash over a package's releases: which release changed the rate.

A shutdown crash is a probability, not a yes/no: a release that crashed 0 times in 30 runs may
still be bad. So this is noisy bisection, as git-bayesect and Google's "Flake Aware Culprit
Finding" (ICST 2023) do it: a posterior over the *change point* (the first release on the new
side), with the failure rate on each side unknown and given a Beta prior, so that every run at
every release counts as evidence.

Model: releases r_0..r_{n-1} in version order, r_0 one end and r_{n-1} the other. The change
point k (1 <= k <= n-1) puts r_0..r_{k-1} on the old side, with failure rate a, and r_k..r_{n-1}
on the new side, with rate b; a and b ~ Beta(1/2, 1/2) (Jeffreys), independent; uniform prior
over k. With F, N the failures and runs pooled on each side, the likelihood of k integrates the
rates out: B(1/2 + F, 1/2 + N - F) / B(1/2, 1/2) per side (Beta-Bernoulli marginal), so the
posterior of k is a pure function of the per-release counts.

Each next batch goes to the release whose outcome tells the most about k: the mutual
information between k and the number of failures in the batch (Beta-Binomial predictive per
side), i.e. the expected drop in the posterior's entropy. The search stops when one k holds
``confidence`` (99%) of the posterior, or at the run cap.

Everything above :func:`simulate` is a pure function of counts (``list[tuple[int, int]]``:
failures, runs per release), so the simulation in ``bench/`` and the ``bisect`` command decide
with the same code. The baseline there, deflaked bisection, is :func:`deflaked_next`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, gammaln

__all__ = [
    "PRIOR",
    "CONFIDENCE",
    "Counts",
    "posterior",
    "gains",
    "information_gain",
    "next_probe",
    "best",
    "ends_differ",
    "deflaked_next",
    "Trial",
    "simulate",
]

PRIOR = 0.5  # Beta(1/2, 1/2) on each side's rate (Jeffreys)
CONFIDENCE = 0.99
ENDS_ALPHA = 0.05  # the ends must differ at this level (Fisher) before a search starts

Counts = Sequence[tuple[int, int]]  # (failures, runs) per release, in version order


def _sides(counts: Counts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(F_old, N_old, F_new, N_new) for each change point k = 1..n-1."""
    f = np.array([c[0] for c in counts], dtype=float)
    n = np.array([c[1] for c in counts], dtype=float)
    f_cum, n_cum = np.cumsum(f)[:-1], np.cumsum(n)[:-1]
    return f_cum, n_cum, f.sum() - f_cum, n.sum() - n_cum


def _log_marginal(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    return betaln(PRIOR + k, PRIOR + n - k) - betaln(PRIOR, PRIOR)


def posterior(counts: Counts) -> list[float]:
    """P(change point = k | counts) for k = 1..n-1: the first release of the new side is
    ``counts[k]``. Uniform prior over k."""
    if len(counts) < 2:
        raise ValueError("a change point needs at least two releases")
    f_old, n_old, f_new, n_new = _sides(counts)
    log_p = _log_marginal(f_old, n_old) + _log_marginal(f_new, n_new)
    log_p -= log_p.max()
    p = np.exp(log_p)
    return [float(x) for x in p / p.sum()]


def _log_beta_binomial(f: np.ndarray, m: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log P(f failures in m runs) when the rate ~ Beta(a, b); f along axis 1, (a, b) axis 0."""
    log_choose = gammaln(m + 1) - gammaln(f + 1) - gammaln(m - f + 1)
    return log_choose + betaln(a[:, None] + f, b[:, None] + m - f) - betaln(a, b)[:, None]


def gains(counts: Counts, batch: int) -> list[float]:
    """For every release, the expected information (nats) about the change point from
    ``batch`` more runs of it: I(k; failures) = H(failures) - H(failures | k).

    Release j is on the old side for k > j and on the new side for k <= j, so each side's
    Beta-Binomial predictive is computed once per k and the sums over k are cumulative sums:
    O(n x batch) for all releases at once.
    """
    prior = np.array(posterior(counts))
    f_old, n_old, f_new, n_new = _sides(counts)
    f = np.arange(batch + 1, dtype=float)[None, :]
    like_old = np.exp(_log_beta_binomial(f, batch, PRIOR + f_old, PRIOR + n_old - f_old))
    like_new = np.exp(_log_beta_binomial(f, batch, PRIOR + f_new, PRIOR + n_new - f_new))

    def entropy(p: np.ndarray) -> np.ndarray:
        return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)

    # k runs over 1..n-1 (rows 0..n-2); release j is "new" for rows < j, "old" for rows >= j
    zero = np.zeros((1, batch + 1))
    new_part = np.vstack([zero, np.cumsum(prior[:, None] * like_new, axis=0)])  # rows < j
    old_all = np.sum(prior[:, None] * like_old, axis=0)
    old_part = old_all[None, :] - np.vstack([zero, np.cumsum(prior[:, None] * like_old,
                                                              axis=0)])
    marginal = new_part + old_part  # release j x failures
    h_new = np.concatenate([[0.0], np.cumsum(prior * entropy(like_new))])
    h_old = np.sum(prior * entropy(like_old)) - np.concatenate(
        [[0.0], np.cumsum(prior * entropy(like_old))])
    info = entropy(marginal) - (h_new + h_old)
    return [float(max(0.0, x)) for x in info]


def information_gain(counts: Counts, release: int, batch: int) -> float:
    """:func:`gains` of one release."""
    return gains(counts, batch)[release]


def next_probe(counts: Counts, batch: int) -> int:
    """The release whose next ``batch`` runs are expected to tell the most about the change
    point (ties: the one with fewer runs so far, then the older)."""
    info = gains(counts, batch)
    top = max(info)
    near = [j for j, g in enumerate(info) if g >= top - 1e-12]
    return min(near, key=lambda j: (counts[j][1], j))


def best(counts: Counts) -> tuple[int, float]:
    """The most probable change point k (first release of the new side) and its posterior."""
    p = posterior(counts)
    k = int(np.argmax(p))
    return k + 1, p[k]


def ends_differ(old: tuple[int, int], new: tuple[int, int], alpha: float = ENDS_ALPHA) -> float:
    """Fisher's exact p-value of the two ends (the search needs it below ``alpha``)."""
    from scipy.stats import fisher_exact

    if not old[1] or not new[1]:
        return 1.0
    _, p = fisher_exact([[old[0], old[1] - old[0]], [new[0], new[1] - new[0]]])
    return float(p)


# -- the baseline: deflaked bisection -------------------------------------------------------------
def _rate(k: int, n: int) -> float:
    return min(max((k + 0.5) / (n + 1), 1e-3), 1 - 1e-3)


def deflaked_next(counts: Counts, lo: int, hi: int, error: float) -> tuple[str, int]:
    """One step of deflaked bisection between ``lo`` (old side) and ``hi`` (new side): probe
    the middle release until a sequential probability ratio test (Wald) between the two ends'
    rates decides it, with error ``error`` each way. Returns ("run", j), ("old", j) /
    ("new", j) once j is decided, or ("done", hi) when lo and hi are adjacent."""
    if hi - lo <= 1:
        return "done", hi
    j = (lo + hi) // 2
    p_old, p_new = _rate(*counts[0]), _rate(*counts[-1])
    f, n = counts[j]
    llr = f * math.log(p_new / p_old) + (n - f) * math.log((1 - p_new) / (1 - p_old))
    bound = math.log((1 - error) / error)
    if llr >= bound:
        return "new", j
    if llr <= -bound:
        return "old", j
    return "run", j


# -- simulation (bench/) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One simulated search: the true change point, the answer, the runs it took."""

    truth: int
    answer: int | None  # None: the ends did not differ (refused)
    confidence: float
    runs: int


def _measure_ends(draw: Callable[[int, int], int], n: int, batch: int, end_cap: int,
                  counts: list[list[int]]) -> bool:
    """Runs both ends in batches until Fisher tells them apart (or ``end_cap`` runs each)."""
    while counts[0][1] < end_cap:
        for j in (0, n - 1):
            counts[j][0] += draw(j, batch)
            counts[j][1] += batch
        if ends_differ(tuple(counts[0]), tuple(counts[-1])) < ENDS_ALPHA:  # type: ignore[arg-type]
            return True
    return False


def simulate(rates: Sequence[float], method: str, *, batch: int = 10, cap: int = 5000,
             end_cap: int = 400, confidence: float = CONFIDENCE,
             error: float | None = None, seed: int = 0) -> Trial:
    """One search over releases failing with ``rates`` (binomial draws), by ``method``
    ("bayes": this module's search; "deflaked": bisection with SPRT-decided probes at
    ``error`` each, 1%/log2(n) by default). Both measure the ends first, alike."""
    rng = np.random.default_rng(seed)
    n = len(rates)
    truth = next(i for i in range(1, n) if rates[i] != rates[0])

    def draw(j: int, m: int) -> int:
        return int(rng.binomial(m, rates[j]))

    counts = [[0, 0] for _ in rates]
    if not _measure_ends(draw, n, batch, end_cap, counts):
        return Trial(truth, None, 0.0, sum(c[1] for c in counts))
    if method == "bayes":
        while True:
            k, p = best([tuple(c) for c in counts])  # type: ignore[misc]
            used = sum(c[1] for c in counts)
            if p >= confidence or used >= cap:
                return Trial(truth, k, p, used)
            j = next_probe([tuple(c) for c in counts], batch)  # type: ignore[misc]
            counts[j][0] += draw(j, batch)
            counts[j][1] += batch
    if method != "deflaked":
        raise ValueError(f"unknown method {method!r}")
    per_probe = error if error is not None else 0.01 / math.log2(n)
    lo, hi = 0, n - 1
    while True:
        used = sum(c[1] for c in counts)
        state, j = deflaked_next([tuple(c) for c in counts], lo, hi, per_probe)  # type: ignore[misc]
        if state == "done":
            return Trial(truth, j, 1.0 - per_probe, used)
        if state == "old":
            lo = j
        elif state == "new":
            hi = j
        elif used >= cap:
            return Trial(truth, (lo + hi + 1) // 2, 0.0, used)
        else:
            counts[j][0] += draw(j, batch)
            counts[j][1] += batch
