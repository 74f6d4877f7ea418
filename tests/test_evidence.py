from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.campaigns import synth
from shutdown_harness import discovery
from shutdown_harness.errors import UsageError
from shutdown_harness.evidence import build_bundle, scenario_path

SCENARIOS = Path(__file__).parent / "fixtures" / "campaigns" / "scenarios"
ROOT = Path(__file__).resolve().parent.parent


def _campaign(directory: Path, scenario: Path, name: str) -> Path:
    synth.make_campaign(directory, [
        synth.CellSpec(name, "etcd-0.4.1", 300, {"pthread-exit-unwind-abort": 90},
                       client_version="etcd-client-py==0.4.1"),
        synth.CellSpec(name, "etcd-0.5.1", 300, {}, client_version="etcd-client-py==0.5.1"),
    ])
    campaign = json.loads((directory / "campaign.json").read_text())
    campaign["cells"] = {f"{name}/etcd-0.4.1": {"argv": ["/venv/bin/python", "/x/child.py",
                                                          str(scenario), "--mode", "none"]}}
    (directory / "campaign.json").write_text(json.dumps(campaign))
    return directory


def _reproduce(bundle: Path, python: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, str(bundle / "reproduce.py"), *args], capture_output=True,
                          text=True, timeout=240, cwd=bundle)


def test_bundle_is_issue_ready_and_its_reproducer_really_crashes(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path / "c", SCENARIOS / "abort_at_exit.py", "abort_at_exit")
    bundle = build_bundle(campaign, tmp_path / "bundle")
    names = {p.name for p in bundle.iterdir()}
    assert {"ISSUE.md", "reproduce.py", "COMMAND.txt", "results.jsonl", "campaign.json",
            "report.html", "report.md", "report.json", "artifacts"} <= names
    issue = (bundle / "ISSUE.md").read_text()
    assert issue.startswith("# Crash at interpreter shutdown (SIGABRT, pthread-exit-unwind-abort)"
                            " with etcd-client-py==0.4.1: 90/300 runs (30.0% [25.0–35.5%])")
    assert "etcd-0.5.1 removes the failures: 0/300 (< 1.3%) vs 90/300" in issue
    assert "#8  0x00007f3348a4f969 in take_gil" in issue  # the crashing thread's frames
    for row in ("| kernel | 6.1.0-18-amd64 |", "| libc | glibc 2.36 |", "| cpus | 2 |",
                "| load (per record) | 2 jobs/CPU |"):
        assert row in issue
    assert "python -m pip install etcd-client-py==0.4.1" in issue
    assert "shutdown-harness run --scenario abort_at_exit" in (bundle / "COMMAND.txt").read_text()
    with tarfile.open(tmp_path / "bundle.tar.gz") as tar:
        assert "bundle/ISSUE.md" in tar.getnames() and "bundle/reproduce.py" in tar.getnames()

    # reproduce.py carries the scenario and its helper: it runs from an empty folder
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "reproduce.py").write_text((bundle / "reproduce.py").read_text())
    proc = _reproduce(alone, sys.executable, "--runs", "4", "--jobs", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2/4 runs died (SIGABRT 2, clean 2)" in proc.stdout
    assert "run 0: SIGABRT after the work was done (at shutdown)" in proc.stdout

    # building again replaces the earlier bundle; a foreign folder is refused
    build_bundle(campaign, tmp_path / "bundle")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not an evidence bundle"):
        build_bundle(campaign, tmp_path / "other")


def test_command_campaign_reproducer_runs_the_command(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path / "c", [synth.CellSpec("command", "command", 10,
                                                        {"unclassified-SIGABRT": 3})],
                        plan={"command": f"{sys.executable} -c 'import os; os.abort()'"})
    bundle = build_bundle(tmp_path / "c", tmp_path / "b")
    proc = _reproduce(bundle, sys.executable, "--runs", "2", "--jobs", "2")
    assert proc.returncode == 1 and "2/2 runs died (SIGABRT 2)" in proc.stdout


def test_nothing_to_report(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path / "c", [synth.CellSpec("s", "etcd-0.5.1", 10, {})])
    with pytest.raises(UsageError, match="no failures"):
        build_bundle(tmp_path / "c", tmp_path / "b")


@pytest.mark.slow
@pytest.mark.etcd
def test_reproducer_crashes_etcd_client_0_4_1(
    tmp_path: Path, etcd_endpoint: str, client_python: Callable[[str], Path]
) -> None:
    """The bundle's reproduce.py, built from the real concurrent_ops scenario, crashes 0.4.1."""
    python = str(client_python("etcd-client-py==0.4.1"))
    scenario = ROOT / "scenarios" / "concurrent_ops.py"
    campaign = _campaign(tmp_path / "c", scenario, "concurrent_ops")
    bundle = build_bundle(campaign, tmp_path / "bundle")
    proc = _reproduce(bundle, python, "--endpoint", etcd_endpoint, "--runs", "24", "--jobs", "4")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "after the work was done (at shutdown)" in proc.stdout


def test_scenario_path_falls_back_to_the_builtin_folder(tmp_path: Path) -> None:
    from shutdown_harness.aggregate import load_campaign

    synth.make_campaign(tmp_path, [synth.CellSpec("concurrent-ops", "a", 1, {})])
    path = scenario_path(load_campaign(tmp_path), "concurrent-ops")
    assert path == discovery.BUILTIN_DIR / "concurrent_ops.py"  # installed or source tree
    assert path.exists()
