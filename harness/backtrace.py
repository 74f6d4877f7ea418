"""Native backtraces: gdb on core files, crashing-thread selection, frame normalization.

The knowledge of which frames matter lives in data files next to this module, as Socorro
keeps it in its siglists:

- ``harness/data/skip_frames.txt`` — frames that never make a signature (libc, abort, raise,
  pthread_kill, signal handlers, Rust panic machinery); they are skipped wherever they are.
- ``harness/data/sentinel_frames.txt`` — frames that mark where the interesting part of a
  crashing stack begins for some families (everything above the sentinel is machinery).

`CoreBudget` decides which core files are worth a gdb run so that disk use and gdb time stay
bounded whatever the number of runs (see its docstring for the policy).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shutdown_harness.classify import Verdict

__all__ = [
    "GDB_COMMANDS",
    "MAX_FRAMES",
    "MAX_FRAMES_EXTENDED",
    "Thread",
    "CoreBudget",
    "CoreDecision",
    "core_dump_unavailable",
    "crashing_thread_frames",
    "find_core",
    "frame_signature",
    "gdb_available",
    "normalize_frame",
    "parse_threads",
    "prefix_pattern",
    "run_gdb",
    "significant_frames",
    "skip_pattern",
]

#: How many significant frames make a ``native-crash`` signature.
MAX_FRAMES = 3
#: The gdb commands run on every core: the crashing thread is gdb's current thread after
#: loading a core, so ``bt`` first names it; then every thread for the artifact.
GDB_COMMANDS = ("set pagination off", "set width 0", "set print frame-arguments none", "bt",
                "thread apply all bt")
#: With prefix frames (CPython internals, allocators) the signature grows up to this many.
MAX_FRAMES_EXTENDED = 6

_DATA = Path(__file__).parent / "data"


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
    import resource

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


def find_core(workdir: Path, pid: int | None = None) -> Path | None:
    """The core file a child left in its cwd (``core`` or ``core.<pid>``), if any."""
    candidates = [workdir / "core"]
    if pid is not None:
        candidates.append(workdir / f"core.{pid}")
    candidates.extend(sorted(workdir.glob("core.*")))
    for path in candidates:
        if path.is_file() and path.stat().st_size > 0:
            return path
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
# Parsing gdb output

_FRAME_START = re.compile(r"^#(\d+)\s+")
_THREAD_HEADER = re.compile(r"^Thread (\d+) \((.*)\):\s*$")
_CURRENT_THREAD = re.compile(r"^\[Current thread is (\d+) \((.*)\)\]\s*$", re.M)
_LWP = re.compile(r"\bLWP (\d+)")
_ADDRESS_IN = re.compile(r"^0x[0-9a-fA-F]+ in ")
_LOCATION = re.compile(r"\)\s+(?:at|from)\s+\S.*$")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}(?=$|[^0-9A-Za-z_])")
_HEX = re.compile(r"\s*\b0x[0-9a-fA-F]+\b")
_COMPILER_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|lto_priv|llvm)(?:\.\d+)*")
_SIGNAL_FRAME = "<signal handler called>"


@dataclass(frozen=True)
class Thread:
    """One thread's stack from gdb output: its header and raw frame lines, innermost first."""

    header: str  # "" for the `bt` of gdb's current thread
    frames: tuple[str, ...]

    @property
    def lwp(self) -> str | None:
        m = _LWP.search(self.header)
        return m.group(1) if m else None


def _frame_lines(lines: list[str]) -> list[str]:
    """Join gdb's wrapped frame lines (continuations are indented) into one line per frame."""
    out: list[str] = []
    for line in lines:
        if out and line[:1] in (" ", "\t") and not _FRAME_START.match(line.strip()) \
                and out[-1].startswith("#"):
            out[-1] += " " + line.strip()
        else:
            out.append(line.rstrip())
    return out


def parse_threads(text: str) -> list[Thread]:
    """Every stack in gdb output, in order: un-headed ones (``bt``) and ``Thread N (...)``."""
    threads: list[Thread] = []
    header: str | None = None
    frames: list[str] = []

    def flush() -> None:
        if frames:
            threads.append(Thread(header or "", tuple(frames)))

    for line in _frame_lines(text.splitlines()):
        m = _FRAME_START.match(line)
        if m:
            if m.group(1) == "0" and frames:  # a new stack starts
                flush()
                frames, header = [], None
            frames.append(line)
            continue
        h = _THREAD_HEADER.match(line.strip())
        if h:
            flush()
            frames, header = [], line.strip()
    flush()
    return threads


def _crashing_thread(threads: list[Thread], text: str) -> Thread | None:
    if not threads:
        return None
    first_headed = next((i for i, t in enumerate(threads) if t.header), len(threads))
    # gdb's current thread after loading a core is the one that received the signal; our
    # commands print its `bt` first (the line after "Program terminated" is one frame only).
    unheaded = [t for t in threads[:first_headed] if len(t.frames) > 1]
    if unheaded:
        return unheaded[-1]
    headed = threads[first_headed:]
    current = _CURRENT_THREAD.search(text)
    if current:
        lwp = _LWP.search(current.group(2))
        for t in headed:
            if lwp and t.lwp == lwp.group(1):
                return t
    for t in headed:
        if any(_SIGNAL_FRAME in f for f in t.frames):
            return t
    for t in headed:
        if t.header.startswith("Thread 1 "):
            return t
    return threads[0]


# --------------------------------------------------------------------------------------------
# Normalization


def _strip_arguments(rest: str) -> str:
    """``name (a=1, b=...) at f.c:3`` -> ``name``; balanced, so ``f<(), X>`` survives."""
    rest = _LOCATION.sub(")", rest).rstrip()
    if not rest.endswith(")"):
        return rest
    depth = 0
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] == ")":
            depth += 1
        elif rest[i] == "(":
            depth -= 1
            if depth == 0:
                return rest[:i].rstrip()
    return rest


def normalize_frame(line: str) -> str:
    """A gdb frame line, or a bare function name, as a stable function name.

    Strips the frame number, the address, the argument list, the source location or library,
    Rust ``::h<16 hex>`` hashes, compiler clone suffixes (``.isra.0``, ``.cold``) and any
    other hex address. An unknown function (``??``) is named by its library's file name.
    """
    text = _FRAME_START.sub("", line.strip())
    text = _ADDRESS_IN.sub("", text)
    if text.startswith(_SIGNAL_FRAME):
        return _SIGNAL_FRAME
    library = re.search(r"\)\s+from\s+(\S+)\s*$", text)
    name = _strip_arguments(text)
    if name in ("??", ""):
        return f"?? in {os.path.basename(library.group(1))}" if library else "??"
    name = _RUST_HASH.sub("", name)
    name = _COMPILER_SUFFIX.sub("", name)
    name = _HEX.sub("", name)
    return " ".join(name.split())


@cache
def _frame_list(filename: str) -> re.Pattern[str]:
    patterns = []
    for raw in (_DATA / filename).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(f"(?:{line})")
    return re.compile("|".join(patterns) or "(?!)")


def skip_pattern() -> re.Pattern[str]:
    """The compiled skip list (``harness/data/skip_frames.txt``)."""
    return _frame_list("skip_frames.txt")


def prefix_pattern() -> re.Pattern[str]:
    """The compiled prefix list (``harness/data/prefix_frames.txt``)."""
    return _frame_list("prefix_frames.txt")


def crashing_thread_frames(text: str) -> list[str]:
    """The normalized function names of the thread that received the signal, innermost first.

    Nothing is skipped (signature rules look for machinery frames such as ``pthread_exit``);
    see `significant_frames` for what a signature is made of. Empty when the text holds no
    recognizable stack.
    """
    thread = _crashing_thread(parse_threads(text), text)
    if thread is None:
        return []
    return [normalize_frame(f) for f in thread.frames]


def significant_frames(functions: list[str]) -> list[str]:
    """The frames that describe the crash site: the signal handler's own frames (above a
    ``<signal handler called>``) and skip-listed frames removed, consecutive duplicates
    (inlined copies) collapsed."""
    if _SIGNAL_FRAME in functions:
        functions = functions[functions.index(_SIGNAL_FRAME) + 1:]
    skip = skip_pattern()
    out: list[str] = []
    for name in functions:
        if skip.fullmatch(name) or (out and out[-1] == name):
            continue
        out.append(name)
    return out


def frame_signature(significant: list[str]) -> str | None:
    """``f1 | f2 | f3``: the first `MAX_FRAMES` significant frames, continued while the last
    one is a prefix frame (up to `MAX_FRAMES_EXTENDED`). None when there are no frames."""
    if not significant:
        return None
    prefix = prefix_pattern()
    chosen: list[str] = []
    for name in significant:
        chosen.append(name)
        if len(chosen) >= MAX_FRAMES_EXTENDED:
            break
        if len(chosen) >= MAX_FRAMES and not prefix.fullmatch(name):
            break
    return " | ".join(chosen)


# --------------------------------------------------------------------------------------------
# Which cores to analyse and keep


@dataclass(frozen=True)
class CoreDecision:
    """Whether to run gdb on a run's core, and why (the reason is meant for a record note)."""

    analyse: bool
    reason: str


@dataclass
class _Group:
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
      cumulative time stays under ``max_gdb_share`` of the wall time since the budget was made
      (the first ``exemplars`` of a group are always analysed). gdb takes ~0.6 s a core, so at
      the default share this covers every crash of a typical campaign.
    - Past that share, a run is not analysed; `infer` then gives it its group's signature
      **only if** every analysed core of the group (at least ``exemplars``) agreed, with a note
      saying the signature was inferred; otherwise it stays ``unclassified-<SIGNAL>``.
    - Core files: at most ``keep_cores`` per (group, final signature) are kept as artifacts,
      and at most ``max_core_bytes`` in all; the caller deletes every other core as soon as
      it is analysed (or at once when it is not).

    Thread-safe; `summary` says what was done, for campaign.json.
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
            if group.analysed + group.pending < self.exemplars:
                group.pending += 1
                return CoreDecision(
                    True, f"exemplar {group.analysed + group.pending}/{self.exemplars}"
                )
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

    def inferred(self, key: str) -> tuple[str, list[str] | None, int] | None:
        """The group's unanimous signature, its frames and how many cores back it, or None."""
        with self._lock:
            group = self._groups.get(key)
            if group is None or group.analysed < self.exemplars or len(group.signatures) != 1:
                return None
            (signature, count), = group.signatures.items()
            return signature, group.frames[signature], count

    def infer(self, key: str, verdict: Verdict) -> Verdict:
        """``verdict`` (of a run whose core was not analysed) with its group's signature,
        when the group's analysed cores all agreed; unchanged otherwise, with a note."""
        found = self.inferred(key)
        if found is None:
            return verdict.with_note(
                "core not analysed; analysed cores of this group do not agree or are too few")
        signature, frames, count = found
        return verdict.with_note(
            f"signature inferred from {count} analysed cores of runs with the same stderr "
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
