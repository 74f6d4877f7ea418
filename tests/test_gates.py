from __future__ import annotations

import io
from pathlib import Path

import pytest
from fixtures.campaigns import synth
from shutdown_harness.aggregate import load_campaign
from shutdown_harness.errors import UsageError
from shutdown_harness.gates import evaluate, parse_gates, unmatched
from shutdown_harness.reports import report_command


@pytest.fixture(scope="module")
def agg(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("c")
    synth.make_campaign(d, [
        synth.CellSpec("puts", "etcd-0.4.1", 300, {"pthread-exit-unwind-abort": 80,
                                                  "hang-at-exit": 2}),
        synth.CellSpec("puts", "etcd-0.5.1", 300, {}),
        synth.CellSpec("watch", "etcd-0.5.1", 2000, {}),
    ])
    return load_campaign(d)


def _results(agg, table):  # type: ignore[no-untyped-def]
    return {(r.cell.scenario, r.cell.strategy, r.threshold): r.passed
            for r in evaluate(agg, table)}


def test_max_upper_needs_enough_clean_runs(agg) -> None:  # type: ignore[no-untyped-def]
    # 0/300 -> upper bound 1.3%; 0/2000 -> 0.19%
    assert _results(agg, {"etcd-0.5.1": {"max_upper": 0.005}}) == {
        ("puts", "etcd-0.5.1", "max_upper"): False, ("watch", "etcd-0.5.1", "max_upper"): True}


def test_thresholds_filters_and_lists(agg) -> None:  # type: ignore[no-untyped-def]
    table = {
        "etcd-0.4.*": [{"min_lower": 0.2, "scenario": "puts"},
                       {"max_failures": 0, "signature": "hang-*"}],
        "*": {"min_runs": 1000},
    }
    assert _results(agg, table) == {
        ("puts", "etcd-0.4.1", "min_lower"): True,       # 82/300 -> lower bound 22.6%
        ("puts", "etcd-0.4.1", "max_failures"): False,   # 2 hangs
        ("puts", "etcd-0.4.1", "min_runs"): False,
        ("puts", "etcd-0.5.1", "min_runs"): False,
        ("watch", "etcd-0.5.1", "min_runs"): True,
    }
    (hang,) = [r for r in evaluate(agg, table) if r.threshold == "max_failures"]
    assert hang.message == "2 hang-* failures in 300 runs, at most 0 allowed"
    assert _results(agg, {"etcd-0.4.1": {"max_rate": 0.3}}) == {
        ("puts", "etcd-0.4.1", "max_rate"): True}


def test_unmatched_gate_is_reported_not_failed(agg) -> None:  # type: ignore[no-untyped-def]
    table = {"etcd-9.9": {"max_upper": 0.01}}
    assert evaluate(agg, table) == []
    assert [g.pattern for g in unmatched(agg, table)] == ["etcd-9.9"]


@pytest.mark.parametrize(("table", "message"), [
    ({"a": {"max_uper": 0.1}}, "unknown key"),
    ({"a": {"scenario": "x"}}, "no threshold"),
    ({"a": {"max_upper": 5}}, "is a fraction"),
    ({"a": {"max_upper": "1%"}}, "must be a number"),
    ({"a": 0.1}, "expected a table"),
])
def test_bad_gate_config(table, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message):
        parse_gates(table)


def test_report_exits_1_when_a_pyproject_gate_fails(tmp_path: Path) -> None:
    campaign = synth.two_version_campaign(tmp_path / "c")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.shutdown-harness.gates]\n"etcd-0.5.1" = { max_upper = 0.005 }\n')
    out = io.StringIO()
    assert report_command(campaign, "markdown", config=pyproject, stream=out) == 0
    assert "✅ upper 95% bound of the failure rate is 0.20% (0/2000)" in out.getvalue()
    pyproject.write_text('[tool.shutdown-harness.gates]\n"etcd-0.5.1" = { max_upper = 0.001 }\n')
    assert report_command(campaign, "junit", config=pyproject, stream=io.StringIO()) == 1


def test_no_gate_passes_on_warm_numbers_that_differ_from_cold() -> None:
    from fixtures.campaigns import synth
    from shutdown_harness.aggregate import aggregate

    records = []
    for i in range(220):
        start = "cold" if i % 10 == 0 else "warm"
        failed = start == "cold" and i < 150  # cold crashes 15/22, warm never
        rec = synth.record("s", "a", i, "pthread-exit-unwind-abort" if failed else None)
        records.append(rec | {"start": start})
    agg = aggregate(records)
    results = evaluate(agg, {"a": {"max_failures": 100}})
    assert [(g.threshold, g.passed) for g in results] == [
        ("max_failures", True), ("fidelity", False)]
    assert "warm and cold runs differ" in results[1].message


def test_runs_to_pass_is_the_fewest_runs_that_can_pass() -> None:
    from shutdown_harness.gates import runs_to_pass
    from shutdown_harness.stats import wilson_interval

    for bound in (0.5, 0.2, 0.05, 0.01, 0.001):
        n = runs_to_pass("max_upper", bound)
        assert n is not None
        assert wilson_interval(0, n)[1] < bound <= wilson_interval(0, n - 1)[1]
    assert runs_to_pass("max_upper", 0.05) == 73  # 40 clean runs bound the rate at 8.8%
    n = runs_to_pass("min_lower", 0.5)
    assert n is not None and wilson_interval(n, n)[0] > 0.5 >= wilson_interval(n - 1, n - 1)[0]
    assert runs_to_pass("min_runs", 30) == 30 and runs_to_pass("max_failures", 0) == 0
    assert runs_to_pass("max_upper", 0) is None


def test_a_gate_that_cannot_pass_is_said_before_any_run() -> None:
    from shutdown_harness.gates import unreachable

    gates = {"etcd-*": [{"max_upper": 0.05, "scenario": "ops"}, {"max_failures": 0}]}
    lines = unreachable(gates, [("ops", "etcd-0.5.1", 40), ("ops", "etcd-0.4.1", 100),
                                ("watch", "etcd-0.5.1", 10), ("ops", "other", 1)])
    assert lines == ["gate max_upper = 0.05 (strategy etcd-*, scenario ops) cannot pass for"
                     " ops / etcd-0.5.1 with 40 runs: it needs 73 runs without a failure"]
