"""The plan: stable run ids, round-robin order, shards, resume and adaptive stopping."""

from __future__ import annotations

import pytest
from shutdown_harness.errors import UsageError
from shutdown_harness.plan import RunSpec, iter_plan, parse_shard, plan_size

CELLS = [("watch", "a"), ("watch", "b")]


def test_round_robin_across_cells_with_stable_ids() -> None:
    ids = [spec.run_id for spec in iter_plan(CELLS, 2)]
    assert ids == ["watch/a/0", "watch/b/0", "watch/a/1", "watch/b/1"]


def test_shards_partition_the_plan_exactly() -> None:
    whole = {s.run_id for s in iter_plan(CELLS, 10)}
    shards = [{s.run_id for s in iter_plan(CELLS, 10, shard=(i, 3))} for i in (1, 2, 3)]
    assert set().union(*shards) == whole
    assert sum(len(s) for s in shards) == len(whole)
    assert [plan_size(CELLS, 10, (i, 3)) for i in (1, 2, 3)] == [len(s) for s in shards]


def test_resume_skips_done_runs() -> None:
    done = {"watch/a/0", "watch/b/1"}
    ids = [s.run_id for s in iter_plan(CELLS, 2, done=done)]
    assert ids == ["watch/b/0", "watch/a/1"]


def test_per_cell_runs() -> None:
    runs = {CELLS[0]: 1, CELLS[1]: 3}
    assert [s.run_id for s in iter_plan(CELLS, runs)] == [
        "watch/a/0", "watch/b/0", "watch/b/1", "watch/b/2"
    ]
    assert plan_size(CELLS, runs, None) == 4


def test_adaptive_stop_is_asked_lazily() -> None:
    finished: set[tuple[str, str]] = set()
    out: list[RunSpec] = []
    for spec in iter_plan(CELLS, 5, cell_done=lambda cell: cell in finished):
        out.append(spec)
        if len(out) == 2:
            finished.add(("watch", "a"))  # a verdict arrived for cell a
    assert [s.run_id for s in out] == ["watch/a/0", "watch/b/0"] + [
        f"watch/b/{i}" for i in range(1, 5)
    ]


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "1/0", "1-2"])
def test_bad_shard(text: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(text)


def test_good_shard() -> None:
    assert parse_shard(" 2/4 ") == (2, 4)
    assert parse_shard(None) is None
