"""harness.classify: the exit taxonomy, the corpus of real crashes, real synthetic children."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shutdown_harness import MARKER
from shutdown_harness.classify import classify, classify_file, needs_backtrace, signal_name
from shutdown_harness.errors import UsageError

CORPUS = Path(__file__).parent / "fixtures" / "crashes"
CASES = sorted(CORPUS.glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_corpus_case_gets_its_expected_verdict(path: Path) -> None:
    expected = json.loads(path.read_text())["expected"]
    verdict = classify_file(path)
    assert {key: verdict[key] for key in expected} == expected
    assert verdict["notes"] is not None


def test_corpus_covers_every_exit_kind() -> None:
    categories = {json.loads(p.read_text())["expected"]["category"] for p in CASES}
    assert categories == {"clean", "crash", "error", "hang", "infra"}


def _scramble(text: str, seed: int) -> str:
    """The same crash on another run: other addresses, thread ids, LWPs, pids."""
    rnd = random.Random(seed)
    text = re.sub(r"0x[0-9a-f]{6,16}", lambda m: hex(rnd.getrandbits(47)), text)
    return re.sub(r"(LWP|pid=?) ?(\d+)", lambda m: f"{m.group(1)} {rnd.randint(100, 99999)}", text)


@pytest.mark.parametrize("name", [
    "native-crash--etcd030-concurrent-ops-sigsegv",
    "pthread-exit-unwind-abort--etcd041-concurrent-ops",
    "gilstate-release-not-current--etcd030-concurrent-ops",
])
def test_same_crash_site_gives_the_same_signature_on_every_run(name: str) -> None:
    case = json.loads((CORPUS / f"{name}.json").read_text())
    signatures = set()
    for seed in range(20):
        verdict = classify(returncode=case["returncode"], stderr=_scramble(case["stderr"], seed),
                           stdout=case["stdout"], backtrace=_scramble(case["backtrace"], seed))
        signatures.add(verdict.signature)
    assert signatures == {case["expected"]["signature"]}


def test_signatures_hold_no_run_specific_parts() -> None:
    for path in CASES:
        signature = classify_file(path)["signature"]
        leak = re.search(r"0x[0-9a-fA-F]|\.rs:\d|/tmp/|/home/|/Users/|LWP|\(\d+\)", signature)
        assert leak is None, (path.name, signature)


# --------------------------------------------------------------------------------------------
# exit taxonomy


def test_clean_exit() -> None:
    v = classify(returncode=0, stderr="", stdout=f"{MARKER}\n")
    assert (v.category, v.outcome, v.signature, v.phase, v.signal) == \
        ("clean", "clean", "clean", "finalization", None)


def test_negative_returncode_is_a_signal() -> None:
    v = classify(returncode=-11, stderr="", stdout=f"{MARKER}\n")
    assert (v.category, v.outcome, v.signal, v.signature) == \
        ("crash", "signal:SIGSEGV", "SIGSEGV", "unclassified-SIGSEGV")
    assert needs_backtrace(v)
    assert any("no native backtrace" in n for n in v.notes)


def test_shell_style_128_plus_n_is_a_signal() -> None:
    v = classify(returncode=134, stderr="")
    assert (v.category, v.outcome, v.signal) == ("crash", "signal:SIGABRT", "SIGABRT")
    assert any("128+6" in n for n in v.notes)


def test_plain_nonzero_exit() -> None:
    v = classify(returncode=3, stderr="warning: something\n")
    assert (v.category, v.outcome, v.signature, v.phase) == ("error", "exit:3", "exit-3", "work")


def test_missing_process_is_infra() -> None:
    v = classify(returncode=None, stderr="")
    assert (v.category, v.outcome, v.signature, v.phase) == ("infra", "infra", "infra", "unknown")


@pytest.mark.parametrize("stdout, work_done, signature, phase", [
    (f"{MARKER}\n", None, "hang-at-exit", "finalization"),
    ("", None, "hang-during-work", "work"),
    ("", True, "hang-at-exit", "finalization"),
    (f"{MARKER}\n", False, "hang-during-work", "work"),
])
def test_timeouts_split_by_the_marker(stdout: str, work_done: bool | None, signature: str,
                                      phase: str) -> None:
    v = classify(returncode=-9, stderr="", stdout=stdout, timed_out=True, work_done=work_done)
    assert (v.category, v.outcome, v.signature, v.phase) == ("hang", "timeout", signature, phase)


def test_a_child_without_marker_has_unknown_phase() -> None:
    v = classify(returncode=-6, stderr="", marker_expected=False)
    assert v.phase == "unknown"


def test_unknown_signal_number_still_named() -> None:
    assert signal_name(6) == "SIGABRT"
    assert signal_name(99) == "SIG99"
    assert classify(returncode=-99, stderr="").signature == "unclassified-SIG99"


def test_reason_for_missing_backtrace_reaches_the_notes() -> None:
    v = classify(returncode=-6, stderr="", backtrace_unavailable="core_pattern is a pipe to x")
    assert "no native backtrace: core_pattern is a pipe to x" in v.notes
    assert v.to_dict()["notes"] == v.notes


def test_classify_is_fast_enough_for_the_hot_loop() -> None:
    path = CORPUS / "pthread-exit-unwind-abort--etcd041-concurrent-ops.json"
    case = json.loads(path.read_text())
    start = time.perf_counter()
    for _ in range(200):
        classify(returncode=case["returncode"], stderr=case["stderr"], stdout=case["stdout"])
    assert (time.perf_counter() - start) / 200 < 0.005  # ~0.1 ms here
    start = time.perf_counter()
    for _ in range(50):
        classify(returncode=case["returncode"], stderr=case["stderr"], stdout=case["stdout"],
                 backtrace=case["backtrace"])
    assert (time.perf_counter() - start) / 50 < 0.05  # ~4 ms here, next to gdb's 600 ms


def test_huge_stderr_is_bounded_but_keeps_head_and_tail() -> None:
    noise = "x" * 99 + "\n"
    stderr = ("Fatal Python error: PyGILState_Release: thread state 0x1 must be current when "
              "releasing\n" + noise * 50_000 + "Traceback (most recent call last):\nOSError: x\n")
    start = time.perf_counter()
    crash = classify(returncode=-6, stderr=stderr)
    error = classify(returncode=1, stderr=stderr)
    assert time.perf_counter() - start < 2
    assert crash.signature == "gilstate-release-not-current"
    assert error.exception == "OSError: x"
    assert any("matched its first and last" in n for n in crash.notes)


# --------------------------------------------------------------------------------------------
# classify FILE.json input errors


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"stderr": ""}', "missing key 'returncode'"),
    ('{"returncode": "x", "stderr": ""}', "must be an integer"),
    ('{"returncode": 1, "stderr": 5}', "'stderr' must be a string"),
])
def test_classify_file_rejects_bad_input(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "run.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        classify_file(path)


def test_classify_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        classify_file(tmp_path / "absent.json")


# --------------------------------------------------------------------------------------------
# real processes that really die


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("code, category, outcome, signature, phase", [
    (f"import os; print({MARKER!r}, flush=True); os.abort()",
     "crash", "signal:SIGABRT", "unclassified-SIGABRT", "finalization"),
    ("import ctypes; ctypes.string_at(0)",
     "crash", "signal:SIGSEGV", "unclassified-SIGSEGV", "work"),
    ("raise ValueError('bad value 42')",
     "error", "exception:ValueError", "python-exception:ValueError", "work"),
    ("import sys; sys.exit(3)", "error", "exit:3", "exit-3", "work"),
    # An uncaught KeyboardInterrupt makes Python kill itself with SIGINT: not a crash.
    ("import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(5)",
     "error", "exception:KeyboardInterrupt", "python-exception:KeyboardInterrupt", "work"),
    ("import ctypes; ctypes.pythonapi._Py_FatalErrorFunc(b'my_func', b'gave up')",
     "crash", "signal:SIGABRT", "fatal-python-error:my_func", "work"),
    (f"print({MARKER!r})", "clean", "clean", "clean", "finalization"),
])
def test_real_child_end_to_end(code: str, category: str, outcome: str, signature: str,
                               phase: str) -> None:
    proc = _run(code)
    v = classify(returncode=proc.returncode, stderr=proc.stderr, stdout=proc.stdout)
    assert (v.category, v.outcome, v.signature, v.phase) == (category, outcome, signature, phase)
    if signature == "python-exception:ValueError":
        assert v.exception == "ValueError: bad value 42"


def test_connection_refused_alone_is_an_error_not_infra() -> None:
    # Stand-alone (classify FILE.json) there is no evidence that the service failed.
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "ConnectionRefusedError: [Errno 111] Connection refused\n")
    v = classify(returncode=1, stderr=stderr, work_done=False)
    assert (v.category, v.signature) == ("error", "python-exception:ConnectionRefusedError")
    assert any("service unreachable" in n for n in v.notes)
