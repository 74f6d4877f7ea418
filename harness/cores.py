"""Core files and gdb: whether this machine writes cores, running gdb, and which cores to analyse.

`run_gdb` gives the text that `harness.backtrace` turns into frames; `CoreBudget` decides
which core files are worth a gdb run (about 0.6 s each) so that disk use and gdb time stay
bounded whatever the number of runs (see its docstring for the policy). A budget infers a
signature for a run whose core it skipped from a `harness.schema.Verdict`: this module needs
the record's vocabulary, not the classifier.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shutdown_harness.schema import Verdict

__all__ = [
    "GDB_COMMANDS",
    "CoreBudget",
    "CoreDecision",
    "core_dump_unavailable",
    "core_executable",
    "gdb_available",
    "run_gdb",
]

#: The gdb commands run on every core: the crashing thread is gdb's current thread after
#: loading a core, so ``bt`` first names it; then every thread for the artifact.
GDB_COMMANDS = ("set pagination off", "set width 0", "set print frame-arguments none", "bt",
                "thread apply all bt")


# --------------------------------------------------------------------------------------------
# Running gdb


def gdb_available() -> str | None:
    """Why gdb cannot be used here, or None when it can."""
    if shutil.which("gdb") is None:
        return "gdb is not installed"
    return None


def core_dump_unavailable() -> str | None:
    """Why this machine will not write core files into a child's cwd, or None when it will.

    Only the system-wide setting is checked; the harness raises RLIMIT_CORE in its children
    itself, so a low soft limit in the parent does not matter unless the hard limit is 0.
    """
    try:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        return "cannot read /proc/sys/kernel/core_pattern"
    if pattern.startswith("|"):
        return f"core_pattern is a pipe to {pattern[1:].split()[0]}"
    if pattern.startswith("/"):
        return f"core_pattern writes to {os.path.dirname(pattern)}, not the child's cwd"
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        return "the hard core-size limit (ulimit -Hc) is 0"
    return None


def run_gdb(core: Path, executable: Path, timeout: float = 60) -> str:
    """The text of gdb's ``bt`` and ``thread apply all bt`` for ``core``.

    ``executable`` is the child's interpreter; venv symlinks are followed, since gdb needs
    the real binary to match the core's mappings. Raises ``RuntimeError`` with one line when
    gdb fails or times out.
    """
    exe = os.path.realpath(core_executable(core) or executable)
    argv = ["gdb", "-batch", "-nx", "-q"]
    for command in GDB_COMMANDS:
        argv += ["-ex", command]
    argv += [exe, str(core)]
    env = {**os.environ, "LC_ALL": "C", "TERM": "dumb"}
    env.pop("DEBUGINFOD_URLS", None)  # never reach for the network
    # Imported here: subprocess is 10 M instructions (callgrind, ~5 ms) of every campaign's
    # start otherwise, and only a core to read needs it (in the recorder's gdb worker).
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"gdb timed out after {timeout:g}s on {core}") from None
    except OSError as e:
        raise RuntimeError(f"cannot run gdb: {e.strerror}") from None
    if "#0" not in proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["no backtrace in gdb output"])[-1]
        raise RuntimeError(f"gdb gave no backtrace for {core}: {last}")
    return proc.stdout


_NT_FILE = 0x46494C45


def core_executable(core: Path) -> Path | None:
    """The program a core file came from, read from its NT_FILE note (the first file mapped,
    which is the executable); None when the note is missing or the file no longer exists.

    The harness may only know a launcher (a pyenv shim, a shell script): the core knows better.
    """
    try:
        with core.open("rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return None  # not a 64-bit little-endian ELF core
            phoff, = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
                    "<IIQQQQ", table, i * phentsize
                )
                if p_type != 4:  # PT_NOTE
                    continue
                f.seek(p_offset)
                notes = f.read(min(p_filesz, 16 << 20))
                found = _nt_file_first(notes)
                if found is not None:
                    return found if found.exists() else None
    except (OSError, struct.error, IndexError):
        return None
    return None


def _nt_file_first(notes: bytes) -> Path | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        pos += 12 + ((namesz + 3) & ~3)
        desc = notes[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if ntype != _NT_FILE:
            continue
        count, _page = struct.unpack_from("<QQ", desc, 0)
        names = desc[16 + 24 * count :].split(b"\0")
        if count and names and names[0]:
            return Path(os.fsdecode(names[0]))
    return None


# --------------------------------------------------------------------------------------------
# Which cores to analyse and keep


@dataclass(frozen=True)
class CoreDecision:
    """Whether to run gdb on a run's core, and why (the reason is meant for a record note)."""

    analyse: bool
    reason: str


@dataclass
class _Group:
    seen: int = 0  # crashes with a core in this group so far
    analysed: int = 0
    pending: int = 0  # said yes to, not recorded yet (gdb runs in the background)
    signatures: dict[str, int] = field(default_factory=dict)
    frames: dict[str, list[str] | None] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)


class CoreBudget:
    """Bounded core analysis: gdb time and disk stay bounded whatever the number of runs.

    Runs are grouped by a key the caller chooses: the cell and the signature that stderr
    alone gave, e.g. ``f"{scenario}/{strategy}/{verdict.signature}"``.

    Policy:

    - **Specific stderr** (a rule named the family): only the first ``exemplars`` cores of a
      group are analysed, for the evidence (their backtraces become artifacts).
    - **Unspecific stderr** (`harness.classify.needs_backtrace`: a silent SIGABRT, a bare
      SIGSEGV): the backtrace *is* the signature, so every core is analysed while gdb's
      cumulative time stays under ``max_gdb_share`` of the wall time since the budget was made.
      Whatever the share, a group's first ``exemplars + isqrt(crashes so far)`` cores are
      analysed: the budget grows with the crash rate (a cell that crashes in every run gets
      ~30 analyses per 1,000 crashes, not 3), since that is where a mixed group shows.
    - Past that, a run is not analysed; `infer` then gives it its group's signature when the
      analysed cores of the group (at least ``exemplars``) agree, or more than half of them
      do, with a note saying how many; otherwise it stays ``unclassified-<SIGNAL>``. The
      caller's group key should hold the cell and the stderr's fingerprint, so that runs
      inferred from each other died alike as far as stderr tells.
    - Core files: at most ``keep_cores`` per (group, final signature) are kept as artifacts,
      and at most ``max_core_bytes`` in all; the caller deletes every other core as soon as
      it is analysed (or at once when it is not).

    Thread-safe; `summary` says what was done (counts, gdb time, kept bytes, signatures).
    """

    def __init__(self, *, exemplars: int = 3, keep_cores: int = 1,
                 max_core_bytes: int = 2 << 30, max_gdb_share: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.exemplars = exemplars
        self.keep_cores = keep_cores
        self.max_core_bytes = max_core_bytes
        self.max_gdb_share = max_gdb_share
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._gdb_seconds = 0.0
        self._kept_bytes = 0
        self._skipped = 0

    def decide(self, key: str, unspecific: bool) -> CoreDecision:
        """Whether the core of a run in group ``key`` should go through gdb."""
        with self._lock:
            group = self._groups.setdefault(key, _Group())
            group.seen += 1
            if group.analysed + group.pending < self.exemplars:
                group.pending += 1
                return CoreDecision(
                    True, f"exemplar {group.analysed + group.pending}/{self.exemplars}"
                )
            if unspecific and group.analysed + group.pending < \
                    self.exemplars + math.isqrt(group.seen):
                group.pending += 1
                return CoreDecision(True, "stderr is not specific: this group's crashes grow"
                                    " its share of analyses")
            if not unspecific:
                self._skipped += 1
                return CoreDecision(False, "enough exemplars for this signature")
            elapsed = max(self._clock() - self._start, 1e-9)
            # Analyses still queued count at the mean cost so far (1 s before any is done),
            # so a burst of crashes cannot queue more gdb work than the share allows.
            analysed = sum(g.analysed for g in self._groups.values())
            pending = sum(g.pending for g in self._groups.values())
            mean = self._gdb_seconds / analysed if analysed else 1.0
            if self._gdb_seconds + pending * mean <= self.max_gdb_share * elapsed:
                group.pending += 1
                return CoreDecision(True, "stderr is not specific: the backtrace names it")
            self._skipped += 1
            return CoreDecision(False, f"gdb time budget ({self.max_gdb_share:.0%}) spent")

    def record(self, key: str, signature: str, frames: list[str] | None,
               gdb_seconds: float) -> None:
        """Note the outcome of one analysis (the verdict after the backtrace)."""
        with self._lock:
            group = self._groups.setdefault(key, _Group())
            group.pending = max(0, group.pending - 1)
            group.analysed += 1
            group.signatures[signature] = group.signatures.get(signature, 0) + 1
            group.frames.setdefault(signature, frames)
            self._gdb_seconds += gdb_seconds

    def abandon(self, key: str) -> None:
        """An analysis that was decided but failed (gdb error): free its place."""
        with self._lock:
            group = self._groups.setdefault(key, _Group())
            group.pending = max(0, group.pending - 1)

    def keep_core(self, key: str, signature: str, size: int) -> bool:
        """Whether to keep this (analysed) core as an artifact; counts it when so."""
        with self._lock:
            group = self._groups.setdefault(key, _Group())
            if group.kept.get(signature, 0) >= self.keep_cores:
                return False
            if self._kept_bytes + size > self.max_core_bytes:
                return False
            group.kept[signature] = group.kept.get(signature, 0) + 1
            self._kept_bytes += size
            return True

    def inferred(self, key: str) -> tuple[str, list[str] | None, int, int] | None:
        """The signature of more than half the group's analysed cores (at least
        ``exemplars``), its frames, how many cores back it and how many were analysed."""
        with self._lock:
            group = self._groups.get(key)
            if group is None or group.analysed < self.exemplars or not group.signatures:
                return None
            signature, count = max(group.signatures.items(), key=lambda kv: (kv[1], kv[0]))
            if 2 * count <= group.analysed:
                return None
            return signature, group.frames[signature], count, group.analysed

    def infer(self, key: str, verdict: Verdict) -> Verdict:
        """``verdict`` (of a run whose core was not analysed) with its group's signature,
        when the group's analysed cores all agreed; unchanged otherwise, with a note."""
        found = self.inferred(key)
        if found is None:
            return verdict.with_note(
                "core not analysed; analysed cores of this group are too few or no signature"
                " has more than half of them")
        signature, frames, count, analysed = found
        agree = f"{count} analysed cores" if count == analysed else \
            f"{count} of {analysed} analysed cores"
        return verdict.with_note(
            f"signature inferred from {agree} of runs with the same stderr "
            "(this run's core was not analysed)",
            signature=signature, frames=frames, source="inferred")

    def summary(self) -> dict[str, object]:
        with self._lock:
            return {
                "analysed": sum(g.analysed for g in self._groups.values()),
                "not_analysed": self._skipped,
                "gdb_seconds": round(self._gdb_seconds, 3),
                "kept_core_bytes": self._kept_bytes,
                "groups": {k: dict(g.signatures) for k, g in self._groups.items()},
            }
