"""The recorder alone, without a campaign: a real ResultStore, exits from real children (through
the engine) or built from real captures, and the recorder's inputs given one by one."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shutdown_harness import MARKER
from shutdown_harness.engine import Capture, Engine, Exit, Job, raise_core_limit
from shutdown_harness.plan import Cell, Cellinfo, Plan, RunSpec, iter_plan
from shutdown_harness.progress import Tally
from shutdown_harness.recorder import Recorder, RecorderOptions
from shutdown_harness.store import ResultStore, iter_records

CELL: Cell = ("s", "t")
OTHER: Cell = ("s", "u")
#: Long enough that the flush timer never fires during a test that relies on it not to.
NEVER = 3600.0
#: How long a test waits for something that should take a fraction of a second.
PATIENCE = 20.0


def _store(tmp_path: Path, keep: int = 3) -> ResultStore:
    store = ResultStore(tmp_path / "campaign", keep_per_signature=keep)
    store.create({"format": 1, "plan": Plan().to_dict()})
    return store


def _cell(runs: int = 10, services: tuple[str, ...] = (), **kw: Any) -> Cellinfo:
    return Cellinfo(argv=("unused",), env={}, timeout=5.0, dump_signal=None, runs=runs,
                    services=services, **kw)


def _capture(text: str) -> Capture:
    fd = os.memfd_create("capture", os.MFD_CLOEXEC)
    os.write(fd, text.encode())
    return Capture(fd)


def _exit(job: Job, returncode: int, stdout: str = MARKER + "\n", stderr: str = "") -> Exit:
    return Exit(job=job, pid=12345, returncode=returncode, timed_out=False, duration_s=0.01,
                started_at=time.time(), workdir=Path("/nonexistent"),
                stdout=_capture(stdout), stderr=_capture(stderr))


def _feed(recorder: Recorder, job: Job, returncode: int = 0, **kw: str) -> None:
    """Hand the recorder one exit of ``job``, as the engine does (captures closed after)."""
    ex = _exit(job, returncode, **kw)
    try:
        recorder.on_exit(ex)
    finally:
        ex.stdout.close()
        ex.stderr.close()


def _jobs(recorder: Recorder, cell: Cell, count: int, first: int = 0) -> Iterator[Job]:
    specs = (RunSpec(cell[0], cell[1], i) for i in range(first, first + count))
    return recorder.jobs(specs)


class _OnDiskView:
    """A progress view that checks what it is shown is already in results.jsonl."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shown: list[str] = []

    def update(self, record: dict[str, Any]) -> None:
        on_disk = {r["run_id"] for r in iter_records(self.folder)}
        assert record["run_id"] in on_disk, "counted before it was on disk"
        self.shown.append(record["run_id"])


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {PATIENCE} s"
        time.sleep(0.01)


# -- batching and flushing -----------------------------------------------------------------
def test_records_are_counted_only_once_flushed_and_close_flushes_them(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tally = Tally()
    view = _OnDiskView(store.folder)
    recorder = Recorder(store, {CELL: _cell()}, tally, view=view,
                        options=RecorderOptions(flush_every=NEVER, cores=False))
    try:
        for job in _jobs(recorder, CELL, 5):
            _feed(recorder, job)
        assert sum(tally.total.values()) == 0 and view.shown == []  # a batch, not yet flushed
    finally:
        recorder.close()
        store.close()
    assert tally.total == Counter(clean=5)
    assert view.shown == [f"s/t/{i}" for i in range(5)]
    records = list(iter_records(store.folder))
    assert [r["run_id"] for r in records] == view.shown
    assert all(r["category"] == "clean" and r["work_done"] for r in records)


def test_the_flush_timer_counts_a_batch_without_close(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tally = Tally()
    view = _OnDiskView(store.folder)
    recorder = Recorder(store, {CELL: _cell()}, tally, view=view,
                        options=RecorderOptions(flush_every=0.05, cores=False))
    try:
        for job in _jobs(recorder, CELL, 3):
            _feed(recorder, job)
        _wait_for(lambda: tally.total["clean"] == 3, "flush by the timer")
        assert len(view.shown) == 3
    finally:
        recorder.close()
        store.close()


def test_a_record_that_ends_its_cell_is_flushed_and_counted_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tally = Tally()
    ended: list[Counter[str]] = []

    def ends_cell(counts: Counter[str]) -> bool:
        ended.append(Counter(counts))
        return counts["clean"] >= 3

    recorder = Recorder(store, {CELL: _cell(), OTHER: _cell()}, tally, ends_cell=ends_cell,
                        options=RecorderOptions(flush_every=NEVER, cores=False))
    try:
        first, second, third = _jobs(recorder, CELL, 3)
        (other,) = _jobs(recorder, OTHER, 1)
        _feed(recorder, first)
        _feed(recorder, second)
        _feed(recorder, other)
        assert sum(tally.total.values()) == 0  # nothing ended a cell: still one batch
        # The counts asked about include the unflushed records of that cell only.
        assert ended[-1] == Counter(clean=1) and ended[1] == Counter(clean=2)
        _feed(recorder, third)
        # Ended: flushed and counted before the next job is handed out, with the whole batch.
        assert tally.cells[CELL] == Counter(clean=3) and tally.cells[OTHER] == Counter(clean=1)
        assert len(list(iter_records(store.folder))) == 4
    finally:
        recorder.close()
        store.close()


# -- the stop callback ---------------------------------------------------------------------
def test_the_stop_callback_ends_the_jobs_with_its_reason(tmp_path: Path) -> None:
    store = _store(tmp_path)
    tally = Tally()
    said: list[str] = []
    asked: list[int] = []

    def stop(counts: Tally) -> str | None:
        asked.append(sum(counts.total.values()))
        return "enough" if len(asked) > 2 else None

    recorder = Recorder(store, {CELL: _cell()}, tally, log=said.append, stop=stop,
                        options=RecorderOptions(flush_every=NEVER, cores=False,
                                                pin=frozenset({0})))
    try:
        jobs = list(recorder.jobs(iter_plan([CELL], 10)))
    finally:
        recorder.close()
        store.close()
    assert [j.run_id for j in jobs] == ["s/t/0", "s/t/1"]
    assert all(j.cpus == frozenset({0}) and j.env["SHUTDOWN_HARNESS_RUN_ID"] == j.run_id
               for j in jobs)
    assert said == ["enough: no new runs"]


# -- services ------------------------------------------------------------------------------
class _Service:
    """A service that is down until restarted (what the recorder sees of a dead etcd)."""

    def __init__(self) -> None:
        self.up = False
        self.checks = 0
        self.restarts: list[str] = []

    def healthy(self) -> dict[str, bool]:
        self.checks += 1
        return {"etcd": self.up}

    def answers(self, name: str, timeout: float) -> bool:
        return self.up

    def restart(self, kind: str) -> None:
        self.restarts.append(kind)
        self.up = True


def test_a_failed_run_with_its_service_down_is_infra_and_the_service_restarted(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    service = _Service()
    said: list[str] = []
    cells = {CELL: _cell(services=("etcd",)), OTHER: _cell()}
    recorder = Recorder(store, cells, Tally(), services=service, log=said.append,
                        options=RecorderOptions(flush_every=NEVER, cores=False))
    boom = "Traceback (most recent call last):\nValueError: boom\n"
    try:
        clean, failed, after = _jobs(recorder, CELL, 3)
        (unserved,) = _jobs(recorder, OTHER, 1)
        _feed(recorder, clean)
        assert service.checks == 0  # a clean run is not a reason to check
        _feed(recorder, unserved, 1, stdout="", stderr=boom)
        assert service.checks == 0  # a cell that needs no service is never infra
        _feed(recorder, failed, 1, stdout="", stderr=boom)
        assert service.checks == 1 and service.restarts == ["etcd"]
        _feed(recorder, after, 1, stdout="", stderr=boom)  # up again: the client's own error
    finally:
        recorder.close()
        store.close()
    records = {r["run_id"]: r for r in iter_records(store.folder)}
    assert records["s/t/0"]["category"] == "clean"
    assert records["s/u/0"]["category"] == "error"
    infra = records["s/t/1"]
    assert (infra["category"], infra["outcome"]) == ("infra", "infra")
    assert infra["signature"] == "infra-service-down:etcd"
    assert any("etcd did not answer within 2 s after this run and was restarted" in note
               for note in infra["notes"])
    assert records["s/t/2"]["category"] == "error"
    assert records["s/t/2"]["signature"].startswith("python-exception")
    assert said == ["etcd went down; restarting it"]


# -- the core budget -----------------------------------------------------------------------
def test_without_cores_a_crash_says_why_it_has_no_backtrace(tmp_path: Path) -> None:
    store = _store(tmp_path)
    recorder = Recorder(store, {CELL: _cell()}, Tally(),
                        options=RecorderOptions(flush_every=NEVER, cores=False))
    try:
        (job,) = _jobs(recorder, CELL, 1)
        _feed(recorder, job, -signal.SIGSEGV)
    finally:
        recorder.close()
        store.close()
    (record,) = iter_records(store.folder)
    assert record["category"] == "crash" and record["signal"] == "SIGSEGV"
    assert record["backtrace"] == "unavailable: --cores off"


PANIC_THEN_ABORT = (
    "import os, sys\n"
    "sys.stderr.write(\"thread 'tokio-runtime-worker' panicked at src/gil.rs:200:21:\\n"
    "The Python interpreter is not initialized and the `auto-initialize` feature is not"
    " enabled.\\n\")\n"
    "sys.stderr.flush()\n"
    "os.abort()\n"
)


def test_cores_beyond_the_exemplars_of_a_specific_signature_are_not_analysed(
    tmp_path: Path,
) -> None:
    from shutdown_harness.cores import core_dump_unavailable, gdb_available

    if gdb_available() or core_dump_unavailable():
        pytest.skip(f"no native backtraces here: {gdb_available() or core_dump_unavailable()}")
    raise_core_limit()
    store = _store(tmp_path, keep=5)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    info = Cellinfo(argv=(sys.executable, "-c", PANIC_THEN_ABORT), env=env, timeout=60.0,
                    dump_signal=signal.SIGABRT, runs=5,
                    executable=os.path.realpath(sys.executable))
    recorder = Recorder(store, {CELL: info}, Tally(),
                        options=RecorderOptions(marker_expected=False, cores_per_signature=2,
                                                flush_every=NEVER))
    engine = Engine(tmp_path / ".work", jobs=2)
    try:
        assert engine.run(recorder.jobs(iter_plan([CELL], 5)), recorder.on_exit)
    finally:
        recorder.close()
        store.close()
    records = list(iter_records(store.folder))
    assert len(records) == 5
    assert all(r["category"] == "crash" and r["signal"] == "SIGABRT" for r in records)
    assert all(r["signature"] == "pyo3-attach-finalized-panic" for r in records), [
        r["signature"] for r in records
    ]
    # Specific stderr: the first two cores are the exemplars analysed with gdb, no more.
    backtraces = Counter(r["backtrace"] for r in records)
    assert backtraces == {"gdb": 2, "unavailable: enough exemplars for this signature": 3}
    analysed = [r for r in records if r["backtrace"] == "gdb"]
    assert all(any(n.startswith("core analysed: exemplar") for n in r["notes"]) for r in analysed)
    assert all((store.folder / r["artifacts"] / "backtrace.txt").is_file() for r in analysed)
    assert not list(store.folder.glob(".cores/*"))  # every core deleted once decided


def test_options_from_a_plan() -> None:
    options = RecorderOptions.from_plan(
        Plan(command="true", jobs=3, pin="0", pin_cpus=(0,), cores="off", keep_cores=True,
             cores_per_signature=5)
    )
    assert not options.marker_expected and not options.cores and options.keep_cores
    assert options.pin == frozenset({0}) and options.cores_per_signature == 5
    assert options.load["jobs"] == 3 and options.load["pin"] == "0"
    assert RecorderOptions.from_plan(Plan(scenarios=("sanity",))).marker_expected
