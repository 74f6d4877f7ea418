"""The run record's vocabulary: categories, phases, outcomes, signature sources, `Verdict`.

One line of ``DIR/results.jsonl`` is one run. Its keys and the values they take are defined
here once; the classifier produces them (`harness.classify`), the signature rules name them
(`harness.signatures`), and progress, aggregation, gates and reports count them. The strings
are the on-disk format (``/work/shared/DESIGN.md``, "Run record"): extend, never rename.

This module imports nothing from the package, so every other module can import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "CATEGORIES",
    "FAILURE_CATEGORIES",
    "OPTIONAL_FIELDS",
    "OUTCOMES",
    "PHASES",
    "REQUIRED_FIELDS",
    "SOURCES",
    "Verdict",
    "counts_for_rate",
    "is_failure",
    "record_fields",
]

#: What ended a run, as counted. A rate is failures over every run but ``infra`` ones.
CATEGORIES: tuple[str, ...] = ("clean", "crash", "error", "hang", "infra")
#: The categories that count as a failure of the client under test.
FAILURE_CATEGORIES: tuple[str, ...] = ("crash", "error", "hang")

#: When a run ended, from the work-done marker: before it (``work``), after it
#: (``finalization``: interpreter shutdown), or not known (no marker expected, no process).
PHASES: tuple[str, ...] = ("work", "finalization", "unknown")

#: The forms an ``outcome`` takes: a finer reading of the category.
OUTCOMES: dict[str, str] = {
    "clean": "exit status 0",
    "timeout": "killed by the harness after the run's timeout (category hang)",
    "infra": "no process exit status, or a service failure (category infra)",
    "signal:<NAME>": "died by a signal (also a shell's exit status 128+N), e.g. signal:SIGABRT",
    "exit:<N>": "a non-zero exit status without a Python traceback",
    "exception:<Type>": "a non-zero exit after an uncaught Python exception",
}

#: Where a verdict's ``signature`` came from (the record's ``signature_source``).
SOURCES: dict[str, str] = {
    "exit": "the exit alone (clean, exit-<N>, the category)",
    "stderr": "a rule of harness/data/signatures.toml matching stderr",
    "backtrace": "a rule matching the crashing thread's native frames",
    "frames": "the crashing thread's normalized native frames (native-crash:f1 | f2 | f3)",
    "inferred": "other runs' analysed cores with the same stderr (harness.cores.CoreBudget)",
    "none": "nothing specific (unclassified-<SIGNAL>)",
}

#: Keys every record has, and what they mean.
REQUIRED_FIELDS: dict[str, str] = {
    "run_id": "stable id: scenario/strategy/index",
    "scenario": "scenario name (or 'command' for --command)",
    "strategy": "strategy name, or the inline spec as written",
    "index": "the run's number within its cell",
    "returncode": "exit status; negative = killed by that signal; null = no process",
    "signal": "the signal's name (SIGABRT) or null",
    "timed_out": "the harness killed the run after its timeout",
    "work_done": "the child printed the work-done marker before exiting",
    "duration_s": "wall time of the run in seconds",
    "category": "one of CATEGORIES",
    "outcome": "one of the OUTCOMES forms",
    "signature": "the crash family's stable id (see DESIGN.md 'Signature ids')",
    "phase": "one of PHASES",
    "stderr_tail": "the last part of stderr",
}

#: Keys a record may have, and what they mean.
OPTIONAL_FIELDS: dict[str, str] = {
    "signature_source": "one of SOURCES",
    "exception": "'Type: message' of an uncaught Python exception",
    "frames": "normalized top native frames of the crashing thread",
    "notes": "what the classifier and the recorder did, and why",
    "backtrace": "'gdb' when a core was analysed, else 'unavailable: <why>'",
    "artifacts": "folder with the run's full stdout/stderr/backtrace/core (exemplar runs)",
    "load": "the load the run was made under (jobs, cpus, jobs_per_cpu, pin, exit_delay)",
    "python": "the child interpreter's version",
    "client_version": "the client package's version",
    "started_at": "when the run started (ISO 8601, UTC)",
    "cpu_s": "CPU time of the child (user + system), seconds",
    "max_rss_kb": "the child's peak resident memory, KiB",
    "start": "how the child was started: warm | cold",
}


def is_failure(category: str) -> bool:
    """Whether a run of this category counts as a failure of the client."""
    return category in FAILURE_CATEGORIES


def counts_for_rate(category: str) -> bool:
    """Whether a run of this category counts in a rate's denominator (every one but infra)."""
    return category != "infra"


@dataclass(frozen=True)
class Verdict:
    """What ended one run: the classifier's answer. ``notes`` say what it did and why."""

    #: one of `CATEGORIES`
    category: str
    #: one of the `OUTCOMES` forms
    outcome: str
    #: the crash family's stable id
    signature: str
    #: one of `PHASES`
    phase: str
    #: the signal's name, when a signal ended the run
    signal: str | None = None
    #: ``Type: message`` of an uncaught Python exception
    exception: str | None = None
    #: the crashing thread's significant frames (normalized), when a backtrace was read
    frames: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    #: where the signature came from: one of `SOURCES`
    source: str = "exit"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_note(self, note: str, **changes: Any) -> Verdict:
        return replace(self, notes=[*self.notes, note], **changes)


def record_fields(verdict: Verdict) -> dict[str, Any]:
    """The record keys that come from a verdict (empty optional ones left out)."""
    fields: dict[str, Any] = {
        "category": verdict.category,
        "outcome": verdict.outcome,
        "signature": verdict.signature,
        "phase": verdict.phase,
        "signal": verdict.signal,
        "signature_source": verdict.source,
    }
    if verdict.exception:
        fields["exception"] = verdict.exception
    if verdict.frames:
        fields["frames"] = verdict.frames
    if verdict.notes:
        fields["notes"] = list(verdict.notes)
    return fields
