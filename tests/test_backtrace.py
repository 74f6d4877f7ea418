"""harness.backtrace: parsing gdb output, frame normalization, core budget, real gdb runs."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from shutdown_harness.backtrace import (
    CoreBudget,
    core_dump_unavailable,
    crashing_thread_frames,
    find_core,
    frame_signature,
    gdb_available,
    normalize_frame,
    parse_threads,
    run_gdb,
    significant_frames,
)
from shutdown_harness.classify import classify, needs_backtrace

CORPUS = Path(__file__).parent / "fixtures" / "crashes"


def _backtrace(name: str) -> str:
    return str(json.loads((CORPUS / f"{name}.json").read_text())["backtrace"])


@pytest.mark.parametrize("line, expected", [
    ("#8  0x00007f44322f9922 in <pyo3_asyncio::tokio::TokioRuntime as pyo3_asyncio::generic::"
     "Runtime>::spawn::{{closure}}::he5ace491d146ae3f () from /tmp/v/etcd_client.so",
     "<pyo3_asyncio::tokio::TokioRuntime as pyo3_asyncio::generic::Runtime>::spawn::{{closure}}"),
    ("#4  0x00007f79b80bcacb in _PyObject_GC_UNTRACK (op=0x7f00, x=<optimized out>) at "
     "./Include/internal/pycore_object.h:171", "_PyObject_GC_UNTRACK"),
    ("#22 alloc::boxed::{impl#47}::call_once<(), dyn core::ops::function::FnOnce<(), Output=()>>"
     " () at library/alloc/src/boxed.rs:2015",
     "alloc::boxed::{impl#47}::call_once<(), dyn core::ops::function::FnOnce<(), Output=()>>"),
    ("#3  <signal handler called>", "<signal handler called>"),
    ("#5  0x00007f0000001000 in ?? () from /usr/lib/libfoo.so.1", "?? in libfoo.so.1"),
    ("#6  0x0000000000401000 in ?? ()", "??"),
    ("#2  0x00007f in gc_collect_main.isra.0 (tstate=...) at Modules/gcmodule.c:1226",
     "gc_collect_main"),
    ("tokio::runtime::task::harness::Harness<T,S>::poll::h29c55bb9672a6590",
     "tokio::runtime::task::harness::Harness<T,S>::poll"),
])
def test_normalize_frame(line: str, expected: str) -> None:
    assert normalize_frame(line) == expected


def test_crashing_thread_is_gdbs_current_thread() -> None:
    text = _backtrace("native-crash--etcd030-concurrent-ops-sigsegv")
    frames = crashing_thread_frames(text)
    assert frames[:4] == ["__pthread_kill_implementation", "__pthread_kill_internal",
                          "__GI_raise", "<signal handler called>"]
    assert significant_frames(frames)[:4] == [
        "_PyObject_GC_UNTRACK", "PyObject_GC_UnTrack", "tupledealloc",
        "pyo3::types::any::PyAny::call_method"]


def test_crashing_thread_from_thread_apply_all_only() -> None:
    text = _backtrace("pthread-exit-unwind-abort--etcd041-concurrent-ops")
    full = crashing_thread_frames(text)
    # drop the leading `bt`: only the `thread apply all bt` blocks and the current-thread line
    headed = text[text.index("\nThread "):]
    current = next(line for line in text.splitlines() if line.startswith("[Current thread"))
    other = "Thread 9 (Thread 0x7f00 (LWP 1)):\n#0  syscall () at x.S:38\n#1  0x1 in main ()\n"
    assert crashing_thread_frames(f"{current}\n{other}{headed}") == full
    assert crashing_thread_frames(f"{other}{headed}") == full  # by its signal-handler frame


def test_wrapped_gdb_lines_are_joined() -> None:
    text = ("Thread 1 (Thread 0x7f7 (LWP 5)):\n"
            "#0  0x000000000050bb1c in _PyEval_EvalFrame (throwflag=<optimized out>, \n"
            "    f=0x7f79239bccf0, tstate=0x7f77b8001ab0)\n"
            "    at /usr/local/src/conda/python-3.9.19/Include/internal/pycore_ceval.h:40\n"
            "#1  gen_send_ex (gen=0x7f79239d6ac0, arg=<optimized out>, \n"
            "    closing=<optimized out>) at Objects/genobject.c:215\n")
    assert [len(t.frames) for t in parse_threads(text)] == [2]
    assert crashing_thread_frames(text) == ["_PyEval_EvalFrame", "gen_send_ex"]


def test_frame_signature_continues_through_interpreter_frames() -> None:
    assert frame_signature(["a", "b", "c", "d"]) == "a | b | c"
    assert frame_signature(["_PyObject_GC_UNTRACK", "PyObject_GC_UnTrack", "tupledealloc",
                            "pyo3::call_method", "x"]) == \
        "_PyObject_GC_UNTRACK | PyObject_GC_UnTrack | tupledealloc | pyo3::call_method"
    assert frame_signature(["Py_A", "Py_B", "Py_C", "Py_D", "Py_E", "Py_F", "Py_G"]).count("|") == 5
    assert frame_signature([]) is None


def test_skip_list_removes_panic_and_abort_machinery() -> None:
    frames = ["__pthread_kill_implementation", "__GI_raise", "__GI_abort",
              "std::sys::pal::unix::abort_internal", "std::process::abort",
              "std::panicking::rust_panic_with_hook", "core::panicking::panic_fmt",
              "pyo3::gil::GILGuard::acquire", "pyo3::gil::GILGuard::acquire", "worker::run"]
    assert significant_frames(frames) == ["pyo3::gil::GILGuard::acquire", "worker::run"]


# --------------------------------------------------------------------------------------------
# CoreBudget


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_specific_signatures_get_exemplars_only() -> None:
    budget = CoreBudget(exemplars=2)
    decisions = []
    for _ in range(4):
        d = budget.decide("cell/gilstate", unspecific=False)
        decisions.append(d.analyse)
        if d.analyse:
            budget.record("cell/gilstate", "gilstate", None, 0.5)
    assert decisions == [True, True, False, False]
    assert budget.summary()["not_analysed"] == 2


def test_budget_unspecific_analysed_within_gdb_share_then_inferred() -> None:
    clock = _Clock()
    budget = CoreBudget(exemplars=2, max_gdb_share=0.25, clock=clock)
    key = "cell/unclassified-SIGABRT"
    analysed = 0
    for _ in range(10):
        clock.now += 1.0  # a run finishes every second; gdb takes 0.6 s
        if budget.decide(key, unspecific=True).analyse:
            budget.record(key, "pthread-exit-unwind-abort", ["take_gil"], 0.6)
            analysed += 1
    assert 2 <= analysed < 10  # the share caps gdb time
    assert budget.summary()["gdb_seconds"] <= 0.25 * clock.now + 0.6
    v = classify(returncode=-6, stderr="Fatal Python error: Aborted\n")
    assert needs_backtrace(v)
    inferred = budget.infer(key, v)
    assert inferred.signature == "pthread-exit-unwind-abort"
    assert inferred.source == "inferred"
    assert any("inferred from" in n for n in inferred.notes)


def test_budget_does_not_infer_when_exemplars_disagree() -> None:
    budget = CoreBudget(exemplars=2)
    budget.record("k", "native-crash:a", ["a"], 0.1)
    budget.record("k", "native-crash:b", ["b"], 0.1)
    v = classify(returncode=-11, stderr="")
    assert budget.infer("k", v).signature == "unclassified-SIGSEGV"
    assert budget.infer("unknown-key", v).signature == "unclassified-SIGSEGV"


def test_budget_keeps_few_cores_and_bounded_bytes() -> None:
    budget = CoreBudget(keep_cores=1, max_core_bytes=100)
    assert budget.keep_core("k", "s1", 60)
    assert not budget.keep_core("k", "s1", 10)  # one per signature
    assert not budget.keep_core("k", "s2", 50)  # would pass the byte cap
    assert budget.keep_core("k", "s3", 40)


# --------------------------------------------------------------------------------------------
# real gdb on a real core


def _no_core_reason() -> str | None:
    return gdb_available() or core_dump_unavailable()


@pytest.mark.skipif(_no_core_reason() is not None, reason=str(_no_core_reason()))
def test_run_gdb_on_a_real_segfault_core(tmp_path: Path) -> None:
    def cores_on() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c",
                           "import ctypes; ctypes.string_at(0)"],
                          cwd=tmp_path, capture_output=True, text=True, preexec_fn=cores_on,
                          timeout=60)
    assert proc.returncode == -11
    core = find_core(tmp_path, None)
    assert core is not None
    # sys.executable is a venv symlink: run_gdb must follow it to the real binary
    text = run_gdb(core, Path(sys.executable), timeout=120)
    assert "Program terminated with signal SIGSEGV" in text
    frames = crashing_thread_frames(text)
    assert "<signal handler called>" in frames
    v = classify(returncode=proc.returncode, stderr=proc.stderr, backtrace=text)
    assert v.signature.startswith("native-crash:") and v.source == "frames"
    assert "0x" not in v.signature and v.frames


def test_run_gdb_reports_a_bad_core_in_one_line(tmp_path: Path) -> None:
    if gdb_available() is not None:
        pytest.skip(str(gdb_available()))
    bogus = tmp_path / "core"
    bogus.write_bytes(b"not a core")
    with pytest.raises(RuntimeError, match="gdb gave no backtrace"):
        run_gdb(bogus, Path(os.path.realpath(sys.executable)), timeout=60)


def test_core_budget_counts_analyses_still_in_flight() -> None:
    # gdb runs in the background: decisions made before any result comes back count too,
    # or every crash of a burst would be taken for one of the first exemplars.
    budget = CoreBudget(exemplars=3)
    decisions = [budget.decide("cell/gilstate", unspecific=False) for _ in range(5)]
    assert [d.analyse for d in decisions] == [True, True, True, False, False]
    budget.abandon("cell/gilstate")  # one gdb failed: its place is free again
    assert budget.decide("cell/gilstate", unspecific=False).analyse
