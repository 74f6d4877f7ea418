"""Aggregation: a campaign folder's results.jsonl -> cells, signatures and comparisons.

A *cell* is one (scenario, strategy, load) combination. Its rate counts failures (`crash`,
`error`, `hang`) over runs, where runs exclude `infra` runs (a dead etcd is not a crash); infra
runs are counted on the side. Runs made under different load (jobs per CPU, CPU pinning, exit
delay) are never pooled: a (scenario, strategy) whose records differ in load becomes one cell per
load, a note says so, and comparisons only pair cells of the same scenario and load.

results.jsonl is read as a stream (it can hold 100k lines): only counters and one exemplar per
(cell, signature) stay in memory. A torn last line (the harness was killed mid-write) is dropped;
a malformed line elsewhere is an error. Records repeated with the same run_id (a resumed or
re-merged campaign) count once.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shutdown_harness import stats
from shutdown_harness.errors import UsageError
from shutdown_harness.schema import CATEGORIES, FAILURE_CATEGORIES, counts_for_rate
from shutdown_harness.stats import FIDELITY_ALPHA
from shutdown_harness.store import CAMPAIGN, RESULTS, Distinct, iter_records, read_campaign
from shutdown_harness.versions import sort_labels

__all__ = [
    "RESULTS",
    "CAMPAIGN",
    "Aggregate",
    "Cell",
    "CellComparison",
    "Fidelity",
    "FIDELITY_ALPHA",
    "SignatureStat",
    "iter_records",
    "read_campaign",
    "load_label",
    "aggregate",
    "load_campaign",
]

_EXCEPTION_PREFIX = "python-exception:"
_EXEMPLAR_KEYS = ("run_id", "category", "outcome", "signal", "returncode", "phase", "stderr_tail",
                  "artifacts", "frames", "backtrace", "exception", "notes", "client_version",
                  "python")


def _load_key(load: Any) -> tuple[Any, ...] | None:
    """What makes two loads different enough not to pool: jobs per CPU, pinning, exit delay."""
    if not isinstance(load, dict) or not load:
        return None
    jpc = load.get("jobs_per_cpu")
    if jpc is None and load.get("jobs") and load.get("cpus"):
        jpc = load["jobs"] / load["cpus"]
    jpc = round(float(jpc), 3) if isinstance(jpc, int | float) else None
    pin = load.get("pin") or None
    pin = json.dumps(pin) if isinstance(pin, list | dict) else pin
    delay = load.get("exit_delay") or None
    return (jpc, pin, delay)


def load_label(load: Any) -> str:
    """A short human label for a record's load: '2 jobs/CPU, pinned, exit delay ≤ 0.05 s'."""
    key = _load_key(load)
    if key is None:
        return "load not recorded"
    jpc, pin, delay = key
    parts = [f"{jpc:g} jobs/CPU" if jpc is not None else "jobs/CPU not recorded"]
    if pin:
        parts.append("pinned" if pin is True else f"pinned to {pin}")
    if delay:
        parts.append(f"exit delay ≤ {delay} s")
    return ", ".join(parts)


@dataclass
class SignatureStat:
    """One failure signature within a cell (or, merged, within the whole campaign)."""

    signature: str
    count: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    phases: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    exemplar: dict[str, Any] | None = None

    @property
    def category(self) -> str:
        return self.categories.most_common(1)[0][0] if self.categories else "unknown"

    @property
    def phase(self) -> str:
        return self.phases.most_common(1)[0][0] if self.phases else "unknown"

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        self.categories[record["category"]] += 1
        self.phases[str(record.get("phase") or "unknown")] += 1
        self.outcomes[str(record.get("outcome") or "unknown")] += 1
        # Prefer an exemplar with saved artifacts (full stderr, native backtrace).
        if self.exemplar is None or (record.get("artifacts") and not self.exemplar["artifacts"]):
            self.exemplar = {k: record.get(k) for k in _EXEMPLAR_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {"signature": self.signature, "count": self.count, "category": self.category,
                "phase": self.phase, "categories": dict(self.categories),
                "phases": dict(self.phases), "outcomes": dict(self.outcomes),
                "exemplar": self.exemplar}


@dataclass
class Cell:
    """One (scenario, strategy, load): counts, rate and interval, failure signatures."""

    scenario: str
    strategy: str
    load_label: str
    load: dict[str, Any] | None = None
    categories: Counter[str] = field(default_factory=Counter)
    signatures: dict[str, SignatureStat] = field(default_factory=dict)
    infra_signatures: Counter[str] = field(default_factory=Counter)
    client_versions: Counter[str] = field(default_factory=Counter)
    pythons: Counter[str] = field(default_factory=Counter)
    work_exceptions: Counter[str] = field(default_factory=Counter)  # type -> runs
    exception_text: str | None = None  # one "Type: message" of those
    duration_s: float = 0.0
    starts: Counter[str] = field(default_factory=Counter)  # runs (infra excluded) by start
    start_failures: Counter[str] = field(default_factory=Counter)
    warm_refused: Counter[str] = field(default_factory=Counter)  # why a --warm cell ran cold

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scenario, self.strategy, self.load_label)

    @property
    def runs(self) -> int:
        """Runs that count: every run but infra ones."""
        return sum(v for k, v in self.categories.items() if counts_for_rate(k))

    @property
    def failures(self) -> int:
        return sum(self.categories[c] for c in FAILURE_CATEGORIES)

    @property
    def infra(self) -> int:
        return self.categories["infra"]

    @property
    def rate(self) -> float:
        return self.failures / self.runs if self.runs else math.nan

    @property
    def not_runnable(self) -> str | None:
        """The exception, when the scenario does not run on this cell at all: every run raised
        the same Python exception type during the work (an API the scenario does not fit),
        whether the process then exited or crashed while finalizing. Such a cell has no
        failure rate: verdicts and gates leave it out."""
        if not self.runs or len(self.work_exceptions) != 1:
            return None
        ((exc_type, count),) = self.work_exceptions.items()
        return self.exception_text or exc_type if count == self.runs else None

    def interval(self, confidence: float = stats.CONFIDENCE) -> tuple[float, float]:
        return stats.wilson_interval(self.failures, self.runs, confidence)

    def rate_text(self) -> str:
        if self.not_runnable is not None:
            return f"not runnable: {self.not_runnable.split(':', 1)[0]}"
        return stats.format_rate(self.failures, self.runs)

    def top_signatures(self, n: int | None = None) -> list[SignatureStat]:
        ranked = sorted(self.signatures.values(), key=lambda s: (-s.count, s.signature))
        return ranked if n is None else ranked[:n]

    def signature_rate(self, signature: str) -> tuple[int, int, tuple[float, float]]:
        """(count, runs, Wilson interval) of one signature in this cell."""
        k = self.signatures[signature].count if signature in self.signatures else 0
        return k, self.runs, stats.wilson_interval(k, self.runs)

    def add(self, record: dict[str, Any]) -> None:
        category = record["category"]
        self.categories[category] += 1
        self.duration_s += float(record.get("duration_s") or 0.0)
        if record.get("client_version"):
            self.client_versions[str(record["client_version"])] += 1
        if record.get("python"):
            self.pythons[str(record["python"])] += 1
        signature = str(record.get("signature") or "unknown")
        if category in FAILURE_CATEGORIES and record.get("phase") == "work":
            text = record.get("exception")
            exc_type = (str(text).split(":", 1)[0] if text
                        else signature.removeprefix(_EXCEPTION_PREFIX)
                        if signature.startswith(_EXCEPTION_PREFIX) else None)
            if exc_type:
                self.work_exceptions[exc_type] += 1
                if text and self.exception_text is None:
                    self.exception_text = str(text)
        start = record.get("start")
        if start and category != "infra":
            self.starts[start] += 1
            self.start_failures[start] += category in FAILURE_CATEGORIES
        if record.get("warm_refused"):
            self.warm_refused[str(record["warm_refused"])] += 1
        if category == "infra":
            self.infra_signatures[signature] += 1
        elif category in FAILURE_CATEGORIES:
            self.signatures.setdefault(signature, SignatureStat(signature)).add(record)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {
            "scenario": self.scenario, "strategy": self.strategy, "load": self.load,
            "load_label": self.load_label,
            "status": "measured" if self.not_runnable is None else "not-runnable",
            "not_runnable": self.not_runnable, "runs": self.runs, "failures": self.failures,
            "infra": self.infra, "rate": stats._json_float(self.rate),
            "interval": [lo, hi], "confidence": stats.CONFIDENCE, "rate_text": self.rate_text(),
            "categories": {c: self.categories[c] for c in CATEGORIES if self.categories[c]}
            | {c: n for c, n in self.categories.items() if c not in CATEGORIES},
            "signatures": [
                s.to_dict() | {"interval": list(stats.wilson_interval(s.count, self.runs))}
                for s in self.top_signatures()
            ],
            "infra_signatures": dict(self.infra_signatures),
            "client_versions": dict(self.client_versions), "pythons": dict(self.pythons),
            "duration_s": round(self.duration_s, 3),
            "starts": {start: [self.start_failures[start], n] for start, n in self.starts.items()},
        }


@dataclass(frozen=True)
class CellComparison:
    """A comparison of two strategies in the same scenario and load."""

    scenario: str
    load_label: str
    comparison: stats.Comparison

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "load_label": self.load_label,
                **self.comparison.to_dict()}


@dataclass(frozen=True)
class Fidelity:
    """A --warm cell's warm runs against its cold controls (Fisher's exact test)."""

    cell: Cell
    warm: tuple[int, int]  # (failures, runs)
    cold: tuple[int, int]
    p_value: float | None  # None: no cold controls to compare with

    @property
    def differs(self) -> bool:
        """Warm and cold differ at FIDELITY_ALPHA: the cell's warm numbers are not trusted."""
        return self.p_value is not None and self.p_value < FIDELITY_ALPHA

    def sentence(self) -> str:
        (kw, nw), (kc, nc) = self.warm, self.cold
        counts = (f"warm {kw}/{nw} ({stats.format_rate(kw, nw)}), "
                  f"cold {kc}/{nc} ({stats.format_rate(kc, nc)})")
        where = f"{self.cell.scenario} / {self.cell.strategy}"
        if self.p_value is None:
            return f"{where}: {counts}: no cold controls, fidelity not measured."
        p = stats.format_p(self.p_value)
        if self.differs:
            return (f"WARM AND COLD DIFFER for {where}: {counts}, Fisher {p} < "
                    f"{FIDELITY_ALPHA:g}: warm start changes this cell's outcome; trust only "
                    "its cold runs (rerun without --warm).")
        return f"{where}: {counts}, Fisher {p}: warm and cold cannot be told apart."

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.cell.scenario, "strategy": self.cell.strategy,
                "load_label": self.cell.load_label, "warm": list(self.warm),
                "cold": list(self.cold),
                "p_value": None if self.p_value is None else stats._json_float(self.p_value),
                "differs": self.differs}


def _fidelity(cell: Cell) -> Fidelity | None:
    if not cell.starts.get("warm"):
        return None
    warm = (cell.start_failures["warm"], cell.starts["warm"])
    cold = (cell.start_failures["cold"], cell.starts["cold"])
    p = None
    if cold[1]:
        p = stats.compare("cold", cold[0], cold[1], "warm", warm[0], warm[1]).p_value
        p = 1.0 if math.isnan(p) else p
    return Fidelity(cell, warm, cold, p)


@dataclass
class Aggregate:
    """Everything the reports need, computed in one pass over results.jsonl."""

    campaign: dict[str, Any]
    cells: list[Cell]
    comparisons: list[CellComparison]
    notes: list[str]
    records: int
    duplicates: int = 0
    directory: Path | None = None

    @property
    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(c.scenario for c in self.cells))

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(c.strategy for c in self.cells))

    @property
    def measured(self) -> list[Cell]:
        """The cells with a failure rate (not the not-runnable ones)."""
        return [c for c in self.cells if c.not_runnable is None]

    @property
    def load_labels(self) -> list[str]:
        return list(dict.fromkeys(c.load_label for c in self.cells))

    @property
    def mixed_load(self) -> bool:
        return len(self.load_labels) > 1

    @property
    def runs(self) -> int:
        return sum(c.runs for c in self.cells)

    @property
    def failures(self) -> int:
        return sum(c.failures for c in self.cells)

    @property
    def infra(self) -> int:
        return sum(c.infra for c in self.cells)

    def cell(self, scenario: str, strategy: str, load_label: str | None = None) -> Cell:
        for c in self.cells:
            if c.scenario == scenario and c.strategy == strategy and (
                load_label is None or c.load_label == load_label
            ):
                return c
        raise KeyError((scenario, strategy, load_label))

    @property
    def fidelity(self) -> list[Fidelity]:
        """Warm vs cold per cell that had warm runs (``run --warm``), in cell order."""
        return [f for f in map(_fidelity, self.cells) if f is not None]

    def fidelity_of(self, cell: Cell) -> Fidelity | None:
        return _fidelity(cell)

    def signatures(self) -> list[tuple[SignatureStat, list[Cell]]]:
        """Failure signatures over the whole campaign, most frequent first, with their cells."""
        merged: dict[str, tuple[SignatureStat, list[Cell]]] = {}
        for cell in self.cells:
            for sig in cell.signatures.values():
                total, cells = merged.setdefault(sig.signature,
                                                 (SignatureStat(sig.signature), []))
                total.count += sig.count
                total.categories.update(sig.categories)
                total.phases.update(sig.phases)
                total.outcomes.update(sig.outcomes)
                if total.exemplar is None or (
                    sig.exemplar and sig.exemplar.get("artifacts")
                    and not total.exemplar.get("artifacts")
                ):
                    total.exemplar = sig.exemplar
                cells.append(cell)
        return sorted(merged.values(), key=lambda item: (-item[0].count, item[0].signature))

    def inputs(self) -> dict[str, Any]:
        """What produced these numbers: versions, Python, platform, load, runs."""
        plan = self.campaign.get("plan") or {}
        return {
            "harness_version": self.campaign.get("harness_version"),
            "created_at": self.campaign.get("created_at"),
            "argv": self.campaign.get("argv"),
            "plan": plan,
            "strategies": self.campaign.get("strategies") or {},
            "client_versions": {c.strategy: sorted(c.client_versions) for c in self.cells},
            "pythons": sorted({p for c in self.cells for p in c.pythons}),
            "environment": self.campaign.get("environment") or {},
            "services": self.campaign.get("services") or {},
            "load": self.campaign.get("load") or {},
            "load_labels": self.load_labels,
            "records": self.records,
            "runs": self.runs,
            "failures": self.failures,
            "infra": self.infra,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "inputs": self.inputs(),
            "cells": [c.to_dict() for c in self.cells],
            "signatures": [
                s.to_dict() | {"cells": [list(c.key) for c in cells]}
                for s, cells in self.signatures()
            ],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "fidelity": [f.to_dict() for f in self.fidelity],
            "notes": self.notes,
            "duplicates": self.duplicates,
        }


def aggregate(records: Iterable[dict[str, Any]], campaign: dict[str, Any] | None = None,
              notes: list[str] | None = None, directory: Path | None = None) -> Aggregate:
    """Fold records into cells (ordered as the campaign's plan) and compare strategies."""
    campaign = campaign or {}
    notes = notes if notes is not None else []
    cells: dict[tuple[str, str, tuple[Any, ...] | None], Cell] = {}
    distinct = Distinct()
    count = 0
    for record in distinct(records):
        count += 1
        load = record.get("load")
        key = (record["scenario"], record["strategy"], _load_key(load))
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell(record["scenario"], record["strategy"], load_label(load),
                                     load if isinstance(load, dict) else None)
        cell.add(record)
    if distinct.dropped:
        notes.append(
            f"{distinct.dropped} records repeated an earlier run_id and were counted once"
        )
    ordered = _order(list(cells.values()), campaign.get("plan") or {})
    _note_split_loads(ordered, notes)
    for c in ordered:
        if c.not_runnable is not None:
            notes.append(f"{c.scenario} / {c.strategy} is not runnable: all {c.runs} runs raised "
                         f"{c.not_runnable} during the work (left out of verdicts and gates)")
        for reason in c.warm_refused:
            notes.append(f"{c.scenario} / {c.strategy} ran cold although --warm was given: "
                         f"{reason}")
    infra = sum(c.infra for c in ordered)
    if infra:
        notes.append(f"{infra} infra runs (service or harness failures) are excluded from "
                     "the rates")
    return Aggregate(campaign, ordered, _comparisons(ordered), notes, count, distinct.dropped,
                     directory)


def _order(cells: list[Cell], plan: dict[str, Any]) -> list[Cell]:
    """Plan order (scenarios, then strategies); names not in the plan follow, as first seen.
    Strategies that differ only in their versions sort as versions (0.2.0 before 0.12.1)."""
    scenarios = {s: i for i, s in enumerate(plan.get("scenarios") or [])}
    for c in cells:
        scenarios.setdefault(c.scenario, len(scenarios))
    names = [*(plan.get("strategies") or []), *(c.strategy for c in cells)]
    strategies = {s: i for i, s in enumerate(sort_labels(names))}
    return sorted(cells, key=lambda c: (scenarios[c.scenario], strategies[c.strategy]))


def _note_split_loads(cells: list[Cell], notes: list[str]) -> None:
    per_pair: dict[tuple[str, str], list[str]] = {}
    for c in cells:
        per_pair.setdefault((c.scenario, c.strategy), []).append(c.load_label)
    for (scenario, strategy), labels in per_pair.items():
        if len(labels) > 1:
            notes.append(f"{scenario} / {strategy} ran under {len(labels)} loads "
                         f"({'; '.join(labels)}): reported separately, never pooled")


def _comparisons(cells: list[Cell]) -> list[CellComparison]:
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        if c.not_runnable is None:  # a scenario that does not run there has no rate to compare
            groups.setdefault((c.scenario, c.load_label), []).append(c)
    out = []
    for (scenario, label), group in groups.items():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                comparison = stats.compare(a.strategy, a.failures, a.runs,
                                           b.strategy, b.failures, b.runs)
                out.append(CellComparison(scenario, label, comparison))
    return out


def load_campaign(directory: Path) -> Aggregate:
    """Aggregate a campaign folder (campaign.json + results.jsonl)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"not a campaign folder: {directory}")
    results = directory / RESULTS
    if not results.exists():
        raise UsageError(f"no {RESULTS} in {directory}")
    notes: list[str] = []
    campaign = read_campaign(directory, missing_ok=True)
    if not campaign:
        notes.append(f"no {CAMPAIGN} in {directory}: plan, versions and environment unknown")
    _note_merge(campaign, notes)
    return aggregate(iter_records(directory, notes), campaign, notes, directory)


def _note_merge(campaign: dict[str, Any], notes: list[str]) -> None:
    """What a reader of merged results must know: missing shards, different machines."""
    merge = campaign.get("merge") or {}
    sources = campaign.get("merged_from") or []
    if merge.get("missing_shards"):
        missing = ", ".join(f"{i}/{n}" for i, n in merge["missing_shards"])
        notes.append(f"merged without shard(s) {missing}: the plan is not complete")
    environments = {json.dumps(s.get("environment"), sort_keys=True) for s in sources}
    if len(environments) > 1:
        notes.append(f"merged from {len(sources)} folders run in different environments "
                     "(campaign.json merged_from); the environment shown is the first one's")
