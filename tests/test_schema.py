"""harness.schema: the record's vocabulary is the one the classifier and the recorder write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from shutdown_harness.classify import classify, classify_file
from shutdown_harness.schema import (
    CATEGORIES,
    FAILURE_CATEGORIES,
    OPTIONAL_FIELDS,
    OUTCOMES,
    PHASES,
    REQUIRED_FIELDS,
    SOURCES,
    Verdict,
    counts_for_rate,
    is_failure,
    record_fields,
)

CASES = sorted((Path(__file__).parent / "fixtures" / "crashes").glob("*.json"))
_OUTCOME = re.compile("|".join(
    re.escape(form).replace(re.escape("<NAME>"), r"SIG\w+").replace(re.escape("<N>"), r"-?\d+")
    .replace(re.escape("<Type>"), r"[\w.]+") for form in OUTCOMES))


def test_on_disk_values_are_the_design_contract() -> None:
    # DESIGN.md "Run record": these strings are in users' results.jsonl files.
    assert CATEGORIES == ("clean", "crash", "error", "hang", "infra")
    assert FAILURE_CATEGORIES == ("crash", "error", "hang")
    assert PHASES == ("work", "finalization", "unknown")
    assert [c for c in CATEGORIES if is_failure(c)] == list(FAILURE_CATEGORIES)
    assert [c for c in CATEGORIES if not counts_for_rate(c)] == ["infra"]
    assert {"run_id", "category", "outcome", "signature", "phase", "stderr_tail"} <= \
        set(REQUIRED_FIELDS)
    assert not set(REQUIRED_FIELDS) & set(OPTIONAL_FIELDS)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_corpus_verdict_speaks_the_schema(path: Path) -> None:
    verdict = classify_file(path)
    assert verdict["category"] in CATEGORIES
    assert verdict["phase"] in PHASES
    assert verdict["source"] in SOURCES
    assert _OUTCOME.fullmatch(verdict["outcome"]), verdict["outcome"]


def test_record_fields_are_schema_fields() -> None:
    case = json.loads(CASES[0].read_text())
    fields = record_fields(classify(returncode=-6, stderr=case["stderr"]))
    assert set(fields) <= set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
    bare = record_fields(Verdict("clean", "clean", "clean", "work"))
    assert "notes" not in bare and "frames" not in bare and bare["signature_source"] == "exit"
