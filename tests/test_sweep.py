"""sweep: releases from the configured index, not-installable / not-runnable releases, one
campaign, sweep.json, change points, the release chart. Synthetic releases on a local index
(tests/fixtures/releases) and a lean real sweep of etcd-client-py against the real index."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.releases import wheels
from packaging.version import Version
from shutdown_harness import sweep
from shutdown_harness.cli import main


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """shtest-releases (fixtures/releases) served as uv's default index; 0.1.0 raises
    TypeError in the work, 0.2.0 and 0.3.0 abort at exit in every run, 0.4.0 and 0.5.0 never,
    0.6.0 needs Python >= 4."""
    monkeypatch.setenv("UV_DEFAULT_INDEX", wheels.make_index(tmp_path / "index"))
    monkeypatch.setenv("SHUTDOWN_HARNESS_CACHE", str(tmp_path / "cache"))
    scenario = tmp_path / "call_work.py"
    scenario.write_text(wheels.SCENARIO)
    return scenario


def test_change_points_mark_fixes_and_regressions() -> None:
    releases = [sweep.Release(Version(v), "measured", None, n, k) for v, k, n in (
        ("0.1", 30, 100), ("0.2", 28, 100), ("0.3", 0, 100), ("0.4", 1, 100),
        ("0.5", 20, 100))]
    releases.insert(2, sweep.Release(Version("0.2.5"), "not-installable", "needs Rust"))
    points = sweep.change_points(releases)
    assert [(p["kind"], p["version"], p["previous"]) for p in points] == [
        ("fixed in", "0.3", "0.2"), ("broken in", "0.5", "0.4")]
    assert points[0]["p_value"] < 1e-6
    assert "fixed in 0.3: 0/100" in points[0]["sentence"]
    assert sweep.unsupported(">=3.12", "3.11.7") == "requires Python >=3.12 (this is 3.11.7)"
    assert sweep.unsupported(">=3.10", "3.11.7") is None


def test_sweep_of_synthetic_releases(local_index: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    code = main(["sweep", "shtest-releases", "--scenario", str(local_index), "--runs", "4",
                 "--versions", "0.1.0,0.6.0,0.3.0,0.4.0", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    data = json.loads((out / "sweep.json").read_text())
    assert data["package"] == "shtest-releases" and data["scenario"] == "call_work"
    rows = {v["version"]: v for v in data["versions"]}
    assert list(rows) == ["0.1.0", "0.3.0", "0.4.0", "0.6.0"]  # version order
    assert [v["status"] for v in rows.values()] == [
        "not-runnable", "measured", "measured", "not-installable"]
    assert "TypeError" in rows["0.1.0"]["reason"] and rows["0.1.0"]["rate"] is None
    assert rows["0.6.0"]["reason"].startswith("requires Python >=4")
    crash, clean = rows["0.3.0"], rows["0.4.0"]
    assert (crash["failures"], crash["runs"]) == (4, 4) and crash["interval"][0] > 0.3
    assert (clean["failures"], clean["runs"]) == (0, 4) and clean["interval"][1] < 0.7
    assert sum(crash["signatures"].values()) == 4
    assert [(p["kind"], p["version"]) for p in data["change_points"]] == [("fixed in", "0.4.0")]
    # one campaign: both measured releases interleaved in one results.jsonl
    strategies = {json.loads(line)["strategy"] for line in
                  (out / "results.jsonl").read_text().splitlines()}
    assert strategies == {"shtest-releases==0.1.0", "shtest-releases==0.3.0",
                          "shtest-releases==0.4.0"}
    html = (out / "report.html").read_text()
    assert "Failure rate by release" in html and "fixed in 0.4.0" in html
    assert "not-runnable" in printed and "← fixed in" in printed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shutdown_harness", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["sweep", "shtest-nope"], "no package 'shtest-nope'"),
    (["sweep", "shtest-releases", "--versions", ">=9"], "no release matching '>=9'"),
    (["sweep", "shtest-releases", "--versions", "0.2.0,0.9.9"], "no release 0.9.9"),
    (["sweep", "shtest-releases", "--versions", ">0.1,<0.2"], "no release matching"),
    (["sweep", "shtest-releases", "--python", "2.1"], "--python 2.1: no such interpreter"),
    (["bisect", "shtest-releases", "--bad", "0.2.0", "--good", "0.2.0"], "same release"),
    (["bisect", "shtest-releases", "--bad", "0.2.0", "--good", "7.0"], "no release 7.0"),
])
def test_bad_input_is_one_line_and_exit_2(local_index: Path, args: list[str],
                                          message: str) -> None:
    done = _cli(*args, "--scenario", str(local_index), "--out", str(local_index.parent / "o"))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.etcd
def test_real_sweep_of_etcd_client_py(etcd_endpoint: str, tmp_path: Path) -> None:
    """The real index, real releases, a real etcd: 0.2.4 does not fit concurrent_ops' API."""
    stream = io.StringIO()
    code = sweep.sweep_command(
        "etcd-client-py", "concurrent_ops", spec="0.2.4,0.5.1", runs=4, until_halfwidth=None,
        out=tmp_path / "s", settings={"etcd": etcd_endpoint, "jobs": 2}, config={},
        stream=stream)
    assert code == 0, stream.getvalue()[-2000:]
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())["versions"]
    assert [(r["version"], r["status"]) for r in rows] == [("0.2.4", "not-runnable"),
                                                           ("0.5.1", "measured")]
    assert rows[0]["reason"].startswith("TypeError") and rows[1]["runs"] == 4


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="needs a second Python")
def test_python_option_builds_with_that_interpreter(local_index: Path, tmp_path: Path) -> None:
    """--python on run: the strategy's virtualenv is built with that interpreter (this
    machine's Debian 3.11 besides the harness's own), and every record says which."""
    import platform

    other = subprocess.run(["/usr/bin/python3.11", "-c",
                            "import platform; print(platform.python_version())"],
                           capture_output=True, text=True).stdout.strip()
    out = tmp_path / "run"
    code = main(["run", "--scenario", str(local_index), "--strategy", "shtest-releases==0.4.0",
                 "--python", "/usr/bin/python3.11", "--runs", "2", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["python"] for r in records] == [other, other]
    campaign = json.loads((out / "campaign.json").read_text())
    assert campaign["strategies"]["shtest-releases==0.4.0"]["python"] == "/usr/bin/python3.11"
    if other != platform.python_version():  # shown when it varies
        from shutdown_harness.reports import render

        synth_records = [{**r, "run_id": r["run_id"] + "x", "strategy": "host",
                          "python": platform.python_version()} for r in records]
        with (out / "results.jsonl").open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in synth_records))
        text = render(out, "terminal", gates={})
        assert "Python" in text and other in text
