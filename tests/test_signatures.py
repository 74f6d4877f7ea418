"""harness.signatures: the rules file, its coverage by real cases, and its normalizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shutdown_harness.classify import classify_file
from shutdown_harness.errors import UsageError
from shutdown_harness.schema import CATEGORIES, PHASES
from shutdown_harness.signatures import _rust_location, first_match, load_rules, rules, scrub

CORPUS = Path(__file__).parent / "fixtures" / "crashes"


def _corpus_verdicts() -> list[dict[str, object]]:
    return [classify_file(p) for p in sorted(CORPUS.glob("*.json"))]


def test_every_rule_has_a_real_case_in_the_corpus() -> None:
    verdicts = _corpus_verdicts()
    for rule in rules():
        hits = [v for v in verdicts if v["signature"] == rule.id
                or str(v["signature"]).startswith(rule.id + ":")]
        if rule.category == "infra":  # a hint, not a signature: the recorder needs evidence
            hits = [v for v in verdicts if any(rule.id in n for n in v["notes"] or ())]
        assert hits, f"rule {rule.id} has no corpus case"
        if rule.frames:  # the frames half of a rule needs its own case
            assert any(v["source"] == "backtrace" for v in hits), rule.id


def test_every_rule_explains_itself() -> None:
    for rule in rules():
        assert len(rule.explanation) > 30, rule.id


def test_specific_panics_win_over_the_generic_rust_panic() -> None:
    stderr = ("thread 'tokio-runtime-worker' panicked at /x/pyo3-0.26.0/src/interpreter_lifecycle"
              ".rs:117:13:\nThe Python interpreter is not initialized\n")
    match = first_match(stderr, "crash")
    assert match is not None and match.signature == "pyo3-attach-finalized-panic"


@pytest.mark.parametrize("what", ["Segmentation fault", "Aborted", "Bus error"])
def test_faulthandler_lines_are_not_a_fatal_python_error(what: str) -> None:
    stderr = f"Fatal Python error: {what}\n\nThread 0x00007f (most recent call first):\n"
    assert first_match(stderr, "crash") is None


def test_older_pyo3_drop_wording() -> None:
    # phrase quoted in bytecodealliance/componentize-py#157 (older PyO3 releases)
    stderr = "Cannot drop pointer into Python heap without the GIL being held\n"
    match = first_match(stderr, "crash")
    assert match is not None and match.signature == "pyo3-drop-without-attach-panic"


def test_python_exception_takes_the_last_traceback() -> None:
    stderr = ("Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n"
              "KeyError: 'x'\n\nDuring handling of the above exception, another exception "
              "occurred:\n\nTraceback (most recent call last):\n  File \"a.py\", line 3, in "
              "<module>\nmypkg.errors.Boom: no\n")
    match = first_match(stderr, "error")
    assert match is not None and match.signature == "python-exception:mypkg.errors.Boom"
    assert first_match(stderr, "crash") is None  # only for errors


def test_service_unreachable_only_counts_during_work() -> None:
    stderr = "etcd_client.GRPCStatusError: {'message': 'tcp connect error'}\n"
    assert first_match(stderr, "error", phase="work") is not None
    assert first_match(stderr, "error", phase="finalization") is None


@pytest.mark.parametrize("path, expected", [
    ("/Users/runner/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pyo3-0.26.0/src/"
     "interpreter_lifecycle.rs:117:13:", "pyo3/src/interpreter_lifecycle.rs"),
    (r"C:\Users\r\.cargo\registry\src\index.crates.io-1949cf8c6b5b557f\pyo3-0.27.2\src"
     r"\internal\state.rs:322:9", "pyo3/src/internal/state.rs"),
    ("/rustc/6b00bc3880198600130e1cf62b8f8a93494488cc/library/core/src/panicking.rs:218:5",
     "core/src/panicking.rs"),
    ("bindings/python/src/lib.rs:70:59", "python/src/lib.rs"),
    ("lib.rs:3", "lib.rs"),
])
def test_rust_location(path: str, expected: str) -> None:
    assert _rust_location(path) == expected


def test_scrub() -> None:
    assert scrub("thread state 0x7fec9803b600 line 42") == "thread state 0x? line N"


@pytest.mark.parametrize("body, message", [
    ('[[rule]]\nid = "a"\npattern = "("\n', "bad pattern regex"),
    ('[[rule]]\nid = "a"\n', "neither pattern nor frames"),
    ('[[rule]]\npattern = "x"\n', "has no id"),
    ('[[rule]]\nid = "a"\npattern = "x"\nsignature = "a:{nope}"\n', "unknown group nope"),
    ('[[rule]]\nid = "a"\npattern = "x"\n[[rule]]\nid = "a"\npattern = "y"\n', "duplicate ids a"),
    ('[[rule]]\nid = "a"\npattern = "x"\ncategories = ["crashes"]\n', "unknown category"),
    ('[[rule]\n', "not valid TOML"),
])
def test_bad_rules_file_is_a_usage_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(body)
    with pytest.raises(UsageError, match=message):
        load_rules(path)


def test_expected_signatures_in_corpus_are_stable_ids() -> None:
    ids = {r.id for r in rules()} | {"clean", "infra", "native-crash", "hang-at-exit",
                                     "hang-during-work"}
    for path in CORPUS.glob("*.json"):
        signature = json.loads(path.read_text())["expected"]["signature"]
        base = signature.split(":", 1)[0]
        assert base in ids or base.startswith(("unclassified-SIG", "exit-")), path.name


def test_fingerprint_keeps_where_stderr_says_the_run_died() -> None:
    from shutdown_harness.signatures import fingerprint

    a = ("Fatal Python error: Segmentation fault\n\nThread 0x00007f79b83dbb80 (most recent "
         "call first):\n  <no Python frame>\n")
    b = a.replace("7f79b83dbb80", "7f0000000001")
    c = ("Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f79 (most recent "
         "call first):\n  File \"/x/scenario.py\", line 12 in main\n")
    d = c.replace("line 12", "line 14").replace("0x00007f79", "0x00007f11")
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    assert fingerprint(c) == fingerprint(d) != fingerprint(c.replace("in main", "in work"))
    assert fingerprint("") == fingerprint("no fingerprint lines here")


def test_an_empty_stderr_is_matched_as_by_every_rule() -> None:
    # first_match looks only at the rules that can match an empty text when there is no
    # stderr and no backtrace (most runs): the answer must be the full scan's, for every
    # category and phase.
    for category in CATEGORIES:
        for phase in (None, *PHASES):
            assert first_match("", category, phase=phase) == \
                first_match("", category, rule_list=rules(), phase=phase)
