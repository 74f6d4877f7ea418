"""The campaign folder: ``campaign.json``, ``results.jsonl`` and ``artifacts/``.

Every finished run becomes one JSON line, written and flushed the moment it is known, so a
campaign killed at any point (even by SIGKILL) keeps every run it finished. ``--resume`` reads
the run ids back, cuts a torn last line (one without its newline: a write the harness could
not finish) before it appends, and the plan skips what is already there; any other line that is
not a record is an error, and the file is left as it was.

One harness at a time writes a folder: it holds an exclusive lock (``flock`` on
:data:`LOCK`, which names its pid) from the moment it opens the folder until it closes it; a
second one is refused. A write that fails (a full disk) stops every later write, so the file
never gets a torn line in its middle: what is there stays readable by ``report``, ``merge``
and ``--resume``.

Artifacts (full stdout, stderr, backtrace, core) are kept for the first few runs of each
(scenario, strategy, signature); the other runs keep only the ``stderr_tail`` in their record,
so disk use is bounded whatever the number of runs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from shutdown_harness.errors import UsageError

__all__ = [
    "CAMPAIGN",
    "RESULTS",
    "ARTIFACTS",
    "ResultStore",
    "RunIds",
    "read_campaign",
    "iter_records",
    "Distinct",
    "artifact_dir_name",
    "write_failed",
    "LOCK",
]

CAMPAIGN = "campaign.json"
RESULTS = "results.jsonl"
ARTIFACTS = "artifacts"
LOCK = ".lock"


def artifact_dir_name(run_id: str) -> str:
    return run_id.replace("/", "_").replace(os.sep, "_")


def read_campaign(folder: Path, missing_ok: bool = False) -> dict[str, Any]:
    """``folder/campaign.json``; with ``missing_ok``, {} when the folder has none."""
    path = folder / CAMPAIGN
    if missing_ok and not path.exists():
        return {}
    try:
        campaign = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{folder} holds no campaign ({CAMPAIGN} is missing)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not isinstance(campaign, dict):
        raise UsageError(f"{path} is not a JSON object")
    if not isinstance(campaign.get("plan"), dict):
        raise UsageError(f"{path} has no plan (not written by shutdown-harness run)")
    return campaign


def iter_records(folder: Path, notes: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the records of ``folder/results.jsonl`` (none when it does not exist).

    A torn last line (the harness killed mid-write) is dropped, and said in ``notes``; a
    damaged line elsewhere is a UsageError: the file was changed by something else.
    """
    path = folder / RESULTS
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    with f:
        pending: tuple[int, bytes] | None = None
        for lineno, line in enumerate(f, 1):
            if pending is not None:
                yield _parse(path, *pending, last=False)
            pending = (lineno, line) if line.strip() else None
        if pending is not None:
            try:
                yield _parse(path, *pending, last=True)
            except _TornLine:
                if notes is not None:
                    notes.append(f"{path.name}: dropped a torn last line (line {pending[0]})")


class Distinct:
    """Passes on the records whose run_id it has not seen yet, and counts the repeats it drops
    (a record without a run_id passes). One instance can filter several streams (merge)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.dropped = 0

    def __call__(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            run_id = record.get("run_id")
            if isinstance(run_id, str):
                if run_id in self.seen:
                    self.dropped += 1
                    continue
                self.seen.add(run_id)
            yield record


class _TornLine(Exception):
    pass


def _parse(path: Path, lineno: int, line: bytes, *, last: bool) -> dict[str, Any]:
    # A torn write is the last line without its newline (every record is written with it, and
    # its JSON holds no raw newline); a complete line that is not a record was damaged.
    torn = last and not line.endswith(b"\n")
    try:
        record = json.loads(line)
    except ValueError:
        if torn:
            raise _TornLine from None
        raise UsageError(f"{path}:{lineno}: not a JSON record") from None
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), str) for k in ("run_id", "scenario", "strategy", "category")
    ):
        if torn:
            raise _TornLine
        raise UsageError(f"{path}:{lineno}: a record needs run_id, scenario, strategy, category")
    return record


def _full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def write_failed(path: Path, e: OSError) -> UsageError:
    """The one-line error for a write that failed (a full disk says so, and what is kept)."""
    if _full(e):
        return UsageError(f"no space left on the device of {path}: the records written so far"
                          " are kept; free some space, then run --resume")
    return UsageError(f"cannot write {path}: {e.strerror or e}")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _drop_torn_tail(path: Path) -> None:
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        # Find the last newline and cut there.
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return
            pos = start
        f.truncate(0)


class RunIds:
    """The run ids recorded so far: a set of ``scenario/strategy/N`` strings, kept as one bit per
    run index in a bytearray per cell.

    A set of the id strings held ~160 bytes per run (tracemalloc, 6,000 runs against 1,000),
    so the harness's memory grew with the size of a campaign; this holds one bit per run. An id
    that does not end in a plain index (a record from elsewhere) is kept as it is.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._cells: dict[str, bytearray] = {}
        self._other: set[str] = set()
        self._count = 0
        for run_id in ids:
            self.add(run_id)

    @staticmethod
    def _split(run_id: str) -> tuple[str, int] | None:
        cell, _, text = run_id.rpartition("/")
        if not cell or not (text.isascii() and text.isdigit()):
            return None
        index = int(text)
        return (cell, index) if text == str(index) else None

    def add(self, run_id: str) -> None:
        split = self._split(run_id)
        if split is None:
            if run_id not in self._other:
                self._other.add(run_id)
                self._count += 1
            return
        cell, index = split
        bits = self._cells.setdefault(cell, bytearray())
        byte, bit = divmod(index, 8)
        if byte >= len(bits):
            bits.extend(bytes(byte + 1 - len(bits)))
        if not bits[byte] >> bit & 1:
            bits[byte] |= 1 << bit
            self._count += 1

    def __contains__(self, run_id: object) -> bool:
        if not isinstance(run_id, str):
            return False
        split = self._split(run_id)
        if split is None:
            return run_id in self._other
        cell, index = split
        bits = self._cells.get(cell)
        byte, bit = divmod(index, 8)
        return bits is not None and byte < len(bits) and bool(bits[byte] >> bit & 1)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for cell, bits in self._cells.items():
            for byte, value in enumerate(bits):
                for bit in range(8):
                    if value >> bit & 1:
                        yield f"{cell}/{8 * byte + bit}"
        yield from self._other


class ResultStore:
    """Appends records to ``results.jsonl`` (thread-safe) and keeps exemplar artifacts."""

    def __init__(self, folder: Path, keep_per_signature: int = 3) -> None:
        self.folder = folder
        self.keep_per_signature = keep_per_signature
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._kept: Counter[tuple[str, str, str]] = Counter()
        self.done = RunIds()
        self._lockfd = -1
        #: Set once a write failed: nothing more is written (see the module docstring).
        self.failed: UsageError | None = None

    # -- opening -------------------------------------------------------------------------
    def check_new(self) -> None:
        """The folder can hold a new campaign: writable, and no campaign in it yet (then this
        store holds the folder's lock)."""
        self._make_folder()
        if (self.folder / CAMPAIGN).exists() or (self.folder / RESULTS).exists():
            raise UsageError(
                f"{self.folder} already holds a campaign: add --resume, or choose another --out"
            )
        self.lock()

    def create(self, campaign: dict[str, Any]) -> None:
        """Start a new campaign in ``folder`` (which must not hold one already)."""
        self.check_new()
        tmp = self.folder / (CAMPAIGN + ".tmp")
        try:
            tmp.write_text(json.dumps(campaign, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.folder / CAMPAIGN)
        except OSError as e:
            _unlink_quietly(tmp)
            raise write_failed(self.folder / CAMPAIGN, e) from None
        self._open()

    def resume(self) -> dict[str, Any]:
        """Reopen an existing campaign; returns its campaign.json and fills :attr:`done`.

        Every line is read before anything is written: a damaged one is a UsageError and the
        file stays as it was; only then is a torn last line cut.
        """
        if not (self.folder / CAMPAIGN).exists():
            read_campaign(self.folder)  # says what is missing
        self.lock()
        campaign = read_campaign(self.folder)
        results = self.folder / RESULTS
        if results.exists():
            for record in iter_records(self.folder):
                self.done.add(record["run_id"])
                if record.get("artifacts"):
                    self._kept[self._artifact_key(record)] += 1
            try:
                _drop_torn_tail(results)
            except OSError as e:
                raise write_failed(results, e) from None
        self._open()
        return campaign

    def lock(self) -> None:
        """Hold the folder's exclusive lock until :meth:`close` (UsageError: another harness
        holds it, and its pid is named)."""
        if self._lockfd >= 0:
            return
        path = self.folder / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UsageError(f"cannot lock {self.folder}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"{self.folder} is in use by another shutdown-harness (pid {holder}):"
                " wait for it to end, or use another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the pid is not named
        self._lockfd = fd

    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --out {self.folder}: {e.strerror}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise UsageError(f"--out {self.folder} is not writable")

    def _open(self) -> None:
        try:
            self._file = (self.folder / RESULTS).open("a", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {self.folder / RESULTS}: {e.strerror}") from None

    def close(self) -> None:
        """Flush, close and give the folder's lock back (after a failed write: what could not
        be written is dropped, as a torn tail that ``--resume`` cuts)."""
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as e:
                    self._fail(e)
                self._file = None
            if self._lockfd >= 0:
                os.close(self._lockfd)  # the lock goes with it
                self._lockfd = -1

    def _fail(self, e: OSError) -> UsageError:
        if self.failed is None:
            self.failed = write_failed(self.folder / RESULTS, e)
        return self.failed

    # -- writing -------------------------------------------------------------------------
    def append(self, record: dict[str, Any], flush: bool = True) -> None:
        """Write one record (``flush=False``: buffered until :meth:`flush` or the next one).

        UsageError once a write failed (this one or an earlier one)."""
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            if self.failed is not None:
                raise self.failed
            assert self._file is not None, "create() or resume() the store first"
            try:
                self._file.write(line)
                if flush:
                    self._file.flush()
            except OSError as e:
                raise self._fail(e) from None
            self.done.add(record["run_id"])

    def flush(self) -> None:
        with self._lock:
            if self.failed is not None:
                raise self.failed
            if self._file is not None:
                try:
                    self._file.flush()
                except OSError as e:
                    raise self._fail(e) from None

    @staticmethod
    def _artifact_key(record: dict[str, Any]) -> tuple[str, str, str]:
        return (record["scenario"], record["strategy"], record.get("signature") or "")

    def wants_artifacts(self, record: dict[str, Any]) -> bool:
        """True for the first few runs of each (scenario, strategy, signature)."""
        with self._lock:
            return self._kept[self._artifact_key(record)] < self.keep_per_signature

    def keep_artifacts(self, record: dict[str, Any], files: dict[str, Path | str]) -> str:
        """Copy (or, for cores, move) ``files`` into the run's artifact folder.

        ``files`` maps an artifact file name to a path, or to text to write. Returns the folder
        relative to the campaign folder, for the record's ``artifacts`` key.
        """
        rel = f"{ARTIFACTS}/{artifact_dir_name(record['run_id'])}"
        target = self.folder / rel
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, source in files.items():
                if isinstance(source, Path):
                    if not source.exists():
                        continue
                    if name == "core":
                        shutil.move(source, target / name)
                    else:
                        shutil.copyfile(source, target / name)
                else:
                    (target / name).write_text(source, encoding="utf-8", errors="replace")
        except OSError as e:
            with self._lock:
                raise self._fail(e) from None
        with self._lock:
            self._kept[self._artifact_key(record)] += 1
        return rel
