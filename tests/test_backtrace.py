"""harness.backtrace: parsing gdb output, crashing-thread selection, frame normalization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shutdown_harness.backtrace import (
    MAX_SIGNATURE,
    cap_signature,
    crashing_thread_frames,
    frame_signature,
    normalize_frame,
    parse_threads,
    significant_frames,
)

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
    ("#5  0x00007f0000001000 in ?? () from /usr/lib/libfoo.so.1", "libfoo.so.1"),
    ("#9  0x00007fb6c8a1b2c3 in ?? () from /v/lib/python3.11/site-packages/opendal/"
     "_opendal.abi3.so", "_opendal.abi3.so"),
    ("#12 0x000055 in alloc[c23e483dde3f7cfb]::sync::Arc<tokio[9a1b2c3d4e5f6a7b]::runtime::"
     "Handle>::drop_slow::h0123456789abcdef () at src/sync.rs:1",
     "alloc::sync::Arc<tokio::runtime::Handle>::drop_slow"),
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


def test_a_stripped_modules_frames_read_as_one_module() -> None:
    """A real opendal 0.47.12 crash (SIGSEGV in PyGILState_Ensure at exit): gdb shows five
    ``?? () from .../_opendal.abi3.so`` frames; the signature names the module once."""
    text = (CORPUS / "native-crash--opendal04712-gilstate-ensure-sigsegv.json").read_text()
    functions = crashing_thread_frames(str(json.loads(text)["backtrace"]))
    assert functions.count("_opendal.abi3.so") == 5
    assert significant_frames(functions) == [
        "new_threadstate", "PyThreadState_New", "PyGILState_Ensure", "_opendal.abi3.so"]


def test_faulthandlers_own_frames_are_skipped() -> None:
    functions = ["__pthread_kill_implementation", "<signal handler called>",
                 "_Py_DumpASCII", "dump_frame", "dump_traceback", "_Py_DumpTracebackThreads",
                 "faulthandler_fatal_error", "<signal handler called>", "tupledealloc",
                 "libfoo.so", "libfoo.so"]
    assert significant_frames(functions) == ["tupledealloc", "libfoo.so"]


def test_signatures_are_capped_at_a_frame_boundary() -> None:
    long_frame = "tokio::runtime::task::harness::Harness<" + "T," * 40 + "S>::poll"
    signature = "native-crash:" + " | ".join(["_PyObject_GC_UNTRACK", "method_dealloc",
                                              long_frame, "x"])
    assert cap_signature(signature) == "native-crash:_PyObject_GC_UNTRACK | method_dealloc"
    assert cap_signature("native-crash:" + long_frame).endswith("…")
    assert len(cap_signature("native-crash:" + long_frame)) == MAX_SIGNATURE
    assert cap_signature("pthread-exit-unwind-abort") == "pthread-exit-unwind-abort"
