"""The recorder: every exit of a child becomes one record on disk.

For each :class:`~harness.engine.Exit` it reads the child's output (bounded), classifies the
exit (harness/classify.py), checks the services when the run failed (a dead etcd makes the run
``infra``, and is restarted), sends core files of crashes to gdb in a background thread within
the core budget (harness/cores.py), keeps exemplar artifacts, appends the record to
``results.jsonl`` and updates the progress view. The record is on disk before it is counted:
records are flushed in batches (at most :data:`FLUSH_EVERY` after their run ended), and counted
once flushed. With adaptive stopping, a record that ends its cell is flushed at once, so that
the plan stops handing out that cell's runs without waiting for the batch.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shutdown_harness import MARKER
from shutdown_harness.classify import classify, needs_backtrace, service_hint
from shutdown_harness.cores import CoreBudget, core_dump_unavailable, gdb_available, run_gdb
from shutdown_harness.engine import Exit, Job
from shutdown_harness.errors import UsageError
from shutdown_harness.plan import Cell, Cellinfo, Plan, RunSpec
from shutdown_harness.progress import Tally
from shutdown_harness.schema import Verdict, record_fields
from shutdown_harness.signatures import fingerprint

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from shutdown_harness.store import ResultStore
    from shutdown_harness.warm import ForkServer

__all__ = ["Recorder", "RecorderOptions", "Services", "View", "Stop", "now_iso", "FLUSH_EVERY"]

_STDOUT_LIMIT = 4 << 20
_STDERR_HEAD = 64 << 10
_STDERR_TAIL = 256 << 10
_TAIL_CHARS = 2000
#: Seconds a service has to answer one request after a failed run (else: an outage).
_HEALTH_TIMEOUT = 2.0
#: Records reach results.jsonl in batches, flushed at most this long after their run ended,
#: and are counted (tally, progress, adaptive stopping) only once flushed. A flush is an ext4
#: journal update that costs as much as all the rest of a record's work.
FLUSH_EVERY = 0.25

#: Asked before each new run with the counts so far: why no new run may start, or None.
Stop = Callable[[Tally], str | None]


class Services(Protocol):
    """What the recorder needs of a campaign's services (harness.services.ServiceSet)."""

    def healthy(self) -> Mapping[str, bool]: ...

    def restart(self, kind: str) -> None: ...

    def env(self, names: Iterable[str] | None = None) -> dict[str, str]: ...

    def answers(self, name: str, timeout: float) -> bool: ...


class View(Protocol):
    """Shown each record once counted (harness.progress.ProgressView)."""

    def update(self, record: dict[str, Any]) -> None: ...


def now_iso(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(ts, UTC) if ts is not None else datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RecorderOptions:
    """What the recorder does with each exit, from the plan (:meth:`from_plan`)."""

    marker_expected: bool = True  # scenario children print the work-done marker; commands don't
    load: Mapping[str, Any] = field(default_factory=dict)  # the load label every record keeps
    pin: frozenset[int] | None = None  # CPUs every child is pinned to
    cores: bool = True  # core dumps and gdb backtraces (--cores auto)
    keep_cores: bool = False
    cores_per_signature: int = 3
    flush_every: float = FLUSH_EVERY

    @classmethod
    def from_plan(cls, plan: Plan) -> RecorderOptions:
        return cls(
            marker_expected=not plan.command,
            load=plan.load(),
            pin=frozenset(plan.pin_cpus) if plan.pin_cpus else None,
            cores=plan.cores != "off",
            keep_cores=plan.keep_cores,
            cores_per_signature=plan.cores_per_signature,
        )


def _no_log(text: str) -> None:
    pass


class Recorder:
    """Turns engine exits into records: classify, backtraces, artifacts, store, progress.

    Its inputs: the ``store`` records go to, the ``cells`` (how each cell's runs start), the
    ``tally`` that counts flushed records, the campaign's ``services`` (checked after a failed
    run), its ``options``, a ``log`` for messages, ``stop`` (asked before each new run: the
    pytest plugin's verdict, a deadline), ``ends_cell`` (whether a cell with these counts is
    finished: adaptive stopping), the progress ``view`` shown each counted record, and with
    ``--warm`` the fork server of each warm cell and why the others run cold.
    """

    def __init__(
        self,
        store: ResultStore,
        cells: Mapping[Cell, Cellinfo],
        tally: Tally,
        *,
        services: Services | None = None,
        options: RecorderOptions | None = None,
        log: Callable[[str], None] = _no_log,
        stop: Stop | None = None,
        ends_cell: Callable[[Counter[str]], bool] | None = None,
        view: View | None = None,
        warm: Mapping[Cell, ForkServer] | None = None,
        warm_refused: Mapping[Cell, str] | None = None,
    ) -> None:
        self.store = store
        self.cells = cells
        self.tally = tally
        self.services = services
        self.options = options = options or RecorderOptions()
        self.log = log
        self.stop = stop
        self.ends_cell = ends_cell
        self.view = view
        self.warm = dict(warm or {})  # a server that dies leaves it: its cell goes cold
        self.warm_refused = dict(warm_refused or {})
        self.specs: dict[str, RunSpec] = {}
        self.load = dict(options.load)
        self.lock = threading.Lock()
        self.no_core_reason = core_dump_unavailable() if options.cores else "--cores off"
        self.no_gdb_reason = gdb_available()
        self.core_budget = CoreBudget(exemplars=options.cores_per_signature)
        self._analysis: ThreadPoolExecutor | None = None  # started with the first core to read
        self.core_dir = store.folder / ".cores"
        self._unflushed: list[dict[str, Any]] = []
        #: Service outages (name, from, to; epoch seconds): a failed run within one is infra.
        self.outages: list[tuple[str, float, float]] = []
        self._last_ok: dict[str, float] = {}  # when each service was last known to work
        self._no_restart = threading.Event()
        self._no_restart.set()
        self._closing = threading.Event()
        self._flusher = threading.Thread(target=self._flush_now_and_then, daemon=True,
                                         name="flush")
        self._flusher.start()

    def jobs(self, specs: Iterable[RunSpec]) -> Iterator[Job]:
        """The engine's jobs for these runs (remembered, to name each exit's run)."""
        for spec in specs:
            why = self.stop(self.tally) if self.stop is not None else None
            if why is not None:
                self.log(f"{why}: no new runs")
                return
            info = self.cells[spec.cell]
            self.specs[spec.run_id] = spec
            env = dict(info.env)
            env["SHUTDOWN_HARNESS_RUN_ID"] = spec.run_id
            server = self.warm.get(spec.cell)
            if server is not None and server.refused:  # it died: the rest of the cell is cold
                del self.warm[spec.cell]
                self.warm_refused[spec.cell] = server.refused
                self.log(f"warm start stopped for {spec.scenario} / {spec.strategy}, its "
                         f"next runs start cold: {server.refused}")
                server = None
            if server is not None and _is_control(spec.index, info.runs):
                server = None  # a cold control of a warm cell
            yield Job(
                run_id=spec.run_id,
                argv=info.argv,
                timeout=info.timeout,
                env=env,
                dump_signal=info.dump_signal,
                cpus=self.options.pin,
                launcher=None if server is None else server.launch,
            )

    def on_exit(self, ex: Exit) -> None:
        spec = self.specs.pop(ex.job.run_id)
        info = self.cells[spec.cell]
        stdout = ex.stdout.text(0, _STDOUT_LIMIT)
        stderr = ex.stderr.text(_STDERR_HEAD, _STDERR_TAIL)
        if ex.error:
            stderr = f"{stderr}\nshutdown-harness: {ex.error}".strip()
        work_done = MARKER in stdout
        core = ex.core_path
        verdict = classify(
            returncode=ex.returncode,
            stderr=stderr,
            stdout=stdout,
            timed_out=ex.timed_out,
            work_done=work_done if self.options.marker_expected else None,
            marker_expected=self.options.marker_expected,
            backtrace_unavailable=None if core else self.no_core_reason,
        )
        record: dict[str, Any] = {
            "run_id": spec.run_id,
            "scenario": spec.scenario,
            "strategy": spec.strategy,
            "index": spec.index,
            "returncode": ex.returncode,
            "signal": verdict.signal,
            "timed_out": ex.timed_out,
            "work_done": work_done,
            "duration_s": round(ex.duration_s, 4),
            **record_fields(verdict),
            "stderr_tail": stderr[-_TAIL_CHARS:],
            "load": self.load,
            "python": info.python,
            "client_version": info.client_version,
            "started_at": now_iso(ex.started_at),
            "cpu_s": round(ex.cpu_s, 4),
            "max_rss_kb": ex.max_rss_kb,
            "backtrace": None,
            "start": "cold" if ex.job.launcher is None else "warm",
        }
        if record["start"] == "cold" and spec.cell in self.warm_refused:
            record["warm_refused"] = self.warm_refused[spec.cell]
        if verdict.category == "clean":
            self._service_ok(info, ex.started_at + ex.duration_s)
        elif self._service_down(info, record, ex, verdict.notes):
            self._finish(record, stdout, stderr, None, core)
            return
        if core is not None and verdict.category == "crash":
            # Cores are inferred from each other within a cell and a stderr fingerprint.
            key = f"{spec.scenario}/{spec.strategy}/{verdict.signature}/{fingerprint(stderr)}"
            unspecific = needs_backtrace(verdict)
            decision = self.core_budget.decide(key, unspecific)
            if decision.analyse and info.executable and not self.no_gdb_reason:
                # gdb takes ~0.6 s: analyse in the background and free the slot now.
                self.core_dir.mkdir(exist_ok=True)
                kept = self.core_dir / f"{ex.pid}.core"
                os.replace(core, kept)
                self._in_background(
                    self._analyse, key, record, ex, stdout, stderr, kept, info, decision.reason
                )
                return
            record["backtrace"] = f"unavailable: {self.no_gdb_reason or decision.reason}"
            if unspecific and not self.no_gdb_reason:
                # Inferred from the analyses queued before this run, once they are done: the
                # same single worker runs them in order.
                self._in_background(self._infer, key, record, verdict, stdout, stderr)
                return
        elif verdict.category == "crash":
            record["backtrace"] = f"unavailable: {self.no_core_reason or 'no core file'}"
        self._finish(record, stdout, stderr, None, core)

    # -- services: infra only with evidence ---------------------------------------------------
    def before_spawn(self, job: Job) -> Job:
        """The engine's hook before each start: wait while a service restarts, and give the
        run the services' current endpoints (a restart can move a service to another port)."""
        self._no_restart.wait()
        spec = self.specs.get(job.run_id)
        services = self.services
        if spec is None or services is None or job.env is None:
            return job
        names = self.cells[spec.cell].services
        if not names:
            return job
        return replace(job, env={**job.env, **services.env(names)})

    def _service_ok(self, info: Cellinfo, when: float) -> None:
        for name in info.services:
            if when > self._last_ok.get(name, 0.0):
                self._last_ok[name] = when

    def _service_down(self, info: Cellinfo, record: dict[str, Any], ex: Exit,
                      notes: Iterable[str] | None) -> bool:
        """Whether this failed run is ``infra``, on evidence: it overlapped an outage window,
        or its service fails its health check now (then restarted, and a window recorded from
        when it was last known well, within this run, to the end of the restart)."""
        services = self.services
        if services is None or not info.services:
            return False
        begin, end = ex.started_at, ex.started_at + ex.duration_s
        hit = [(name, a, b) for name, a, b in self.outages
               if name in info.services and a <= end and begin <= b]
        if hit:
            self._infra(record, sorted({name for name, _, _ in hit}), [
                f"{name} was down from {now_iso(a)} to {now_iso(b)} (until its restart ended),"
                " during this run: not counted" for name, a, b in hit])
            return True
        checked = time.time()
        # One request with a timeout: a frozen server fails it. Then the service's own check
        # (retried): one that still fails is restarted; either way the outage is on record.
        failed = sorted(name for name in info.services
                        if not services.answers(name, _HEALTH_TIMEOUT))
        if not failed:
            self._service_ok(info, checked)
            if service_hint(list(notes or ())):
                record.setdefault("notes", []).append(
                    f"{', '.join(info.services)} answered its health check after this run: the"
                    " client could not reach a healthy service (not infra)")
            return False
        health = services.healthy()
        down = [name for name in failed if not health.get(name, True)]
        self._no_restart.clear()  # no run starts while a service restarts
        try:
            for name in down:
                self.log(f"{name} went down; restarting it")
                services.restart(name)
        finally:
            self._no_restart.set()
        ended = time.time()
        for name in failed:
            since = min(checked, max(begin, self._last_ok.get(name, begin)))
            self.outages.append((name, since, ended))
        self._infra(record, failed, [
            f"{name} did not answer within {_HEALTH_TIMEOUT:g} s after this run"
            + (" and was restarted" if name in down else " (it answered again later)")
            + ": not counted as a failure" for name in failed])
        return True

    @staticmethod
    def _infra(record: dict[str, Any], names: list[str], notes: list[str]) -> None:
        record.update(
            category="infra",
            outcome="infra",
            signature=f"infra-service-down:{'+'.join(names)}",
            phase="unknown",
        )
        record.setdefault("notes", []).extend(notes)

    def _analyse(
        self,
        key: str,
        record: dict[str, Any],
        ex: Exit,
        stdout: str,
        stderr: str,
        core: Path,
        info: Cellinfo,
        reason: str,
    ) -> None:
        text: str | None = None
        keep_core = False
        try:
            assert info.executable is not None
            started = time.monotonic()
            text = run_gdb(core, Path(info.executable))
            verdict = classify(
                returncode=ex.returncode,
                stderr=stderr,
                stdout=stdout,
                timed_out=ex.timed_out,
                work_done=record["work_done"] if self.options.marker_expected else None,
                marker_expected=self.options.marker_expected,
                backtrace=text,
            )
            self.core_budget.record(
                key, verdict.signature, verdict.frames, time.monotonic() - started
            )
            record.update(record_fields(verdict.with_note(f"core analysed: {reason}")))
            record["backtrace"] = "gdb"
            keep_core = self.options.keep_cores and self.core_budget.keep_core(
                key, verdict.signature, core.stat().st_size
            )
        except Exception as e:  # noqa: BLE001 - a failed analysis must not lose the run
            self.core_budget.abandon(key)
            record["backtrace"] = f"unavailable: gdb failed: {e}"
        self._finish(record, stdout, stderr, text, core, keep_core)

    def _infer(
        self, key: str, record: dict[str, Any], verdict: Verdict, stdout: str, stderr: str
    ) -> None:
        record.update(record_fields(self.core_budget.infer(key, verdict)))
        self._finish(record, stdout, stderr, None, None)

    def _finish(
        self,
        record: dict[str, Any],
        stdout: str,
        stderr: str,
        backtrace: str | None,
        core: Path | None,
        keep_core: bool = False,
    ) -> None:
        with self.lock:
            if self.store.wants_artifacts(record):
                files: dict[str, Path | str] = {"stdout.txt": stdout, "stderr.txt": stderr}
                if backtrace:
                    files["backtrace.txt"] = backtrace
                if core is not None and keep_core:
                    files["core"] = core
                record["artifacts"] = self.store.keep_artifacts(record, files)
            if core is not None and core.exists() and core.parent == self.core_dir:
                core.unlink()
            self.store.append(record, flush=False)
            self._unflushed.append(record)
            if self._ends_cell(record):
                self._flush()

    def _ends_cell(self, record: dict[str, Any]) -> bool:
        """Whether the counts with the unflushed records end this record's cell (adaptive)."""
        if self.ends_cell is None:
            return False
        cell = (record["scenario"], record["strategy"])
        counts = Counter(self.tally.cells.get(cell, ()))
        counts.update(r["category"] for r in self._unflushed
                      if (r["scenario"], r["strategy"]) == cell)
        return self.ends_cell(counts)

    def _flush(self) -> None:
        """Flush results.jsonl, then count what it holds now (call with the lock held)."""
        if self._unflushed:
            self.store.flush()
            for record in self._unflushed:
                self.tally.add(record)
                if self.view is not None:
                    self.view.update(record)
            self._unflushed.clear()

    def _flush_now_and_then(self) -> None:
        """Flush every FLUSH_EVERY: the bound on how long a record waits to be on disk."""
        while not self._closing.wait(self.options.flush_every):
            with self.lock:
                try:
                    self._flush()
                except UsageError:
                    return  # a write failed (a full disk): the next record or close says so

    def _in_background(self, task: Callable[..., None], *args: Any) -> None:
        """``task`` on the one analysis worker: tasks run in the order given."""
        if self._analysis is None:
            # Imported here: concurrent.futures pulls logging (~11 ms of a run's start-up,
            # -X importtime), and a campaign that leaves no core to read never needs it.
            from concurrent.futures import ThreadPoolExecutor

            self._analysis = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gdb")
        self._analysis.submit(task, *args)

    def close(self) -> None:
        """Wait for the backtraces still being analysed, then flush and count every record."""
        if self._analysis is not None:
            self._analysis.shutdown(wait=True)
        self._closing.set()
        self._flusher.join()
        with self.lock:
            self._flush()


def _is_control(index: int, runs: int) -> bool:
    """Whether a run of a warm cell starts cold (harness/warm.py)."""
    # Imported here: warm.py pulls socket (~6 ms of every run's start-up, -X importtime), and
    # only a campaign with fork servers asks.
    from shutdown_harness.warm import is_control

    return is_control(index, runs)
