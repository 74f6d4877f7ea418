"""bench/run.py runs end to end with tiny sizes and prints its table (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def _bench(tmp_path: Path, *args: str) -> tuple[str, dict]:
    raw = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--reps", "1", "--cost-runs", "1", "--json", str(raw), *args],
        capture_output=True, text=True, timeout=240,
    )
    # 0: every target met, 1: some missed (tiny samples); anything else is a failure of the bench.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.stdout, json.loads(raw.read_text())


def _rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| measurement | result | target | met |"
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4, line
        rows[cells[0]] = cells[1:]
    return rows


def test_trivial_child_and_memory(tmp_path: Path) -> None:
    out, raw = _bench(tmp_path, "--only", "trivial,memory", "--trivial-runs", "3",
                      "--memory-runs", "2,5", "--memory-child", "true")
    rows = _rows(out)
    names = list(rows)
    assert names[0].startswith("throughput vs `xargs -P ")
    assert any(n.startswith("harness CPU per run (own process") for n in names)
    assert any(n.startswith("machine limit, `python -c pass`") for n in names)
    assert rows["harness peak RSS, 5 runs of `true`"][0].endswith("x)")
    # Every harness campaign really recorded its runs, and the harness's own numbers are there.
    trivial = raw["throughput trivial"]["harness"][0]
    assert trivial["runs"] == 3 and trivial["cpu_s"] > 0 and trivial["max_rss_kb"] > 10_000
    assert len(raw["throughput trivial"]["xargs_s"]) == 1
    assert {int(k) for k in raw["memory"]} == {2, 5}
    assert raw["memory"]["5"]["runs"] == 5


@pytest.mark.etcd
def test_ultra_rapid_rows_against_a_real_etcd(tmp_path: Path) -> None:
    out, raw = _bench(tmp_path, "--only", "ultra,warm", "--ultra-runs", "2", "--warm-runs", "3",
                      "--warm-reps", "1")
    rows = _rows(out)
    assert not any(cells[0].startswith("skipped") for cells in rows.values()), out
    assert any("sequential `subprocess.run` loop" in name for name in rows)
    cost = next(cells[0] for name, cells in rows.items() if name.startswith("child cost"))
    assert "imports" in cost and "finalization with the client" in cost
    assert len(raw["throughput ultra_rapid"]["sequential_s"]) == 1
    # warm vs cold: both campaigns ran every run; the warm one's controls are all its 3 runs
    # (at least 20 cold controls), so its ratio is measured, not asserted
    found = raw["warm vs cold ultra_rapid"]
    assert [h["runs"] for h in found["cold"]] == [h["runs"] for h in found["warm"]] == [3]
    assert any(name.startswith("throughput, `run --warm` vs cold") for name in rows), out


def test_startup_rows(tmp_path: Path) -> None:
    out, raw = _bench(tmp_path, "--only", "startup")
    rows = _rows(out)
    assert rows["start-up: `python -c pass` alone (median wall)"][0].endswith(" ms")
    for what in ("--help", "list"):
        row = rows[f"start-up: `shutdown-harness {what}` (median wall; paired ratio to the bare "
                   "Python)"]
        assert row[1] == "< 0.15 s" and row[2] in ("yes", "**no**")
    (one_run,) = [r for name, r in rows.items() if name.startswith("start-up: a one-run")]
    assert one_run[0].endswith(" ms)") and one_run[1] == "<= 15x"
    assert {k: len(v) for k, v in raw["startup_s"].items()} == {
        "bare": 1, "help": 1, "list": 1, "run": 1}


def test_bisection_bench_simulates_both_methods(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("bisection.py")), "--only", "sim", "--trials", "2",
         "--releases", "8", "--json", str(raw)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(raw.read_text())["simulated"]
    assert {(r["setting"], r["method"]) for r in rows} == {
        (s, m) for s in ("5% vs 0%", "20% vs 5%", "30% vs 10%") for m in ("bayes", "deflaked")}
    assert all(r["answered"] + r["refused"] == 2 and r["mean_runs"] > 0 for r in rows)
    assert "| 5% vs 0% | bayes |" in proc.stdout
