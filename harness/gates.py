"""Gates: failure-rate thresholds from the configuration, checked against a campaign's cells.

A gate turns a report into a pass/fail signal for CI (`report` exits 1, the JUnit test case of
the cell fails). Gates live in `[tool.shutdown-harness.gates]` of pyproject.toml, keyed by a
strategy name or an fnmatch pattern over strategy names (`"*"` for all); the value is one table
or a list of tables (several gates for one strategy, e.g. one per scenario):

    [tool.shutdown-harness.gates]
    # the 95% upper bound of 0.5.1's failure rate must stay below 0.5%
    "etcd-0.5.1" = { max_upper = 0.005, min_runs = 600 }
    # the reproducer must keep reproducing: 0.4.1's lower bound must stay above 5%
    "etcd-0.4.1" = { min_lower = 0.05, scenario = "concurrent-puts" }
    # nothing may hang
    "*" = { max_failures = 0, signature = "hang-*" }

Thresholds (any combination; all are checked):
- `max_upper`: the upper bound of the failure rate's Wilson interval must be below this. With
  zero failures this is the "< x%" claim: it fails until enough clean runs back it up.
- `max_rate`: the observed failure rate must be at most this.
- `min_lower`: the lower bound must be above this (a crash must keep reproducing).
- `max_failures`: at most this many failures.
- `min_runs`: at least this many (non-infra) runs.
Filters: `scenario` (fnmatch pattern over scenario names), `signature` (fnmatch pattern: count
only failures with a matching signature), `confidence` (default 0.95).

A gate that matches no cell is reported as a warning, not a failure: the same pyproject may
hold gates for other campaigns.

A gate never passes on warm numbers alone: when a cell ran with ``--warm`` and its warm runs
differ from its cold controls (Fisher p < 0.01, harness/aggregate.py ``Fidelity``), every
gate of that cell also gets a failing ``fidelity`` check.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shutdown_harness import stats
from shutdown_harness.errors import UsageError
from shutdown_harness.stats import FIDELITY_ALPHA

if TYPE_CHECKING:
    from shutdown_harness.aggregate import Aggregate, Cell

__all__ = ["THRESHOLDS", "Gate", "GateResult", "parse_gates", "evaluate", "unmatched",
           "runs_to_pass", "unreachable"]

THRESHOLDS = ("max_upper", "max_rate", "min_lower", "max_failures", "min_runs")
_FILTERS = ("scenario", "signature", "confidence")


@dataclass(frozen=True)
class Gate:
    """One table of the gates config: a strategy pattern, filters and thresholds."""

    pattern: str
    thresholds: tuple[tuple[str, float], ...]
    scenario: str = "*"
    signature: str | None = None
    confidence: float = stats.CONFIDENCE

    @property
    def name(self) -> str:
        limits = ", ".join(f"{k} = {v:g}" for k, v in self.thresholds)
        where = [f"strategy {self.pattern}"]
        if self.scenario != "*":
            where.append(f"scenario {self.scenario}")
        if self.signature:
            where.append(f"signature {self.signature}")
        return f"{limits} ({', '.join(where)})"

    def matches(self, cell: Cell) -> bool:
        if cell.not_runnable is not None:  # no failure rate to hold to a threshold
            return False
        return fnmatch.fnmatchcase(cell.strategy, self.pattern) and fnmatch.fnmatchcase(
            cell.scenario, self.scenario
        )

    def counts(self, cell: Cell) -> tuple[int, int]:
        """(failures, runs) as this gate sees them."""
        if self.signature is None:
            return cell.failures, cell.runs
        pattern = self.signature
        k = sum(s.count for s in cell.signatures.values()
                if fnmatch.fnmatchcase(s.signature, pattern))
        return k, cell.runs


@dataclass(frozen=True)
class GateResult:
    """One threshold of one gate checked against one cell."""

    gate: Gate
    cell: Cell
    threshold: str
    limit: float
    observed: float
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.name, "strategy_pattern": self.gate.pattern,
                "scenario": self.cell.scenario, "strategy": self.cell.strategy,
                "load_label": self.cell.load_label, "threshold": self.threshold,
                "limit": self.limit, "observed": self.observed, "passed": self.passed,
                "message": self.message}


def parse_gates(table: Mapping[str, Any] | None) -> list[Gate]:
    """The `gates` table of the configuration -> Gate objects; UsageError on a bad entry."""
    gates: list[Gate] = []
    for pattern, value in (table or {}).items():
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise UsageError(f"gate {pattern!r}: expected a table like {{ max_upper = 0.01 }}")
            unknown = set(entry) - set(THRESHOLDS) - set(_FILTERS)
            if unknown:
                raise UsageError(f"gate {pattern!r}: unknown key(s) {', '.join(sorted(unknown))}"
                                 f" (known: {', '.join(THRESHOLDS + _FILTERS)})")
            thresholds = []
            for key in THRESHOLDS:
                if key in entry:
                    limit = entry[key]
                    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
                        raise UsageError(f"gate {pattern!r}: {key} must be a number >= 0")
                    if key in ("max_upper", "max_rate", "min_lower") and limit > 1:
                        raise UsageError(f"gate {pattern!r}: {key} is a fraction (0.005 = 0.5%),"
                                         f" got {limit}")
                    thresholds.append((key, float(limit)))
            if not thresholds:
                raise UsageError(f"gate {pattern!r}: no threshold (one of {', '.join(THRESHOLDS)})")
            confidence = entry.get("confidence", stats.CONFIDENCE)
            if not isinstance(confidence, float) or not 0 < confidence < 1:
                raise UsageError(f"gate {pattern!r}: confidence must be in (0, 1)")
            gates.append(Gate(str(pattern), tuple(thresholds), str(entry.get("scenario", "*")),
                              entry.get("signature"), confidence))
    return gates


def evaluate(agg: Aggregate, gates: list[Gate] | Mapping[str, Any] | None) -> list[GateResult]:
    """Check every gate against every cell it matches."""
    if gates is None or isinstance(gates, Mapping):
        gates = parse_gates(gates)
    results = []
    for gate in gates:
        for cell in agg.cells:
            if gate.matches(cell):
                results.extend(_check(gate, cell))
                results.extend(_check_fidelity(gate, agg, cell))
    return results


def _check_fidelity(gate: Gate, agg: Aggregate, cell: Cell) -> list[GateResult]:
    fidelity = agg.fidelity_of(cell)
    if fidelity is None or not fidelity.differs:
        return []
    assert fidelity.p_value is not None
    return [GateResult(gate, cell, "fidelity", FIDELITY_ALPHA, fidelity.p_value, False,
                       f"warm and cold runs differ (Fisher {stats.format_p(fidelity.p_value)}): "
                       "a gate cannot pass on warm numbers; rerun without --warm")]


def unmatched(agg: Aggregate, gates: list[Gate] | Mapping[str, Any] | None) -> list[Gate]:
    """Gates that match no cell of this campaign (a typo, or a gate for another campaign)."""
    if gates is None or isinstance(gates, Mapping):
        gates = parse_gates(gates)
    return [g for g in gates if not any(g.matches(c) for c in agg.cells)]


def _check(gate: Gate, cell: Cell) -> list[GateResult]:
    k, n = gate.counts(cell)
    lo, hi = stats.wilson_interval(k, n, gate.confidence)
    what = f"{gate.signature} failure" if gate.signature else "failure"
    conf = f"{gate.confidence:.0%}"
    out = []
    for name, limit in gate.thresholds:
        if name == "max_upper":
            observed, passed = hi, hi < limit
            msg = (f"upper {conf} bound of the {what} rate is {stats.format_pct(hi, 'up')} "
                   f"({k}/{n}), must stay below {stats.format_pct(limit)}")
        elif name == "max_rate":
            observed = k / n if n else float("nan")
            passed = n > 0 and observed <= limit
            msg = (f"{what} rate is {stats.format_pct(observed)} ({k}/{n}), "
                   f"must be at most {stats.format_pct(limit)}")
        elif name == "min_lower":
            observed, passed = lo, lo > limit
            msg = (f"lower {conf} bound of the {what} rate is {stats.format_pct(lo, 'down')} "
                   f"({k}/{n}), must stay above {stats.format_pct(limit)}")
        elif name == "max_failures":
            observed, passed = float(k), k <= limit
            msg = f"{k} {what}s in {n} runs, at most {limit:g} allowed"
        else:  # min_runs
            observed, passed = float(n), n >= limit
            msg = f"{n} runs (infra excluded), at least {limit:g} needed"
        out.append(GateResult(gate, cell, name, limit, observed, passed, msg))
    return out


def runs_to_pass(threshold: str, limit: float, confidence: float = stats.CONFIDENCE) -> int | None:
    """The fewest runs per cell with which ``threshold`` can pass at all: without a single
    failure for ``max_upper``, with every run failing for ``min_lower`` (0: any number; None:
    no number of runs). E.g. max_upper = 0.05 needs 73 clean runs: 40 bound the rate at 8.8%."""
    if threshold == "min_runs":
        return math.ceil(limit)
    if threshold not in ("max_upper", "min_lower"):
        return 0
    if (threshold == "max_upper" and limit <= 0) or (threshold == "min_lower" and limit >= 1):
        return None

    def passes(n: int) -> bool:
        if threshold == "max_upper":
            return stats.wilson_interval(0, n, confidence)[1] < limit
        return stats.wilson_interval(n, n, confidence)[0] > limit

    n = 1
    while not passes(n):  # doubling, then bisection: a handful of interval evaluations
        n *= 2
    low = n // 2
    while low + 1 < n:
        mid = (low + n) // 2
        low, n = (low, mid) if passes(mid) else (mid, n)
    return n


def unreachable(gates: list[Gate] | Mapping[str, Any] | None,
                cells: Iterable[tuple[str, str, int]]) -> list[str]:
    """What no outcome can pass, before any run: one line per (gate threshold, cell) whose
    planned ``runs`` are too few (cells as (scenario, strategy, runs))."""
    if gates is None or isinstance(gates, Mapping):
        gates = parse_gates(gates)
    lines = []
    for scenario, strategy, runs in cells:
        for gate in gates:
            if not (fnmatch.fnmatchcase(strategy, gate.pattern)
                    and fnmatch.fnmatchcase(scenario, gate.scenario)):
                continue
            for name, limit in gate.thresholds:
                needed = runs_to_pass(name, limit, gate.confidence)
                if needed is None or runs < needed:
                    lines.append(f"gate {gate.name} cannot pass for {scenario} / {strategy}"
                                 f" with {runs} runs: {_needs(name, needed)}")
    return lines


def _needs(threshold: str, needed: int | None) -> str:
    if needed is None:
        return "no number of runs can"
    if threshold == "max_upper":
        return f"it needs {needed} runs without a failure"
    if threshold == "min_lower":
        return f"it needs {needed} runs, all failing"
    return f"it needs {needed} runs"
