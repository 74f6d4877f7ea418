"""Exit -> verdict: what ended a child, in which phase, and which known crash family it is.

`classify` is a pure function of what the engine saw (return code, stderr, stdout, timeout,
the work-done marker, optionally gdb's backtrace text); it runs for every run, so it does no
I/O and its regexes are compiled once. The crash-family knowledge lives in
`harness/data/signatures.toml` (`harness.signatures`) and the frame lists of
`harness.backtrace`, the record's vocabulary and `Verdict` in `harness.schema`; this module
only decides the order in which they are consulted:

1. category and outcome from the exit: infra (no process), hang (timed out), crash (a signal,
   also shell-style 128+N), error (non-zero exit), clean;
2. phase from the work-done marker: work / finalization / unknown;
3. signature: hangs are `hang-at-exit` / `hang-during-work`; otherwise the first rule of the
   data file that matches stderr (or the crashing thread's frames), else for a crash the
   normalized native frames (`native-crash:f1 | f2 | f3`), else `unclassified-<SIGNAL>`;
   `python-exception:<Type>` / `exit-<N>` for errors; `clean`.
Every step that mattered adds a note, so a record explains where its signature came from.
"""

from __future__ import annotations

import json
import signal as _signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from shutdown_harness import MARKER
from shutdown_harness.backtrace import (
    cap_signature,
    crashing_thread_frames,
    frame_signature,
    significant_frames,
)
from shutdown_harness.errors import UsageError
from shutdown_harness.schema import Verdict
from shutdown_harness.signatures import first_match, rule_by_id, rules

__all__ = [
    "SERVICE_HINT",
    "service_hint",
    "classify",
    "classify_file",
    "needs_backtrace",
    "signal_name",
]

#: How many normalized frames a verdict keeps for the record (the signature uses fewer).
_RECORD_FRAMES = 8
_MAX_EXCEPTION = 300
_SHELL_SIGNAL_BASE = 128
#: stderr beyond this is cut to its head and tail (halves) before matching: rules look for
#: the first fatal message and the last traceback, and a runaway child must not slow the loop.
_STDERR_WINDOW = 256 * 1024


def signal_name(number: int) -> str:
    """``6`` -> ``SIGABRT``; an unknown number -> ``SIG<n>``."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _is_signal(number: int) -> bool:
    try:
        _signal.Signals(number)
    except ValueError:
        return False
    return True


def _phase(work_done: bool | None, stdout: str, marker_expected: bool) -> str:
    if work_done is None:
        if MARKER in stdout:
            return "finalization"
        return "work" if marker_expected else "unknown"
    return "finalization" if work_done else "work"


def _exit(returncode: int | None, timed_out: bool) -> tuple[str, str, str | None, list[str]]:
    """category, outcome, signal name and notes from how the process ended."""
    if returncode is None:
        return "infra", "infra", None, ["no process exit status: the harness or a service failed"]
    if timed_out:
        sig = signal_name(-returncode) if returncode < 0 else None
        return "hang", "timeout", sig, []
    if returncode < 0:
        sig = signal_name(-returncode)
        return "crash", f"signal:{sig}", sig, []
    if _SHELL_SIGNAL_BASE < returncode < _SHELL_SIGNAL_BASE + 65 and \
            _is_signal(returncode - _SHELL_SIGNAL_BASE):
        sig = signal_name(returncode - _SHELL_SIGNAL_BASE)
        note = (f"exit status {returncode} read as a shell's 128+{returncode - 128}: "
                f"the process died by {sig}")
        return "crash", f"signal:{sig}", sig, [note]
    if returncode == 0:
        return "clean", "clean", None, []
    return "error", f"exit:{returncode}", None, []


#: The note that starts when stderr shows the service unreachable (a rule of category infra).
SERVICE_HINT = "stderr shows the service unreachable"


def service_hint(notes: list[str] | tuple[str, ...] | None) -> bool:
    """Whether a verdict's notes say its stderr showed the service unreachable."""
    return any(note.startswith(SERVICE_HINT) for note in notes or ())


def classify(
    *,
    returncode: int | None,
    stderr: str,
    stdout: str = "",
    timed_out: bool = False,
    work_done: bool | None = None,
    backtrace: str | None = None,
    marker_expected: bool = True,
    backtrace_unavailable: str | None = None,
) -> Verdict:
    """Classify one finished run.

    ``returncode`` None means no process ran (infra). ``work_done`` None means: look for
    `harness.MARKER` in ``stdout``; a child that never prints the marker (``--command``)
    passes ``marker_expected=False`` and gets phase ``unknown``. ``backtrace`` is gdb's text
    for the run's core, if one was analysed; ``backtrace_unavailable`` says why there is none
    (it becomes a note on crashes whose stderr is not specific).
    """
    category, outcome, sig, notes = _exit(returncode, timed_out)
    if len(stderr) > _STDERR_WINDOW:
        half = _STDERR_WINDOW // 2
        notes.append(f"stderr of {len(stderr)} characters: matched its first and last {half}")
        stderr = stderr[:half] + "\n" + stderr[-half:]
    phase = _phase(work_done, stdout, marker_expected) if category != "infra" else "unknown"
    if phase == "unknown" and category != "infra":
        notes.append("no work-done marker expected: phase unknown")
    verdict = Verdict(category, outcome, category, phase, sig, None, None, notes, "exit")

    if category == "infra":
        return verdict
    if category == "hang":
        return _hang(verdict, stderr)

    if category in ("error", "crash") and "Traceback" in stderr:
        exception = first_match(stderr, "error", rule_list=(rule_by_id("python-exception"),))
        if exception is not None and sig == "SIGINT" and \
                exception.groups.get("type") == "KeyboardInterrupt":
            # Python re-raises SIGINT on itself after an uncaught KeyboardInterrupt (3.8+):
            # the death is the program's own exception, not a crash.
            category = "error"
            verdict = replace(verdict, category="error").with_note(
                "died by SIGINT after an uncaught KeyboardInterrupt: counted as an exception")
        if exception is not None:
            verdict = _exception(verdict, exception.groups, as_outcome=category == "error")
    functions = crashing_thread_frames(backtrace) if backtrace and category == "crash" else []
    match = first_match(stderr, category, functions, phase=phase)
    if match is not None and match.rule.category == "infra":
        # Stderr alone is no evidence that the service failed (a client that cannot connect
        # to a healthy server fails on its own): the run keeps its real signature, and only
        # the recorder, which checks the service, makes it infra (see service_hint).
        verdict = verdict.with_note(f"{SERVICE_HINT}: {match.rule.id} (infra only with evidence"
                                    " that the service failed)")
        match = first_match(stderr, category, functions, phase=phase,
                            rule_list=[r for r in rules() if r.category != "infra"])
    if match is not None:
        verdict = replace(verdict, signature=cap_signature(match.signature),
                          source=match.source)
        verdict = verdict.with_note(f"signature from {match.source} rule {match.rule.id}")
        if category == "clean":
            verdict = verdict.with_note(f"exited 0, but stderr shows {match.rule.id}")
    elif category == "error":  # a clean run's signature is already "clean" (its category)
        verdict = replace(verdict, signature=f"exit-{returncode}")
    if category != "crash":
        return verdict

    significant = significant_frames(functions) if functions else []
    if significant:
        verdict = replace(verdict, frames=significant[:_RECORD_FRAMES])
    if match is not None:
        return verdict
    from_frames = frame_signature(significant)
    if from_frames is not None:
        signature = cap_signature(f"native-crash:{from_frames}")
        return replace(verdict, signature=signature, source="frames") \
            .with_note("signature from the crashing thread's normalized native frames")
    verdict = replace(verdict, signature=f"unclassified-{sig}", source="none")
    if backtrace:
        return verdict.with_note("backtrace has no usable frames for the crashing thread")
    why = backtrace_unavailable or "no core analysed for this run"
    return verdict.with_note(f"no native backtrace: {why}")


def _hang(verdict: Verdict, stderr: str) -> Verdict:
    at_exit = verdict.phase == "finalization"
    verdict = replace(verdict, signature="hang-at-exit" if at_exit else "hang-during-work")
    match = first_match(stderr, "hang")
    if match is not None:
        verdict = verdict.with_note(f"stderr also shows {match.signature}")
    return verdict


def _exception(verdict: Verdict, groups: dict[str, str], *, as_outcome: bool) -> Verdict:
    exc_type = groups.get("type", "?")
    message = groups.get("message", "").strip()
    text = f"{exc_type}: {message}" if message else exc_type
    if len(text) > _MAX_EXCEPTION:
        text = text[:_MAX_EXCEPTION - 3] + "..."
    if as_outcome:
        return replace(verdict, exception=text, outcome=f"exception:{exc_type}")
    return verdict.with_note(f"an uncaught {exc_type} preceded the signal", exception=text)


def needs_backtrace(verdict: Verdict) -> bool:
    """Whether analysing this run's core could name its crash better.

    True for crashes whose signature came from nothing specific (``unclassified-<SIGNAL>``:
    a silent SIGABRT, a SIGSEGV with only faulthandler's dump). A stderr rule or frames
    already in the verdict make a core analysis optional (exemplars only).
    """
    return verdict.category == "crash" and verdict.source == "none"


def classify_file(path: Path) -> dict[str, Any]:
    """`shutdown-harness classify FILE.json`: the verdict for one saved run, as a dict."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object with returncode and stderr")
    if "returncode" not in data:
        raise UsageError(f"{path}: missing key 'returncode'")
    returncode = data["returncode"]
    if returncode is not None and (isinstance(returncode, bool) or not isinstance(returncode, int)):
        raise UsageError(f"{path}: 'returncode' must be an integer or null")
    for key, kind in (("stderr", str), ("stdout", str), ("backtrace", str)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise UsageError(f"{path}: {key!r} must be a string")
    for key in ("timed_out", "work_done"):
        if data.get(key) is not None and not isinstance(data[key], bool):
            raise UsageError(f"{path}: {key!r} must be true or false")
    verdict = classify(
        returncode=returncode,
        stderr=data.get("stderr") or "",
        stdout=data.get("stdout") or "",
        timed_out=bool(data.get("timed_out", False)),
        work_done=data.get("work_done"),
        backtrace=data.get("backtrace"),
        marker_expected="stdout" in data or "work_done" in data,
    )
    return verdict.to_dict()
