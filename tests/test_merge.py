from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.campaigns import synth
from shutdown_harness.aggregate import iter_records, load_campaign, read_campaign
from shutdown_harness.errors import UsageError
from shutdown_harness.merge import merge
from shutdown_harness.plan import iter_plan

CELLS = [("puts", "etcd-0.4.1"), ("puts", "etcd-0.5.1"), ("watch", "etcd-0.4.1")]
RUNS = 25


def _signature(scenario: str, strategy: str, index: int) -> str | None:
    return "pthread-exit-unwind-abort" if strategy == "etcd-0.4.1" and index % 3 == 0 else None


def _folder(directory: Path, shard: tuple[int, int] | None, **plan: object) -> Path:
    """A campaign folder holding exactly the runs plan.py assigns to `shard`."""
    directory.mkdir(parents=True)
    campaign = synth.campaign_json(directory, ["puts", "watch"], ["etcd-0.4.1", "etcd-0.5.1"],
                                   {"runs": RUNS, "shard": list(shard) if shard else None,
                                    **plan})
    (directory / "campaign.json").write_text(json.dumps(campaign))
    synth.write_records(directory, [
        synth.record(s.scenario, s.strategy, s.index, _signature(*s.cell, s.index))
        for s in iter_plan(CELLS, RUNS, shard)])
    return directory


def _cells(directory: Path) -> list[tuple[str, str, int, int]]:
    return [(c.scenario, c.strategy, c.runs, c.failures) for c in load_campaign(directory).cells]


def test_two_shards_merge_into_the_unsharded_campaign(tmp_path: Path) -> None:
    one = _folder(tmp_path / "one", (1, 2))
    two = _folder(tmp_path / "two", (2, 2))
    (one / "artifacts" / "puts_etcd-0.4.1_0").mkdir(parents=True)
    (one / "artifacts" / "puts_etcd-0.4.1_0" / "stderr.txt").write_text("boom")
    whole = _folder(tmp_path / "whole", None)
    merge([one, two], tmp_path / "merged")
    merged = tmp_path / "merged"

    ids = [r["run_id"] for r in iter_records(merged)]
    assert len(ids) == len(set(ids)) == 3 * RUNS
    assert set(ids) == {s.run_id for s in iter_plan(CELLS, RUNS)}
    assert read_campaign(merged)["plan"] == read_campaign(whole)["plan"]
    assert _cells(merged) == _cells(whole)
    assert (merged / "artifacts" / "puts_etcd-0.4.1_0" / "stderr.txt").read_text() == "boom"
    assert (merged / "report.md").exists()
    info = read_campaign(merged)["merge"]
    assert info == {"shards": [[1, 2], [2, 2]], "missing_shards": [], "records": 3 * RUNS}


def test_missing_shard_and_repeated_records_are_reported(tmp_path: Path) -> None:
    one = _folder(tmp_path / "one", (1, 3))
    again = _folder(tmp_path / "again", (1, 3))  # the same shard run twice
    merge([one, again], tmp_path / "merged")
    assert read_campaign(tmp_path / "merged")["merge"]["missing_shards"] == [[2, 3], [3, 3]]
    agg = load_campaign(tmp_path / "merged")
    assert agg.records == len(list(iter_plan(CELLS, RUNS, (1, 3))))
    assert any("without shard(s) 2/3, 3/3" in n for n in agg.notes)


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 8}, "different plan 'seed'.*same --seed"),
    ({"runs": 30}, "different plan 'runs'"),
    ({"strategies": ["etcd-0.4.1"]}, "different plan 'strategies'"),
])
def test_incompatible_campaigns_are_refused(tmp_path: Path, change: dict[str, object],
                                            message: str) -> None:
    one = _folder(tmp_path / "one", (1, 2))
    two = _folder(tmp_path / "two", (2, 2), **change)
    with pytest.raises(UsageError, match=message):
        merge([one, two], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_per_machine_differences_are_allowed_but_bad_outputs_refused(tmp_path: Path) -> None:
    one = _folder(tmp_path / "one", (1, 2))
    two = _folder(tmp_path / "two", (2, 2), jobs=16, etcd="10.0.0.5:2379")
    with pytest.raises(UsageError, match="not one of the inputs"):
        merge([one, two], one)
    with pytest.raises(UsageError, match="shards of different counts"):
        merge([one, _folder(tmp_path / "three", (2, 3))], tmp_path / "m3")
    merge([one, two], tmp_path / "merged")
    with pytest.raises(UsageError, match="not empty"):
        merge([one, two], tmp_path / "merged")
