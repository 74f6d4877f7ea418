from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.campaigns import synth
from shutdown_harness.aggregate import iter_records, load_campaign, load_label
from shutdown_harness.errors import UsageError


def test_cells_count_failures_over_non_infra_runs(tmp_path: Path) -> None:
    agg = load_campaign(synth.two_version_campaign(tmp_path, torn_tail=True))
    old, new = agg.cells
    assert (old.strategy, old.runs, old.failures, old.infra) == ("etcd-0.4.1", 2000, 412, 3)
    assert (new.strategy, new.runs, new.failures) == ("etcd-0.5.1", 2000, 0)
    assert [s.signature for s in old.top_signatures()] == [
        "pthread-exit-unwind-abort", "gilstate-release-not-current"]
    assert old.signature_rate("gilstate-release-not-current")[:2] == (12, 2000)
    assert old.categories == {"crash": 412, "clean": 1588, "infra": 3}
    # the exemplar is the run that kept its artifacts
    assert old.signatures["pthread-exit-unwind-abort"].exemplar["artifacts"]  # type: ignore[index]
    assert any("torn last line" in n for n in agg.notes)
    assert any("3 infra runs" in n for n in agg.notes)
    (cmp,) = agg.comparisons
    assert (cmp.comparison.a, cmp.comparison.b) == ("etcd-0.4.1", "etcd-0.5.1")
    assert cmp.comparison.p_value < 1e-100
    json.dumps(agg.to_dict(), allow_nan=False)


def test_malformed_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    good = json.dumps(synth.record("s", "a", 0))
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(UsageError, match="results.jsonl:2"):
        list(iter_records(tmp_path))
    path.write_text(f"{good}\n{good[:-5]}")
    notes: list[str] = []
    assert len(list(iter_records(tmp_path, notes))) == 1 and notes


def test_runs_under_different_load_are_never_pooled(tmp_path: Path) -> None:
    busy = {"jobs": 8, "cpus": 2, "jobs_per_cpu": 4.0, "pin": None, "exit_delay": 0.0}
    synth.make_campaign(tmp_path, [
        synth.CellSpec("s", "old", 100, {"native-crash": 10}),
        synth.CellSpec("s", "old", 100, {"native-crash": 40}, load=busy, first_index=100),
        synth.CellSpec("s", "new", 100, {}),
    ])
    agg = load_campaign(tmp_path)
    labels = {(c.strategy, c.load_label): c.failures for c in agg.cells}
    assert labels == {("old", "2 jobs/CPU"): 10, ("old", "4 jobs/CPU"): 40,
                      ("new", "2 jobs/CPU"): 0}
    assert agg.mixed_load
    assert any("never pooled" in n and "old" in n for n in agg.notes)
    # comparisons pair cells of the same load only
    assert [(c.load_label, c.comparison.a, c.comparison.b) for c in agg.comparisons] == [
        ("2 jobs/CPU", "old", "new")]


def test_load_label() -> None:
    assert load_label(None) == "load not recorded"
    assert load_label({"jobs": 3, "cpus": 2}) == "1.5 jobs/CPU"
    assert load_label({"jobs_per_cpu": 1, "pin": "0-1", "exit_delay": 0.05}) == (
        "1 jobs/CPU, pinned to 0-1, exit delay ≤ 0.05 s")


def test_repeated_run_ids_count_once_and_plan_order_wins(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path, [synth.CellSpec("s", "b", 10, {"rust-panic": 2}),
                                   synth.CellSpec("s", "a", 10, {})],
                        plan={"strategies": ["a", "b"]})
    synth.write_records(tmp_path, [synth.record("s", "b", 0, "rust-panic")])
    agg = load_campaign(tmp_path)
    assert [c.strategy for c in agg.cells] == ["a", "b"]
    assert agg.cell("s", "b").failures == 2 and agg.duplicates == 1


def test_missing_folder_or_results(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a campaign folder"):
        load_campaign(tmp_path / "nope")
    with pytest.raises(UsageError, match="no results.jsonl"):
        load_campaign(tmp_path)


def test_a_cell_that_always_raises_one_exception_during_the_work_is_not_runnable(
    tmp_path: Path,
) -> None:
    from shutdown_harness.gates import evaluate
    from shutdown_harness.reports import render

    synth.make_campaign(tmp_path, [
        synth.CellSpec("s", "pkg==0.12.1", 20, {"rust-panic": 5}),
        synth.CellSpec("s", "pkg==0.2.0", 20, {"python-exception:TypeError": 20}),
        synth.CellSpec("s", "pkg==0.3.0", 20, {"python-exception:TypeError": 12,
                                                "rust-panic": 8}),
    ])
    agg = load_campaign(tmp_path)
    # versions sort as versions, not as text (0.12.1 last)
    assert [c.strategy for c in agg.cells] == ["pkg==0.2.0", "pkg==0.3.0", "pkg==0.12.1"]
    old, mixed, new = agg.cells
    assert old.not_runnable == "TypeError" and old.rate_text() == "not runnable: TypeError"
    assert mixed.not_runnable is None and new.not_runnable is None  # a real failure mix
    assert old.to_dict()["status"] == "not-runnable"
    # no verdict, no gate for the cell without a rate
    assert [(c.comparison.a, c.comparison.b) for c in agg.comparisons] == [
        ("pkg==0.3.0", "pkg==0.12.1")]
    results = evaluate(agg, {"*": {"max_upper": 0.5}})
    assert {g.cell.strategy for g in results} == {"pkg==0.3.0", "pkg==0.12.1"}
    assert any("not runnable" in n and "pkg==0.2.0" in n for n in agg.notes)
    text = render(agg, "terminal", gates={})
    assert "not runnable: TypeError" in text and "20x" not in text
    assert "skipped" in render(agg, "junit", gates={})


def test_an_exception_after_the_work_is_a_failure_rate(tmp_path: Path) -> None:
    recs = [synth.record("s", "a", i, "python-exception:TypeError") for i in range(5)]
    for rec in recs:
        rec.update(phase="finalization", work_done=True)
    (tmp_path / "campaign.json").write_text(json.dumps(synth.campaign_json(tmp_path, ["s"],
                                                                          ["a"])))
    synth.write_records(tmp_path, recs)
    (cell,) = load_campaign(tmp_path).cells
    assert cell.not_runnable is None and cell.failures == 5


def test_runs_that_raise_during_the_work_and_then_crash_at_exit_are_not_runnable(
    tmp_path: Path,
) -> None:
    """etcd-client-py 0.2.4 under concurrent_ops: every run raises the same TypeError during
    the work; some of them then die in finalization (SIGSEGV, SIGABRT)."""
    text = "TypeError: argument 'key': 'bytes' object cannot be converted to 'PyString'"
    recs = []
    for i, sig in enumerate(["python-exception:TypeError", "rust-panic", "native-crash:x"]):
        rec = synth.record("s", "pkg==0.2.4", i, sig)
        rec.update(phase="work", work_done=False, exception=text)
        recs.append(rec)
    (tmp_path / "campaign.json").write_text(json.dumps(synth.campaign_json(tmp_path, ["s"],
                                                                          ["pkg==0.2.4"])))
    synth.write_records(tmp_path, recs)
    (cell,) = load_campaign(tmp_path).cells
    assert cell.not_runnable == text


def _warm_cell(warm: tuple[int, int], cold: tuple[int, int]) -> list[dict[str, object]]:
    """Records of one --warm cell: (failures, runs) warm and cold."""
    out = []
    index = 0
    for start, (k, n) in (("warm", warm), ("cold", cold)):
        for i in range(n):
            rec = synth.record("s", "a", index, "pthread-exit-unwind-abort" if i < k else None)
            rec["start"] = start
            out.append(rec)
            index += 1
    return out


def test_fidelity_compares_warm_runs_with_cold_controls() -> None:
    from shutdown_harness.aggregate import aggregate

    same = aggregate(_warm_cell((45, 180), (5, 20)))
    (f,) = same.fidelity
    assert (f.warm, f.cold) == ((45, 180), (5, 20))
    assert f.p_value is not None and f.p_value > 0.5 and not f.differs
    assert "cannot be told apart" in f.sentence()
    assert same.to_dict()["fidelity"] == [f.to_dict()]
    assert f.to_dict()["warm"] == [45, 180] and f.to_dict()["cold"] == [5, 20]

    differ = aggregate(_warm_cell((0, 180), (12, 40)))
    (f,) = differ.fidelity
    assert f.differs and f.p_value is not None and f.p_value < 1e-6
    assert f.sentence().startswith("WARM AND COLD DIFFER for s / a")
    # a campaign without --warm has no fidelity section
    assert aggregate([synth.record("s", "a", 0)]).fidelity == []
