"""The result store: flushed lines, torn tails, resume and bounded artifacts."""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest
from shutdown_harness.errors import UsageError
from shutdown_harness.store import RESULTS, ResultStore, RunIds, iter_records


def _record(i: int, signature: str = "clean") -> dict:
    return {"run_id": f"s/t/{i}", "scenario": "s", "strategy": "t", "index": i,
            "signature": signature, "category": "clean"}


def test_each_record_is_on_disk_once_appended(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.create({"plan": {}})
    store.append(_record(0))
    # Read by another handle before close: the line is already flushed.
    assert [r["run_id"] for r in iter_records(tmp_path)] == ["s/t/0"]
    store.close()


def test_new_campaign_refuses_an_existing_one(tmp_path: Path) -> None:
    ResultStore(tmp_path).create({"plan": {}})
    with pytest.raises(UsageError, match="--resume"):
        ResultStore(tmp_path).check_new()


def test_resume_drops_torn_tail_and_knows_done(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.create({"plan": {"runs": 3}})
    store.append(_record(0))
    store.append(_record(1))
    store.close()
    with (tmp_path / RESULTS).open("a") as f:
        f.write('{"run_id": "s/t/2", "scen')  # killed mid-write
    again = ResultStore(tmp_path)
    campaign = again.resume()
    assert campaign["plan"] == {"runs": 3}
    assert set(again.done) == {"s/t/0", "s/t/1"} and len(again.done) == 2
    again.append(_record(2))
    again.close()
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["s/t/0", "s/t/1", "s/t/2"]


def test_artifacts_only_for_first_few_per_signature(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, keep_per_signature=2)
    store.create({"plan": {}})
    kept = []
    for i in range(5):
        record = _record(i, signature="gilstate-release-not-current")
        if store.wants_artifacts(record):
            record["artifacts"] = store.keep_artifacts(record, {"stderr.txt": f"run {i}"})
            kept.append(record["artifacts"])
        store.append(record)
    assert kept == ["artifacts/s_t_0", "artifacts/s_t_1"]
    assert (tmp_path / "artifacts/s_t_1/stderr.txt").read_text() == "run 1"
    store.close()
    # The count survives a resume: still no third exemplar.
    again = ResultStore(tmp_path, keep_per_signature=2)
    again.resume()
    assert not again.wants_artifacts(_record(9, signature="gilstate-release-not-current"))
    assert again.wants_artifacts(_record(9, signature="other"))


def test_unwritable_out_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="cannot create --out"):
        ResultStore(blocker / "sub").check_new()


def test_one_store_at_a_time_holds_a_folder(tmp_path: Path) -> None:
    first = ResultStore(tmp_path)
    first.create({"plan": {}})
    holder = f"in use by another shutdown-harness \\(pid {os.getpid()}\\)"
    with pytest.raises(UsageError, match=holder):
        ResultStore(tmp_path).resume()
    first.close()  # the lock goes with it
    again = ResultStore(tmp_path)
    again.resume()
    again.close()


def test_resume_refuses_a_damaged_last_line_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.create({"plan": {}})
    store.append(_record(0))
    store.close()
    with (tmp_path / RESULTS).open("a") as f:
        f.write("{garbage not json}\n")  # a whole line, not a torn write
    before = (tmp_path / RESULTS).read_bytes()
    with pytest.raises(UsageError, match=":2: not a JSON record"):
        ResultStore(tmp_path).resume()
    with pytest.raises(UsageError, match=":2: not a JSON record"):
        list(iter_records(tmp_path))  # report and merge say the same
    assert (tmp_path / RESULTS).read_bytes() == before


def test_a_campaign_file_without_a_plan_is_refused(tmp_path: Path) -> None:
    (tmp_path / "campaign.json").write_text('{"format": 1}')
    with pytest.raises(UsageError, match="has no plan"):
        ResultStore(tmp_path).resume()


def test_run_ids_behave_as_the_set_of_their_strings() -> None:
    rng = random.Random(7)
    cells = ["a/x", "b/etcd==0.4.1", "c/wheel/with/slashes@explicit"]
    ids = RunIds()
    reference: set[str] = set()
    for _ in range(3000):
        run_id = f"{rng.choice(cells)}/{rng.randrange(200)}"
        if rng.random() < 0.05:
            run_id = rng.choice(["odd", "a/x/007", "a/x/-1", "a/x/", "/5", "a/x/1e3"])
        ids.add(run_id)
        reference.add(run_id)
        probe = f"{rng.choice(cells)}/{rng.randrange(260)}"
        assert (probe in ids) == (probe in reference)
    ids.add("a/x/007")
    reference.add("a/x/007")
    assert len(ids) == len(reference) and set(ids) == reference
    assert "a/x/007" in ids and ("a/x/7" in ids) == ("a/x/7" in reference)
    assert 5 not in ids  # type: ignore[operator]


def test_run_ids_hold_a_bit_per_run_not_a_string() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = RunIds(f"scenario/strategy/{i}" for i in range(100_000))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ids) == 100_000 and "scenario/strategy/99999" in ids
    assert held < 100_000, f"{held} bytes for 100,000 run ids"  # a set of the strings: ~16 MB
