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

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from packaging.utils import canonicalize_name
from shutdown_harness import discovery, sweep
from shutdown_harness import releases as index
from shutdown_harness.errors import EXIT_INTERRUPTED, UsageError
from shutdown_harness.stats import compare, fisher_exact, format_p, format_rate

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
    "ends_state",
    "misfits",
    "step",
    "deflaked_next",
    "Trial",
    "simulate",
    "BISECT_FILE",
    "bisect_command",
]

PRIOR = 0.5  # Beta(1/2, 1/2) on each side's rate (Jeffreys)
CONFIDENCE = 0.99
ENDS_ALPHA = 0.05  # the ends must differ at this level (Fisher) before a search starts

Counts = Sequence[tuple[int, int]]  # (failures, runs) per release, in version order


def _betaln(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _sides(counts: Counts) -> list[tuple[int, int, int, int]]:
    """(F_old, N_old, F_new, N_new) for each change point k = 1..n-1."""
    total_f = sum(c[0] for c in counts)
    total_n = sum(c[1] for c in counts)
    out, f_old, n_old = [], 0, 0
    for f, n in counts[:-1]:
        f_old, n_old = f_old + f, n_old + n
        out.append((f_old, n_old, total_f - f_old, total_n - n_old))
    return out


def _log_marginal(k: int, n: int) -> float:
    """log P(k failures in n given runs), the rate integrated out (Beta-Bernoulli)."""
    return _betaln(PRIOR + k, PRIOR + n - k) - _betaln(PRIOR, PRIOR)


def posterior(counts: Counts) -> list[float]:
    """P(change point = k | counts) for k = 1..n-1: the first release of the new side is
    ``counts[k]``. Uniform prior over k."""
    if len(counts) < 2:
        raise ValueError("a change point needs at least two releases")
    log_p = [_log_marginal(fo, no) + _log_marginal(fn, nn) for fo, no, fn, nn in _sides(counts)]
    top = max(log_p)
    p = [math.exp(x - top) for x in log_p]
    total = math.fsum(p)
    return [x / total for x in p]


def _predictive(m: int, a: float, b: float) -> list[float]:
    """P(f failures in m runs) for f = 0..m when the rate ~ Beta(a, b) (Beta-Binomial)."""
    base = _betaln(a, b)
    return [math.exp(math.lgamma(m + 1) - math.lgamma(f + 1) - math.lgamma(m - f + 1)
                     + _betaln(a + f, b + m - f) - base) for f in range(m + 1)]


def _entropy(p: Sequence[float]) -> float:
    return -math.fsum(x * math.log(x) for x in p if x > 0)


def gains(counts: Counts, batch: int) -> list[float]:
    """For every release, the expected information (nats) about the change point from
    ``batch`` more runs of it: I(k; failures) = H(failures) - H(failures | k).

    Release j is on the new side for change points k <= j and on the old side for k > j, so
    each side's Beta-Binomial predictive is computed once per k, and moving from release j to
    j+1 moves one k from the old sum to the new one: O(n x batch) for all releases.
    """
    prior = posterior(counts)
    sides = _sides(counts)
    like_old = [_predictive(batch, PRIOR + fo, PRIOR + no - fo) for fo, no, _, _ in sides]
    like_new = [_predictive(batch, PRIOR + fn, PRIOR + nn - fn) for _, _, fn, nn in sides]
    h_old = [_entropy(p) for p in like_old]
    h_new = [_entropy(p) for p in like_new]
    width = batch + 1
    old_mix = [math.fsum(prior[r] * like_old[r][f] for r in range(len(prior)))
               for f in range(width)]
    new_mix = [0.0] * width
    old_h, new_h = math.fsum(p * h for p, h in zip(prior, h_old, strict=True)), 0.0
    out = []
    for j in range(len(counts)):
        if j > 0:  # change point k = j (row j-1) now puts release j on the new side
            r = j - 1
            for f in range(width):
                old_mix[f] -= prior[r] * like_old[r][f]
                new_mix[f] += prior[r] * like_new[r][f]
            old_h -= prior[r] * h_old[r]
            new_h += prior[r] * h_new[r]
        marginal = [max(0.0, o + n) for o, n in zip(old_mix, new_mix, strict=True)]
        out.append(max(0.0, _entropy(marginal) - (old_h + new_h)))
    return out


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
    k = max(range(len(p)), key=p.__getitem__)
    return k + 1, p[k]


def ends_state(old: tuple[int, int], new: tuple[int, int], end_cap: int) -> str:
    """After measuring the two ends: "differ" (Fisher p < ENDS_ALPHA: search), "run" (another
    batch at each end), or "refuse" (``end_cap`` runs each and still alike)."""
    if ends_differ(old, new) < ENDS_ALPHA:
        return "differ"
    return "refuse" if min(old[1], new[1]) >= end_cap else "run"


def step(counts: Counts, batch: int, confidence: float = CONFIDENCE,
         cap: int | None = None) -> tuple[str, int, float]:
    """The search's decision from the counts so far: ("done", k, p) when change point k holds
    ``confidence``, ("cap", k, p) at the run cap, else ("run", j, p): ``batch`` more runs of
    release j. ``p`` is the best change point's posterior."""
    k, p = best(counts)
    if p >= confidence:
        return "done", k, p
    if cap is not None and sum(c[1] for c in counts) >= cap:
        return "cap", k, p
    return "run", next_probe(counts, batch), p


def misfits(counts: Counts, k: int, alpha: float = 0.01) -> list[int]:
    """Releases whose counts differ significantly (Fisher, ``alpha``) from the rest of their
    side when the change is at k, the most extreme first out (so that one odd release does
    not make its neighbours look odd): the history has more than one change there."""
    out = []
    for side in (list(range(0, k)), list(range(k, len(counts)))):
        side = [j for j in side if counts[j][1]]
        while len(side) > 1:
            p = {}
            for j in side:
                rest = [i for i in side if i != j]
                p[j] = ends_differ(counts[j], (sum(counts[i][0] for i in rest),
                                               sum(counts[i][1] for i in rest)))
            worst = min(side, key=p.__getitem__)
            if p[worst] >= alpha:
                break
            out.append(worst)
            side.remove(worst)
    return sorted(out)


def ends_differ(old: tuple[int, int], new: tuple[int, int]) -> float:
    """Fisher's exact p-value of two releases' (failures, runs) (the ends must differ)."""
    if not old[1] or not new[1]:
        return 1.0
    return fisher_exact(old[0], old[1] - old[0], new[0], new[1] - new[0])


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
    while True:
        state = ends_state((counts[0][0], counts[0][1]), (counts[-1][0], counts[-1][1]),
                           end_cap)
        if state != "run":
            return state == "differ"
        for j in (0, n - 1):
            counts[j][0] += draw(j, batch)
            counts[j][1] += batch


def simulate(rates: Sequence[float], method: str, *, batch: int = 10, cap: int = 5000,
             end_cap: int = 400, confidence: float = CONFIDENCE,
             error: float | None = None, seed: int = 0) -> Trial:
    """One search over releases failing with ``rates`` (binomial draws), by ``method``
    ("bayes": this module's search; "deflaked": bisection with SPRT-decided probes at
    ``error`` each, 1%/log2(n) by default). Both measure the ends first, alike."""
    rng = random.Random(seed)
    n = len(rates)
    truth = next(i for i in range(1, n) if rates[i] != rates[0])

    def draw(j: int, m: int) -> int:
        return sum(rng.random() < rates[j] for _ in range(m))

    counts = [[0, 0] for _ in rates]
    if not _measure_ends(draw, n, batch, end_cap, counts):
        return Trial(truth, None, 0.0, sum(c[1] for c in counts))
    if method == "bayes":
        while True:
            state, j, p = step([(c[0], c[1]) for c in counts], batch, confidence, cap)
            if state != "run":
                return Trial(truth, j, p, sum(c[1] for c in counts))
            counts[j][0] += draw(j, batch)
            counts[j][1] += batch
    if method != "deflaked":
        raise ValueError(f"unknown method {method!r}")
    per_probe = error if error is not None else 0.01 / math.log2(n)
    lo, hi = 0, n - 1
    while True:
        used = sum(c[1] for c in counts)
        state, j = deflaked_next([(c[0], c[1]) for c in counts], lo, hi, per_probe)
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


# -- the command ------------------------------------------------------------------------------
BISECT_FILE = "bisect.json"
DEFAULT_BATCH = 10
DEFAULT_END_CAP = 300  # runs at each end before refusing (5% vs 0% needs about 100)
DEFAULT_CAP = 3000


def _releases_between(package: str, bad: str, good: str,
                      pre: bool) -> tuple[list[Any], bool, dict[Any, str | None]]:
    """The releases from the older end to the newer one (both ends included), whether the
    bad end is the older (looking for a fix) or not (a regression), and each release's
    Requires-Python."""
    releases = index.released_versions(package)
    known = {r.version: r for r in releases}
    ends = []
    for label, text in (("--bad", bad), ("--good", good)):
        v = index.parse_version(text, label)
        if v not in known:
            raise UsageError(f"{label} {text}: {package} has no release {text} on the index")
        ends.append(v)
    bad_v, good_v = ends
    if bad_v == good_v:
        raise UsageError(f"--bad and --good are the same release ({bad_v}): nothing to bisect")
    lo, hi = min(ends), max(ends)
    between = [r.version for r in releases
               if lo <= r.version <= hi
               and (r.version in (lo, hi) or (r.yanked is None
                                              and (pre or not r.version.is_prerelease)))]
    return between, bad_v < good_v, {v: known[v].requires_python for v in between}


def bisect_command(package: str, scenario: str, *, bad: str, good: str, out: Path,
                   batch: int = DEFAULT_BATCH, cap: int = DEFAULT_CAP,
                   end_cap: int = DEFAULT_END_CAP, confidence: float = CONFIDENCE,
                   pre: bool = False, python: str | None = None,
                   settings: Mapping[str, Any] | None = None,
                   config: Mapping[str, Any] | None = None, stream: IO[str] | None = None,
                   argv: Sequence[str] = ()) -> int:
    """``shutdown-harness bisect``: 0 with an answer (even at the cap: it says how sure),
    1 when the ends do not differ significantly (refused, with the numbers)."""
    stream = stream or sys.stdout

    def log(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    started = time.monotonic()
    sweep.check_package(package)
    (info,) = discovery.resolve([scenario])
    if (out / BISECT_FILE).exists():
        raise UsageError(f"{out} already holds a bisect: choose another --out")
    interpreter = sweep.resolve_python(python)
    found, fixing, requires = _releases_between(package, bad, good, pre)
    this_python = sweep.python_version(interpreter)
    log(f"{package}: {len(found)} releases from {found[0]} to {found[-1]}; looking for the "
        f"{'fix' if fixing else 'regression'} ({'bad' if fixing else 'good'} {found[0]}, "
        f"{'good' if fixing else 'bad'} {found[-1]})")
    out.mkdir(parents=True, exist_ok=True)
    releases = {v: sweep.Release(v) for v in found}
    skipped: list[sweep.Release] = []
    active = list(found)
    counts: dict[Any, list[int]] = {v: [0, 0] for v in found}
    steps: list[dict[str, Any]] = []
    campaigns: list[str] = []  # one per batch: steps/NNN-VERSION[+VERSION]/
    settings = {**(settings or {}), "python": interpreter}
    scenario_arg = info.name if info.path.parent == discovery.BUILTIN_DIR else str(info.path)

    with contextlib.ExitStack() as stack:
        if info.services:  # started once for every batch, not once per batch
            # Imported here: for a scenario that declares a service only (prepare.py says why).
            from shutdown_harness.services import ServiceSet

            how = {**(settings.get("services") or {}),
                   **{k: settings.get(k) for k in ("etcd", "valkey")}}
            services = ServiceSet({name: how.get(name) or "auto" for name in info.services},
                                  config=config, log=log)
            stack.callback(services.stop)
            services.start()
            endpoints = services.endpoints()
            settings.update({k: v for k, v in endpoints.items() if k in ("etcd", "valkey")})
            declared = {k: v for k, v in endpoints.items() if k not in ("etcd", "valkey")}
            if declared:
                settings["services"] = declared

        def measure(versions: Sequence[Any], runs: int) -> dict[Any, bool]:
            """``runs`` more runs of each release, interleaved in one campaign (the two ends
            share the load and the campaign's start-up); False for one to skip."""
            ok: dict[Any, bool] = {}
            for version in versions:
                release = releases[version]
                if release.status == "pending":
                    why = sweep.unsupported(requires[version], this_python) or sweep.install(
                        package, version, interpreter, lambda _: None)
                    if why is not None:
                        release.status, release.reason = "not-installable", why
                        ok[version] = False
            todo = [v for v in versions if v not in ok]
            if not todo:
                return ok
            name = "+".join(str(v) for v in todo)
            campaigns.append(name)
            folder = out / "steps" / f"{len(campaigns):03d}-{name}"
            folder.parent.mkdir(parents=True, exist_ok=True)
            with open(folder.parent / f"{folder.name}.log", "w", encoding="utf-8") as quiet:
                try:
                    code = sweep.run_campaign(
                        scenario=scenario_arg,
                        strategies=[sweep.strategy_of(package, v) for v in todo], out=folder,
                        runs=runs, config=config or {}, stream=quiet, argv=argv,
                        settings=settings, with_reports=False)
                    if code == EXIT_INTERRUPTED:  # Ctrl-C / SIGTERM: stop the search too
                        raise KeyboardInterrupt
                except UsageError as e:
                    if "not applicable" not in str(e):
                        raise
            batch = {v: sweep.Release(v) for v in todo}
            sweep.results_of(folder, package, list(batch.values()))
            for version, got in batch.items():
                ok[version] = _account(version, got)
            return ok

        def _account(version: Any, got: sweep.Release) -> bool:
            release = releases[version]
            if got.status == "not-runnable" and not release.runs:
                release.status, release.reason = "not-runnable", got.reason
                release.runs = got.runs
                return False
            if got.status != "measured":
                release.status = "not-applicable"
                release.reason = got.reason or "the scenario's applicable() says no"
                return False
            release.status = "measured"
            release.runs += got.runs
            release.failures += got.failures
            for sig, n in got.signatures.items():
                release.signatures[sig] = release.signatures.get(sig, 0) + n
            release.python = got.python
            counts[version][0] += got.failures
            counts[version][1] += got.runs
            ordered = [(counts[v][0], counts[v][1]) for v in active]
            post = posterior(ordered) if len(active) > 1 else [1.0]
            steps.append({
                "step": len(steps) + 1, "version": str(version), "runs": got.runs,
                "failures": got.failures, "total_runs": release.runs,
                "total_failures": release.failures, "elapsed_s": round(
                    time.monotonic() - started, 1),
                "posterior": {str(active[k + 1]): round(p, 6) for k, p in enumerate(post)},
            })
            k = max(range(len(post)), key=post.__getitem__)
            log(f"step {len(steps)}: {version} +{got.runs} runs, {got.failures} failed "
                f"(now {release.failures}/{release.runs}); change at {active[k + 1]}: "
                f"{post[k]:.1%}")
            return True

        def skip(version: Any) -> None:
            release = releases[version]
            active.remove(version)
            skipped.append(release)
            log(f"skipped {package}=={version}: {release.status}: {release.reason}")

        # 1. both ends, until they differ
        while True:
            old, new = active[0], active[-1]
            state = ends_state((counts[old][0], counts[old][1]),
                               (counts[new][0], counts[new][1]), end_cap)
            if state != "run":
                break
            for end, measured in measure((old, new), batch).items():
                if not measured:
                    r = releases[end]
                    raise UsageError(f"the end {package}=={end} is {r.status}: {r.reason}")
        o, n = (releases[active[0]], releases[active[-1]])
        p_ends = ends_differ((o.failures, o.runs), (n.failures, n.runs))
        if state == "refuse":
            line = (f"refused: {o.version} {o.failures}/{o.runs} "
                    f"({format_rate(o.failures, o.runs)}) and {n.version} {n.failures}/{n.runs}"
                    f" ({format_rate(n.failures, n.runs)}) are not significantly different "
                    f"({format_p(p_ends)})")
            _write(out, package, info.name, None, fixing, 0.0, p_ends, steps, skipped, line,
                   releases, [])
            log(line)
            return 1
        # 2. the search
        while True:
            if len(active) < 2:
                raise UsageError("every release between the ends was skipped")
            state, j, prob = step([(counts[v][0], counts[v][1]) for v in active], batch,
                                  confidence, cap)
            if state != "run":
                break
            version = active[j]
            if not measure([version], batch)[version]:
                skip(version)
        k = j
        before, after = releases[active[k - 1]], releases[active[k]]
        c = compare(str(before.version), before.failures, before.runs,
                    str(after.version), after.failures, after.runs)
        kind = "fixed in" if fixing else "broken in"
        sure = f"{prob:.1%}" + ("" if state == "done" else f", run cap {cap} reached")
        line = (f"{kind} {after.version} ({sure}): {after.failures}/{after.runs} "
                f"({format_rate(after.failures, after.runs)}) vs {before.failures}/"
                f"{before.runs} on {before.version}, {format_p(c.p_value)}")
        if skipped:
            line += "; skipped: " + ", ".join(f"{r.version} ({r.status})" for r in skipped)
        notes = []
        for j in misfits([(counts[v][0], counts[v][1]) for v in active], k):
            r = releases[active[j]]
            notes.append(f"{r.version} ({r.failures}/{r.runs}) does not fit the "
                         f"{'old' if j < k else 'new'} side: more than one change? "
                         "`shutdown-harness sweep` measures every release")
            log(f"note: {notes[-1]}")
        _write(out, package, info.name, (before.version, after.version), fixing, prob,
               c.p_value, steps, skipped, line, releases, notes)
    log(f"({time.monotonic() - started:.0f} s, {sum(s['runs'] for s in steps)} runs) "
        f"{out / BISECT_FILE}")
    log(line)
    return 0


def _write(out: Path, package: str, scenario: str, change: tuple[Any, Any] | None,
           fixing: bool, confidence: float, p_value: float, steps: list[dict[str, Any]],
           skipped: list[Any], line: str, releases: Mapping[Any, Any],
           notes: list[str]) -> None:
    data: dict[str, Any] = {"format": 1, "package": canonicalize_name(package),
                            "scenario": scenario, "looking_for": "fix" if fixing else
                            "regression", "first_good": None, "last_bad": None,
                            "last_good": None, "first_bad": None}
    if change is not None:
        before, after = (str(v) for v in change)
        if fixing:
            data.update(last_bad=before, first_good=after)
        else:
            data.update(last_good=before, first_bad=after)
    data.update({
        "confidence": round(confidence, 6),
        "p_value": p_value if math.isfinite(p_value) else None,
        "steps": steps,
        "skipped": [{"version": str(r.version), "status": r.status, "reason": r.reason}
                    for r in skipped],
        "releases": [r.to_dict() for r in releases.values() if r.runs or r.status != "pending"],
        "notes": notes,
        "summary": line,
    })
    (out / BISECT_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
