"""How fast is the harness, measured side by side with what a user would otherwise write.

    nox -s bench                   # a few minutes: the README's table
    nox -s bench -- --quick        # one to two minutes, smaller samples
    python bench/run.py [--quick]  # the same, in a Python where the harness is installed

Every comparison runs its variants interleaved (A, B, B, A, A, B, ...) in one invocation and
reports the median of the per-repetition ratios, so that the load other programs put on the
machine falls on both sides alike. Measured:

- start-up: ``shutdown-harness --help``, ``list`` and a one-run campaign (``run --command
  "python -c pass" --runs 1``: start-up, the run and the five reports) against a bare
  ``python -c pass``, and the same one-run campaign in instructions (callgrind, when valgrind
  is installed: a count that the machine's load does not move);
- throughput: ``shutdown-harness run`` vs a bare ``xargs -P J`` running the same child argv
  the same number of times at the same parallelism, for a trivial child (``python -c pass``)
  and for the ``ultra_rapid`` scenario (same argv, same etcd); and vs the sequential
  ``subprocess.run`` loop of etcd-client-py's own stress tests;
- the harness's own CPU per run and peak RSS (``getrusage(RUSAGE_SELF)`` in the harness
  process, see ``_measured.py``: never its children's), at two campaign sizes;
- warm start (``run --warm``) against cold on ``ultra_rapid`` with etcd-client-py 0.5.1: whole
  campaigns, cold controls included, interleaved;
- time to verdict: etcd-client-py 0.4.1 vs 0.5.1 on ``concurrent_ops``, from the command's
  start until Fisher's two-sided p-value is below 0.001, cold and with ``--warm``;
- the child's own cost (interpreter start, imports, work, finalization), hence the machine's
  limit: CPUs / child CPU time per run.

The scenario parts need the embedded etcd binary and the strategies' virtualenvs; when those are
not available the rows say why and the rest of the table is still printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["main", "Row", "Sizes"]

HERE = Path(__file__).resolve().parent
MEASURED = HERE / "_measured.py"
SIGNIFICANCE = 0.001


@dataclass
class Sizes:
    """How many runs each measurement makes (``--quick`` shrinks them)."""

    reps: int = 12
    trivial_runs: int = 200
    ultra_runs: int = 30
    memory_runs: tuple[int, int] = (1000, 10000)
    memory_child: str = "python"  # or "true": /bin/true, the cheapest child there is
    memory_jobs: int = 8
    cost_runs: int = 15
    verdict_cap: int = 600
    warm_reps: int = 6
    warm_runs: int = 300  # a warm campaign's cold controls are 10% of its runs, at least 20
    verdict_reps: int = 3


QUICK = Sizes(reps=6, trivial_runs=200, ultra_runs=30, memory_child="true", cost_runs=8,
              verdict_cap=400, warm_reps=3, warm_runs=200, verdict_reps=1)


@dataclass
class Row:
    """One line of the results table."""

    what: str
    value: str
    target: str = ""
    met: bool | None = None
    detail: str = ""

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("yes" if self.met else "**no**")
        return [self.what, self.value, self.target, met]


@dataclass
class Bench:
    """Options, a scratch folder, and the rows found so far."""

    sizes: Sizes
    jobs: int
    scratch: Path
    log: Callable[[str], None]
    strategy: str = "etcd-0.5.1"
    verdict_strategies: tuple[str, str] = ("etcd-0.4.1", "etcd-0.5.1")
    etcd: str | None = None  # HOST:PORT shared by every scenario measurement
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    _counter: int = 0

    def folder(self, name: str) -> Path:
        self._counter += 1
        return self.scratch / f"{self._counter:03d}-{name}"


# -- the measured programs -------------------------------------------------------------------
@dataclass
class HarnessRun:
    wall_s: float  # the whole command, as the user waits for it
    phase_s: float  # first child start to last child exit
    cpu_s: float  # the harness process's own CPU (all its threads, none of its children)
    max_rss_kb: int
    runs: int
    out: Path


def _harness(bench: Bench, name: str, args: list[str], check: bool = True) -> HarnessRun:
    """``shutdown-harness run ARGS`` in a subprocess that reports its own rusage."""
    out = bench.folder(name)
    usage = out.with_suffix(".usage.json")
    argv = [sys.executable, str(MEASURED), str(usage), "run", *args, "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=bench.scratch)
    wall = time.monotonic() - started
    if check and proc.returncode not in (0, 1):
        tail = proc.stdout.decode(errors="replace")[-1500:]
        raise RuntimeError(f"shutdown-harness run failed ({proc.returncode}):\n{tail}")
    if not usage.exists():  # the harness did not even start: say why
        tail = proc.stdout.decode(errors="replace")[-1500:]
        raise RuntimeError(f"shutdown-harness run failed ({proc.returncode}):\n{tail}")
    measured = json.loads(usage.read_text())
    spans = list(_spans(out))
    phase = max(end for _, end in spans) - min(start for start, _ in spans) if spans else 0.0
    return HarnessRun(wall, phase, measured["cpu_s"], measured["max_rss_kb"], len(spans), out)


def _spans(out: Path) -> Iterator[tuple[float, float]]:
    """(start, end) epoch seconds of every recorded run."""
    with (out / "results.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            start = datetime.fromisoformat(record["started_at"]).timestamp()
            yield start, start + record["duration_s"]


def _xargs(argv: list[str], runs: int, jobs: int, env: dict[str, str]) -> float:
    """Wall time of ``xargs -P jobs`` running ``argv`` ``runs`` times (output discarded)."""
    lines = b"x\n" * runs  # -I{} with no {} in the command: one run per line, no argument added
    started = time.monotonic()
    subprocess.run(
        ["xargs", "-P", str(jobs), "-I{}", *argv],
        input=lines,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return time.monotonic() - started


def _sequential(argv: list[str], runs: int, env: dict[str, str]) -> float:
    """Wall time of etcd-client-py's stress-test style: one ``subprocess.run`` after another."""
    started = time.monotonic()
    for _ in range(runs):
        subprocess.run(argv, capture_output=True, env=env, timeout=120)
    return time.monotonic() - started


def _child_cost(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of one child, run alone."""
    cpu, wall = [], []
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        wall.append(time.monotonic() - started)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(cpu), statistics.median(wall)


# -- measurements ----------------------------------------------------------------------------
def _interleaved(reps: int, variants: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Each variant once per repetition, the order reversed every other repetition."""
    results: dict[str, list[Any]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            results[name].append(variants[name]())
    return results


def _compare(bench: Bench, label: str, child: str, argv: list[str], runs: int,
             harness_args: list[str], env: dict[str, str],
             sequential: bool = False) -> list[HarnessRun]:
    """Harness vs ``xargs -P J`` (and the sequential loop) on one child, interleaved."""
    jobs = bench.jobs
    variants: dict[str, Callable[[], Any]] = {
        "harness": lambda: _harness(bench, label, [*harness_args, "--runs", str(runs),
                                                   "--jobs", str(jobs)]),
        "xargs": lambda: _xargs(argv, runs, jobs, env),
    }
    if sequential:
        variants["sequential"] = lambda: _sequential(argv, runs, env)
    bench.log(f"throughput, {label}: {bench.sizes.reps} x ({', '.join(variants)}) x {runs} runs")
    results = _interleaved(bench.sizes.reps, variants)
    harness: list[HarnessRun] = results["harness"]
    bench.raw[f"throughput {label}"] = {
        "harness": [vars(h) | {"out": str(h.out)} for h in harness],
        **{f"{name}_s": results[name] for name in variants if name != "harness"}}
    rate = statistics.median(h.runs / h.phase_s for h in harness)
    overhead = statistics.median(h.wall_s - h.phase_s for h in harness)

    def ratio(name: str, span: Callable[[HarnessRun], float]) -> tuple[float, float]:
        pairs = zip(harness, results[name], strict=True)
        return (statistics.median(other / span(h) for h, other in pairs),
                statistics.median(runs / other for other in results[name]))

    phase, bare = ratio("xargs", lambda h: h.phase_s)
    whole, _ = ratio("xargs", lambda h: h.wall_s)
    each = sorted(x / h.phase_s for h, x in zip(harness, results["xargs"], strict=True))
    spread = f"{each[len(each) // 4]:.2f}-{each[(3 * len(each)) // 4]:.2f}"
    bench.rows.append(Row(
        f"throughput vs `xargs -P {jobs}`, {child} (median of {bench.sizes.reps} paired "
        f"ratios of {runs} runs; middle half {spread})",
        f"{phase:.3f} ({rate:.1f}/s vs {bare:.1f}/s)", ">= 0.95", phase >= 0.95))
    bench.rows.append(Row(
        f"the same, whole command (start-up, checks and 5 reports: {overhead:.2f} s)",
        f"{whole:.3f}", ">= 0.90" if child == "`python -c pass`" else "",
        whole >= 0.90 if child == "`python -c pass`" else None))
    if sequential:
        speedup, loop = ratio("sequential", lambda h: h.phase_s)
        bench.rows.append(Row(
            f"throughput vs a sequential `subprocess.run` loop (etcd-client-py's stress tests), "
            f"{child}", f"{speedup:.2f}x ({rate:.1f}/s vs {loop:.1f}/s)",
            f">= 1.8x on {len(os.sched_getaffinity(0))} CPUs", speedup >= 1.8))
    return harness


def _harness_argv() -> list[str]:
    """The installed console script, as a user types it (``-m`` when there is none)."""
    script = Path(sys.executable).parent / "shutdown-harness"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shutdown_harness"]


def _wall(argv: list[str], cwd: Path) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    return wall


def measure_startup(bench: Bench) -> None:
    """``--help``, ``list`` and a one-run campaign against a bare ``python -c pass``."""
    harness = _harness_argv()
    bare = [sys.executable, "-c", "pass"]
    cwd = bench.folder("startup")
    cwd.mkdir()
    variants: dict[str, Callable[[], Any]] = {
        "bare": lambda: _wall(bare, cwd),
        "help": lambda: _wall([*harness, "--help"], cwd),
        "list": lambda: _wall([*harness, "list"], cwd),
        "run": lambda: _wall([*harness, "run", "--command", shlex.join(bare), "--runs", "1",
                              "--out", str(bench.folder("one-run"))], cwd),
    }
    reps = bench.sizes.reps
    bench.log(f"start-up: {reps} x ({', '.join(variants)})")
    results = _interleaved(reps, variants)
    bench.raw["startup_s"] = results
    base = statistics.median(results["bare"])
    bench.rows.append(Row("start-up: `python -c pass` alone (median wall)",
                          f"{1e3 * base:.0f} ms"))
    for name, what in (("help", "`shutdown-harness --help`"), ("list", "`shutdown-harness list`")):
        wall = statistics.median(results[name])
        ratio = statistics.median(x / b for x, b in zip(results[name], results["bare"],
                                                        strict=True))
        bench.rows.append(Row(f"start-up: {what} (median wall; paired ratio to the bare Python)",
                              f"{1e3 * wall:.0f} ms ({ratio:.1f}x)", "< 0.15 s", wall < 0.15))
    ratio = statistics.median(x / b for x, b in zip(results["run"], results["bare"], strict=True))
    wall = statistics.median(results["run"])
    bench.rows.append(Row(
        "start-up: a one-run campaign, `run --command \"python -c pass\" --runs 1` (whole "
        f"command, 5 reports; median of {reps} paired ratios to the bare Python)",
        f"{ratio:.1f}x ({1e3 * wall:.0f} ms)", "<= 15x", ratio <= 15))


def _instructions(argv: list[str], cwd: Path) -> int:
    """Instructions the process ``argv`` executes itself (callgrind; children not traced)."""
    out = cwd / "callgrind.out"
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, text=True)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind {shlex.join(argv)} failed ({proc.returncode})")
    out.unlink(missing_ok=True)
    return int(found.group(1))


def measure_instructions(bench: Bench) -> None:
    """The one-run campaign's own instructions against a bare ``python -c pass``'s.

    Wall times move with the load of a shared machine; the count of instructions a process
    executes does not (callgrind; the harness's children are not traced). Skipped without
    valgrind.
    """
    if shutil.which("valgrind") is None:
        bench.rows.append(Row("start-up in instructions (callgrind)", "skipped: no valgrind"))
        return
    cwd = bench.folder("instructions")
    cwd.mkdir()
    bench.log("start-up in instructions: callgrind on a bare Python and a one-run campaign")
    bare = _instructions([sys.executable, "-c", "pass"], cwd)
    script = _harness_argv()
    script = [sys.executable, *script] if len(script) == 1 else script  # valgrind runs Python
    run = _instructions([*script, "run", "--command", f"{sys.executable} -c pass",
                         "--runs", "1", "--out", str(bench.folder("one-run-counted"))], cwd)
    bench.raw["instructions"] = {"bare": bare, "one_run_campaign": run}
    bench.rows.append(Row(
        "start-up in instructions (callgrind, the harness process only): a one-run campaign vs "
        "a bare `python -c pass`", f"{run / 1e6:.0f} M vs {bare / 1e6:.0f} M ({run / bare:.1f}x)"))


def measure_trivial(bench: Bench) -> list[HarnessRun]:
    argv = [sys.executable, "-c", "pass"]
    runs = _compare(bench, "trivial", "`python -c pass`", argv, bench.sizes.trivial_runs,
                    ["--command", shlex.join(argv)], dict(os.environ))
    per_run = statistics.median(h.cpu_s / h.runs for h in runs)
    bench.raw["trivial_cpu_per_run_s"] = per_run
    cpu, wall = _child_cost(argv, bench.sizes.cost_runs, dict(os.environ))
    _limit_rows(bench, "`python -c pass`", cpu, wall, statistics.median(
        h.runs / h.phase_s for h in runs), [("interpreter start + finalization", cpu)])
    return runs


def _limit_rows(bench: Bench, child: str, cpu: float, wall: float, achieved: float,
                parts: list[tuple[str, float]]) -> None:
    cpus = len(os.sched_getaffinity(0))
    limit = cpus / cpu
    detail = ", ".join(f"{name} {1e3 * value:.1f} ms" for name, value in parts)
    bench.rows.append(Row(f"child cost, {child} (CPU per run; alone: wall {1e3 * wall:.0f} ms)",
                          f"{1e3 * cpu:.1f} ms: {detail}"))
    bench.rows.append(Row(
        f"machine limit, {child} ({cpus} CPUs / child CPU)",
        f"{limit:.0f}/s; the harness reached {achieved:.1f}/s ({achieved / limit:.0%})"))


def measure_memory(bench: Bench) -> None:
    small, large = bench.sizes.memory_runs
    argv = ["true"] if bench.sizes.memory_child == "true" else [sys.executable, "-c", "pass"]
    command = shlex.join(argv)
    bench.log(f"memory: {small} and {large} runs of `{command}`, {bench.sizes.memory_jobs} jobs")
    found = {}
    for runs in (small, large):
        found[runs] = _harness(bench, f"memory-{runs}", [
            "--command", command, "--runs", str(runs), "--jobs", str(bench.sizes.memory_jobs)])
    a, b = found[small], found[large]
    growth = b.max_rss_kb / a.max_rss_kb
    marginal = (b.cpu_s - a.cpu_s) / (b.runs - a.runs)
    bench.raw["memory"] = {runs: vars(h) | {"out": str(h.out)} for runs, h in found.items()}
    bench.rows.append(Row(f"harness CPU per run (own process, `{command}`, marginal "
                          f"{small} -> {large} runs)", f"{1e3 * marginal:.2f} ms", "< 2 ms",
                          marginal < 0.002))
    bench.rows.append(Row(f"harness peak RSS, {small:,} runs of `{command}`",
                          f"{a.max_rss_kb / 1024:.1f} MiB"))
    bench.rows.append(Row(f"harness peak RSS, {large:,} runs of `{command}`",
                          f"{b.max_rss_kb / 1024:.1f} MiB ({growth:.2f}x)", "flat (<= 1.10x)",
                          growth <= 1.10))


# -- scenarios on etcd -----------------------------------------------------------------------
@contextmanager
def _etcd(bench: Bench) -> Iterator[str]:
    """HOST:PORT of an etcd all scenario measurements share (started here unless given)."""
    if bench.etcd:
        yield bench.etcd
        return
    from shutdown_harness import services

    with services.start("etcd", "embedded") as service:
        service.check()
        yield service.endpoint


def _cell_argv(out: Path) -> list[str]:
    campaign = json.loads((out / "campaign.json").read_text())
    (cell,) = campaign["cells"].values()
    return list(cell["argv"])


def measure_ultra(bench: Bench, endpoint: str) -> None:
    harness_args = ["--scenario", "ultra_rapid", "--strategy", bench.strategy,
                    "--etcd", endpoint]
    bench.log(f"ultra_rapid: preparing {bench.strategy} (virtualenv, probe)")
    probe = _harness(bench, "ultra-probe", [*harness_args, "--runs", "2"])
    argv = _cell_argv(probe.out)
    env = {**os.environ, "SHUTDOWN_HARNESS_ETCD": endpoint, "SHUTDOWN_HARNESS_SEED": "1"}
    runs = _compare(bench, "ultra_rapid", "`ultra_rapid`", argv, bench.sizes.ultra_runs,
                    harness_args, env, sequential=True)
    harness_rate = statistics.median(h.runs / h.phase_s for h in runs)
    # The child's own cost, split by what it runs.
    python = argv[0]
    hard_exit = _with_mode(argv, "hard-exit")
    k = bench.sizes.cost_runs
    bench.log("ultra_rapid: the child's own cost")
    base, _ = _child_cost([python, "-c", "pass"], k, env)
    imported, _ = _child_cost([python, "-c", "import asyncio, etcd_client"], k, env)
    no_final, _ = _child_cost(hard_exit, k, env)
    full, wall = _child_cost(argv, k, env)
    parts = [("interpreter start + finalization", base), ("imports", imported - base),
             ("wrapper + work", no_final - imported),
             ("finalization with the client", full - no_final)]
    _limit_rows(bench, "`ultra_rapid`", full, wall, harness_rate, parts)


def measure_warm(bench: Bench, endpoint: str) -> None:
    """Warm start against cold: the same ``ultra_rapid`` campaign with and without ``--warm``.

    Whole campaigns as a user runs them, interleaved: a warm campaign's runs include its cold
    controls (harness/warm.py), so the ratio is what ``--warm`` buys, not the best case.
    """
    runs, jobs = bench.sizes.warm_runs, bench.jobs
    args = ["--scenario", "ultra_rapid", "--strategy", bench.strategy, "--etcd", endpoint,
            "--runs", str(runs), "--jobs", str(jobs)]
    bench.log(f"warm start: preparing {bench.strategy}")
    _harness(bench, "warm-probe", [*args[:-4], "--runs", "2", "--warm"])
    bench.log(f"warm start: {bench.sizes.warm_reps} x (cold, warm) x {runs} runs of ultra_rapid")
    results = _interleaved(bench.sizes.warm_reps, {
        "cold": lambda: _harness(bench, "ultra-cold", args),
        "warm": lambda: _harness(bench, "ultra-warm", [*args, "--warm"]),
    })
    cold: list[HarnessRun] = results["cold"]
    warm: list[HarnessRun] = results["warm"]
    bench.raw["warm vs cold ultra_rapid"] = {
        name: [vars(h) | {"out": str(h.out)} for h in found] for name, found in results.items()}
    pairs = list(zip(cold, warm, strict=True))
    each = sorted(c.phase_s / w.phase_s for c, w in pairs)
    ratio = statistics.median(each)
    whole = statistics.median(c.wall_s / w.wall_s for c, w in pairs)
    rate = {name: statistics.median(h.runs / h.phase_s for h in found)
            for name, found in (("cold", cold), ("warm", warm))}
    starts: dict[str, list[float]] = {"warm": [], "cold": []}
    for h in warm:
        for record in _records(h.out):
            starts[record.get("start", "cold")].append(record["cpu_s"])
    controls = len(starts["cold"]) // len(warm)
    spread = f"{each[len(each) // 4]:.2f}-{each[(3 * len(each)) // 4]:.2f}"
    bench.rows.append(Row(
        f"throughput, `run --warm` vs cold, `ultra_rapid` on {bench.strategy} (median of "
        f"{len(each)} paired ratios of {runs} runs, {controls} of them cold controls; middle "
        f"half {spread}, lowest {each[0]:.2f})",
        f"{ratio:.2f}x ({rate['warm']:.1f}/s vs {rate['cold']:.1f}/s)",
        ">= 1.6x, never < 1.4x", ratio >= 1.6 and each[0] >= 1.4))
    bench.rows.append(Row(
        "the same, whole command (warm: fork servers start and import first)", f"{whole:.2f}x"))
    if starts["warm"] and starts["cold"]:
        warm_cpu = statistics.median(starts["warm"])
        cold_cpu = statistics.median(starts["cold"])
        bench.rows.append(Row(
            "child CPU per run in the warm campaigns (median), warm child vs cold control",
            f"{1e3 * warm_cpu:.1f} ms vs {1e3 * cold_cpu:.1f} ms ({cold_cpu / warm_cpu:.2f}x)"))


def _records(out: Path) -> Iterator[dict[str, Any]]:
    with (out / "results.jsonl").open() as f:
        for line in f:
            yield json.loads(line)


def _with_mode(argv: list[str], mode: str) -> list[str]:
    argv = list(argv)
    if "--mode" in argv:
        argv[argv.index("--mode") + 1] = mode
    else:
        argv += ["--mode", mode]
    return argv


def measure_verdict(bench: Bench, endpoint: str) -> None:
    """Wall time from the command's start until Fisher's p < 0.001 for 0.4.1 vs 0.5.1.

    Cold and with ``--warm``, interleaved, ``verdict_reps`` times each; the rows give the
    medians and their ratio.
    """
    old, new = bench.verdict_strategies
    what = ["--scenario", "concurrent_ops", "--strategy", f"{old},{new}", "--etcd", endpoint]
    bench.log(f"time to verdict: {old} vs {new} on concurrent_ops (cap {bench.sizes.verdict_cap})"
              f", {bench.sizes.verdict_reps} x (cold, warm)")
    # Build (or reuse) the virtualenvs first: the measure assumes they exist.
    _harness(bench, "verdict-warmup", [*what, "--runs", "1"])
    found = _interleaved(bench.sizes.verdict_reps, {
        "cold": lambda: _verdict_once(bench, what, warm=False),
        "warm": lambda: _verdict_once(bench, what, warm=True),
    })
    bench.raw["verdict"] = found
    name = f"time to verdict, {old} vs {new}, concurrent_ops, p < 0.001"
    medians = {}
    for start, label in (("cold", name), ("warm", "the same with `--warm`")):
        reached = [seconds for seconds, _ in found[start] if seconds is not None]
        seen = found[start][-1][1]
        reps = len(found[start])
        if len(reached) < reps:
            bench.rows.append(Row(label, f"not reached within {bench.sizes.verdict_cap} runs in "
                                         f"{reps - len(reached)} of {reps} ({seen})",
                                  "< 30 s", False))
            continue
        medians[start] = statistics.median(reached)
        many = f"median of {reps}, " if reps > 1 else ""
        bench.rows.append(Row(label, f"{medians[start]:.1f} s ({many}last: {seen})", "< 30 s",
                              medians[start] < 30))
    if len(medians) == 2:
        bench.rows.append(Row("time to verdict, cold / warm",
                              f"{medians['cold'] / medians['warm']:.2f}x"))


def _verdict_once(bench: Bench, what: list[str], warm: bool) -> tuple[float | None, str]:
    """One campaign, stopped (SIGINT: finished runs are kept) once p < SIGNIFICANCE.

    The harness runs with ``--until-halfwidth`` as a user would; this function watches
    results.jsonl. Returns the seconds to the verdict (None: not reached) and the counts.
    """
    from shutdown_harness.stats import compare

    old, new = bench.verdict_strategies
    out = bench.folder("verdict-warm" if warm else "verdict")
    usage = out.with_suffix(".usage.json")
    args = ["run", *what, "--runs", str(bench.sizes.verdict_cap), "--until-halfwidth", "0.02",
            "--out", str(out), *(["--warm"] if warm else [])]
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(MEASURED), str(usage), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=bench.scratch)
    counts = {old: [0, 0], new: [0, 0]}
    verdict_at: float | None = None
    p = 1.0
    offset = 0
    results = out / "results.jsonl"
    while proc.poll() is None and verdict_at is None:
        time.sleep(0.05)
        if not results.exists():
            continue
        with results.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.splitlines():
            record = json.loads(line)
            if record["category"] == "infra":
                continue
            counts[record["strategy"]][0] += record["category"] in ("crash", "error", "hang")
            counts[record["strategy"]][1] += 1
            (ko, no), (kn, nn) = counts[old], counts[new]
            p = compare(old, ko, no, new, kn, nn).p_value
            if p < SIGNIFICANCE and verdict_at is None:
                verdict_at = time.monotonic() - started
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    proc.wait()
    (ko, no), (kn, nn) = counts[old], counts[new]
    return verdict_at, f"{old} {ko}/{no} failed, {new} {kn}/{nn}; p = {p:.1e}"


# -- the table -------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    lines = ["| measurement | result | target | met |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples (1-2 minutes)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="parallelism of both the harness and xargs (default: CPUs)")
    parser.add_argument("--reps", type=int, help="repetitions of each interleaved comparison")
    parser.add_argument("--trivial-runs", type=int)
    parser.add_argument("--ultra-runs", type=int)
    parser.add_argument("--memory-runs", help="two campaign sizes, e.g. 1000,10000")
    parser.add_argument("--memory-child", choices=("python", "true"))
    parser.add_argument("--cost-runs", type=int, help="runs of each child for its own cost")
    parser.add_argument("--verdict-cap", type=int, help="--runs cap of the verdict campaign")
    parser.add_argument("--verdict-reps", type=int, help="verdict campaigns, cold and warm each")
    parser.add_argument("--warm-reps", type=int, help="repetitions of warm vs cold")
    parser.add_argument("--warm-runs", type=int, help="runs of each warm / cold campaign")
    parser.add_argument("--etcd", metavar="HOST:PORT", help="use this etcd (default: start one)")
    parser.add_argument("--only", default="startup,trivial,memory,ultra,warm,verdict",
                        help="comma-separated parts to run")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = replace(QUICK if args.quick else Sizes())
    for name in ("reps", "trivial_runs", "ultra_runs", "memory_child",
                 "cost_runs", "verdict_cap", "verdict_reps", "warm_reps", "warm_runs"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    if args.memory_runs:
        small, large = (int(x) for x in args.memory_runs.split(","))
        sizes.memory_runs = (small, large)
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if importlib.util.find_spec("shutdown_harness") is None:
        sys.stderr.write("bench/run.py: the harness is not installed in this Python "
                         f"({sys.executable}): run `nox -s bench`, or `pip install -e .` first\n")
        return 2
    parts = set(args.only.split(","))

    def log(text: str) -> None:
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shutdown-harness-bench-") as scratch:
        bench = Bench(_sizes(args), args.jobs, Path(scratch), log, etcd=args.etcd)
        if "startup" in parts:
            _guarded(bench, "start-up", lambda: measure_startup(bench))
            _guarded(bench, "instructions", lambda: measure_instructions(bench))
        if "trivial" in parts:
            measure_trivial(bench)
        if "memory" in parts:
            measure_memory(bench)
        if parts & {"ultra", "warm", "verdict"}:
            try:
                with _etcd(bench) as endpoint:
                    if "ultra" in parts:
                        _guarded(bench, "ultra_rapid", lambda: measure_ultra(bench, endpoint))
                    if "warm" in parts:
                        _guarded(bench, "warm start", lambda: measure_warm(bench, endpoint))
                    if "verdict" in parts:
                        _guarded(bench, "time to verdict",
                                 lambda: measure_verdict(bench, endpoint))
            except Exception as e:  # noqa: BLE001 - no etcd: say so in the table
                bench.rows.append(Row("scenarios on etcd", f"skipped: {e}".splitlines()[0]))
    print(table(bench.rows))
    cpus = len(os.sched_getaffinity(0))
    print(f"\n{cpus} CPUs, --jobs {args.jobs}, Python {sys.version.split()[0]}, "
          f"{'--quick, ' if args.quick else ''}{time.monotonic() - started:.0f} s; load average "
          f"at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(bench.raw, indent=2, default=str) + "\n")
    return 0 if all(row.met is not False for row in bench.rows) else 1


def _guarded(bench: Bench, name: str, measure: Callable[[], None]) -> None:
    try:
        measure()
    except Exception as e:  # noqa: BLE001 - one missing part must not hide the others
        bench.rows.append(Row(name, f"skipped: {str(e).strip().splitlines()[-1][:200]}"))
        bench.log(f"{name} skipped: {e}")


if __name__ == "__main__":
    sys.exit(main())
