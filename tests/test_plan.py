"""The plan: stable run ids, round-robin order, shards, resume and adaptive stopping."""

from __future__ import annotations

import dataclasses
import json

import pytest
from shutdown_harness.errors import UsageError
from shutdown_harness.plan import Plan, RunSpec, iter_plan, parse_shard, plan_size

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


# -- the Plan ------------------------------------------------------------------------------
def test_plan_defaults_live_in_one_place_and_round_trip_through_json() -> None:
    plan = Plan(scenarios=["a", "b"], shard=(2, 4), pin_cpus=[0], runs=7)
    assert plan.scenarios == ("a", "b") and plan.pin_cpus == (0,)  # frozen all the way down
    assert (plan.cores, plan.keep_artifacts, plan.cores_per_signature) == ("auto", 3, 3)
    stored = json.loads(json.dumps(plan.to_dict()))
    assert stored["scenarios"] == ["a", "b"] and stored["shard"] == [2, 4]
    assert stored == plan.to_dict()  # what campaign.json holds is what to_dict gives
    assert Plan.from_dict(stored) == plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.runs = 8  # type: ignore[misc]
    assert plan.replace(runs=8).runs == 8 and plan.runs == 7


def test_plan_from_an_older_campaign_takes_defaults_for_what_it_lacks() -> None:
    old = {"scenarios": ["sanity"], "strategies": ["etcd-0.5.1"], "runs": 4, "jobs": 2,
           "seed": 9, "etcd": None, "cores": None, "timeout": None}
    plan = Plan.from_dict(old)
    assert (plan.etcd, plan.cores, plan.timeout, plan.seed) == ("auto", "auto", None, 9)
    assert plan.faulthandler is True and plan.keep_artifacts == 3
    with pytest.raises(UsageError, match="does not know: colour"):
        Plan.from_dict({**old, "colour": "blue"})
