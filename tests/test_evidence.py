from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.campaigns import synth
from shutdown_harness import MARKER, discovery, reproducer
from shutdown_harness.aggregate import load_campaign
from shutdown_harness.errors import UsageError
from shutdown_harness.evidence import (
    ISSUE_LIMIT,
    build_bundle,
    choose_cell,
    scenario_path,
    scenario_services,
)

SCENARIOS = Path(__file__).parent / "fixtures" / "campaigns" / "scenarios"
ROOT = Path(__file__).resolve().parent.parent


def _campaign(directory: Path, scenario: Path, name: str, *,
              specs: list[synth.CellSpec] | None = None) -> Path:
    synth.make_campaign(directory, specs or [
        synth.CellSpec(name, "etcd-0.4.1", 300, {"pthread-exit-unwind-abort": 90},
                       client_version="etcd-client-py==0.4.1"),
        synth.CellSpec(name, "etcd-0.5.1", 300, {}, client_version="etcd-client-py==0.5.1"),
    ])
    campaign = json.loads((directory / "campaign.json").read_text())
    campaign["cells"] = {f"{name}/etcd-0.4.1": {"argv": ["/venv/bin/python", "/x/child.py",
                                                          str(scenario), "--mode", "none"]}}
    (directory / "campaign.json").write_text(json.dumps(campaign))
    return directory


def _alone(bundle: Path, where: Path) -> Path:
    """A copy of the bundle, and nothing else, in an empty folder."""
    where.mkdir()
    return Path(shutil.copytree(bundle, where / "bundle"))


def _reproduce(bundle: Path, python: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, str(bundle / "reproduce.py"), *args], capture_output=True,
                          text=True, timeout=240, cwd=bundle)


def test_reproducer_marker_is_the_harness_marker() -> None:
    assert reproducer.MARKER == MARKER


def test_bundle_is_issue_ready_and_its_reproducer_really_crashes(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path / "c", SCENARIOS / "abort_at_exit.py", "abort_at_exit")
    bundle = build_bundle(campaign, tmp_path / "bundle").path
    names = {p.name for p in bundle.iterdir()}
    assert {"ISSUE.md", "reproduce.py", "COMMAND.txt", "results.jsonl", "campaign.json",
            "report.html", "report.md", "report.json", "artifacts", "scenario"} <= names
    assert sorted(p.name for p in (bundle / "scenario").iterdir()) == [
        "_abort_helper.py", "abort_at_exit.py"]
    issue = (bundle / "ISSUE.md").read_text()
    assert issue.startswith("# Crash at interpreter shutdown (SIGABRT, pthread-exit-unwind-abort)"
                            " with etcd-client-py==0.4.1: 90/300 runs (30.0% [25.0–35.5%])")
    assert "etcd-0.5.1 removes the failures: 0/300 (< 1.3%) vs 90/300" in issue
    assert "#8  0x00007f3348a4f969 in take_gil" in issue  # the crashing thread's frames
    assert "forced unwind cannot cross the Rust frames" in issue  # signatures.toml explanation
    for row in ("| kernel | 6.1.0-18-amd64 |", "| libc | glibc 2.36 |", "| cpus | 2 |",
                "| load (per record) | 2 jobs/CPU |"):
        assert row in issue
    assert "python -m pip install etcd-client-py==0.4.1" in issue
    # SERVICES = () : no endpoint option, no service named anywhere in the reproducer
    assert "python reproduce.py --runs 200 --jobs 4" in issue
    source = (bundle / "reproduce.py").read_text()
    assert "etcd" not in source.split("# -- end of CONFIG")[1]
    assert '"services": []' in source or "'services': []" in source
    command = (bundle / "COMMAND.txt").read_text()
    assert "shutdown-harness run --scenario scenario/abort_at_exit.py" in command
    assert str(tmp_path) not in command and "/x/child.py" not in command
    with tarfile.open(tmp_path / "bundle.tar.gz") as tar:
        assert {"bundle/ISSUE.md", "bundle/reproduce.py",
                "bundle/scenario/abort_at_exit.py"} <= set(tar.getnames())

    # the bundle alone, in an empty folder: the reproducer runs the scenario and its helper
    alone = _alone(bundle, tmp_path / "alone")
    proc = _reproduce(alone, sys.executable, "--runs", "4", "--jobs", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2/4 runs died (SIGABRT 2, clean 2)"
    assert "run 0: SIGABRT after the work was done (at shutdown)" in proc.stdout
    help_text = _reproduce(alone, sys.executable, "--help").stdout
    assert "--etcd" not in help_text and "--valkey" not in help_text

    # building again replaces the earlier bundle; a foreign folder is refused
    build_bundle(campaign, tmp_path / "bundle")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not an evidence bundle"):
        build_bundle(campaign, tmp_path / "other")


def test_issue_stays_under_the_limit_and_the_rest_is_in_files(tmp_path: Path) -> None:
    """A campaign with 60 strategies, a backtrace of hundreds of threads, a megabyte of
    stderr."""
    specs = [synth.CellSpec("abort_at_exit", f"pkg-0.{i}.0", 50,
                            {f"native-crash:frame{i}": 10, "pthread-exit-unwind-abort": 5,
                             "gilstate-release-not-current": 3, f"rust-panic:src/x{i}.rs": 2},
                            client_version=f"pkg==0.{i}.0") for i in range(60)]
    campaign = _campaign(tmp_path / "c", SCENARIOS / "abort_at_exit.py", "abort_at_exit",
                         specs=specs)
    huge_bt = synth.BACKTRACE * 40
    huge_err = "".join(f"  File \"/very/long/path/{'x' * 500}.py\", line {i}, in f\n"
                       for i in range(2_000))
    for folder in (campaign / "artifacts").glob("*pkg-0.59.0*"):
        (folder / "stderr.txt").write_text(huge_err)
        if (folder / "backtrace.txt").exists():
            (folder / "backtrace.txt").write_text(huge_bt)
    bundle = build_bundle(campaign, tmp_path / "bundle")
    issue = (bundle.path / "ISSUE.md").read_text()
    assert len(issue) <= ISSUE_LIMIT
    # the newest failing release, compared as versions (0.59.0 > 0.9.0), not as text
    assert bundle.choice.cell.strategy == "pkg-0.59.0"
    assert "the newest release that still fails: pkg 0.59.0" in issue
    copied = bundle.path / "artifacts" / "abort_at_exit_pkg-0.59.0_0"
    assert (copied / "stderr.txt").read_text() == huge_err  # whole, in the bundle
    assert (copied / "backtrace.txt").read_text() == huge_bt
    assert "artifacts/abort_at_exit_pkg-0.59.0_0/stderr.txt" in issue
    assert "more rows in `report.md`" in issue


def _versions_campaign(directory: Path) -> Path:
    return synth.make_campaign(directory, [
        synth.CellSpec("s", "pkg-0.9.0", 100, {"pthread-exit-unwind-abort": 40},
                       client_version="pkg==0.9.0"),
        synth.CellSpec("s", "pkg-0.10.0", 100, {"pthread-exit-unwind-abort": 3},
                       client_version="pkg==0.10.0"),
        synth.CellSpec("s", "pkg-0.11.0", 100, {}, client_version="pkg==0.11.0"),
        synth.CellSpec("t", "pkg-0.12.0", 100, {"python-exception:TypeError": 100},
                       client_version="pkg==0.12.0"),
    ])


def test_cell_choice_newest_failing_release_by_default(tmp_path: Path) -> None:
    agg = load_campaign(_versions_campaign(tmp_path))
    choice = choose_cell(agg)
    # 0.12.0 fails only during the work (its API does not fit): passed over
    assert choice.cell.strategy == "pkg-0.10.0"
    assert choice.reason == (
        "the newest release that still fails: pkg 0.10.0 (3/100 runs, 3.0% [1.0–8.5%]);"
        " newer without failures at shutdown: pkg 0.11.0 (0/100);"
        " older releases that fail too: 0.9.0;"
        " cells whose failures are all during the work were passed over")
    named = choose_cell(agg, scenario="s", strategy="pkg-0.9.0")
    assert named.cell.strategy == "pkg-0.9.0" and named.reason.startswith("named with")
    with pytest.raises(UsageError, match="no strategy 'nope'.*pkg-0.9.0"):
        choose_cell(agg, strategy="nope")
    with pytest.raises(UsageError, match="no scenario 'u'"):
        choose_cell(agg, scenario="u")
    with pytest.raises(UsageError, match="no failures for that cell"):
        choose_cell(agg, scenario="s", strategy="pkg-0.11.0")


def test_evidence_cli_names_the_cell(tmp_path: Path) -> None:
    campaign = _versions_campaign(tmp_path / "c")
    proc = subprocess.run(
        [sys.executable, "-m", "shutdown_harness", "evidence", str(campaign), "--out",
         str(tmp_path / "b"), "--strategy", "pkg-0.9.0"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cell: s x pkg-0.9.0: " in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "shutdown_harness", "evidence", str(campaign), "--out",
         str(tmp_path / "b2"), "--scenario", "nope"],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_services_are_what_the_scenario_declares(tmp_path: Path) -> None:
    agg = load_campaign(_versions_campaign(tmp_path))
    assert scenario_services(agg, "SERVICES = ('valkey',)\ndef main(): pass\n") == [
        {"name": "valkey", "env": "SHUTDOWN_HARNESS_VALKEY"}]
    assert scenario_services(agg, "SERVICES = ()\n") == []
    assert scenario_services(agg, "SERVICES = ('minio', 'etcd')\n") == [
        {"name": "minio", "env": "SHUTDOWN_HARNESS_MINIO"},
        {"name": "etcd", "env": "SHUTDOWN_HARNESS_ETCD"}]
    agg.campaign["services"] = {"minio": {"endpoint": "127.0.0.1:9", "env": "MINIO_URL"}}
    assert scenario_services(agg, "SERVICES = ['minio']\n") == [
        {"name": "minio", "env": "MINIO_URL"}]


_FILE_SCENARIO = '''"""Writes a file of its own in the working folder (as a user's scenario may),
then aborts at exit; a second run in the same folder would fail during the work."""

import atexit
import os

SERVICES = ("minio",)


def main() -> None:
    assert os.environ["SHUTDOWN_HARNESS_MINIO"] == "127.0.0.1:9000"
    with open("state.db", "x") as f:  # fails if an earlier run left it here
        f.write("x")
    atexit.register(os.abort)
'''


def test_reproducer_runs_each_child_in_a_folder_of_its_own(tmp_path: Path) -> None:
    scenario = tmp_path / "src" / "writes_file.py"
    scenario.parent.mkdir()
    scenario.write_text(_FILE_SCENARIO)
    campaign = _campaign(tmp_path / "c", scenario, "writes_file", specs=[
        synth.CellSpec("writes_file", "etcd-0.4.1", 10, {"pthread-exit-unwind-abort": 10},
                       client_version="etcd-client-py==0.4.1")])
    bundle = build_bundle(campaign, tmp_path / "b").path
    issue = (bundle / "ISSUE.md").read_text()
    assert "python reproduce.py --minio 127.0.0.1:PORT --runs 200" in issue
    assert "etcd 127.0.0.1" not in issue and "--etcd" not in issue
    alone = _alone(bundle, tmp_path / "alone")
    missing = _reproduce(alone, sys.executable, "--runs", "2")
    assert missing.returncode == 2 and "--minio" in missing.stderr
    proc = _reproduce(alone, sys.executable, "--minio", "127.0.0.1:9000", "--runs", "6",
                      "--jobs", "2")
    assert proc.stdout.splitlines()[-1] == "6/6 runs died (SIGABRT 6)", proc.stdout
    assert "during the work" not in proc.stdout
    assert not (alone / "state.db").exists()


def test_deaths_before_the_marker_are_during_the_work(tmp_path: Path) -> None:
    scenario = tmp_path / "src" / "dies_early.py"
    scenario.parent.mkdir()
    scenario.write_text("SERVICES = ()\n\ndef main():\n    raise TypeError('API changed')\n")
    campaign = _campaign(tmp_path / "c", scenario, "dies_early", specs=[
        synth.CellSpec("dies_early", "etcd-0.4.1", 10, {"python-exception:TypeError": 10},
                       client_version="etcd-client-py==0.4.1")])
    alone = _alone(build_bundle(campaign, tmp_path / "b").path, tmp_path / "alone")
    proc = _reproduce(alone, sys.executable, "--runs", "2", "--jobs", "2")
    assert "run 0: exit 1 during the work" in proc.stdout
    assert proc.stdout.splitlines()[-1] == (
        "2/2 runs died (exit 1 2; 2 of the deaths during the work, not at shutdown)")


def test_command_campaign_reproducer_runs_the_command(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path / "c", [synth.CellSpec("command", "command", 10,
                                                        {"unclassified-SIGABRT": 3})],
                        plan={"command": f"{sys.executable} -c 'import os; os.abort()'"})
    bundle = build_bundle(tmp_path / "c", tmp_path / "b").path
    proc = _reproduce(bundle, sys.executable, "--etcd", "127.0.0.1:2379", "--runs", "2",
                      "--jobs", "2")
    assert proc.returncode == 1 and "2/2 runs died (SIGABRT 2;" in proc.stdout


def test_nothing_to_report(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path / "c", [synth.CellSpec("s", "etcd-0.5.1", 10, {})])
    with pytest.raises(UsageError, match="no failures"):
        build_bundle(tmp_path / "c", tmp_path / "b")


def test_shipped_reproducer_is_a_module_of_the_package() -> None:
    """The template is real code: importable, linted and type-checked with the package."""
    assert Path(reproducer.__file__).name == "reproducer.py"
    assert re.search(r"^CONFIG: dict\[str, Any\] = \{", Path(reproducer.__file__).read_text(),
                     re.M)


@pytest.mark.slow
@pytest.mark.etcd
def test_reproducer_crashes_etcd_client_0_4_1_from_an_empty_folder(
    tmp_path: Path, etcd_endpoint: str, client_python: Callable[[str], Path]
) -> None:
    """The bundle alone, built from the real concurrent_ops scenario, with a Python that has
    only etcd-client-py 0.4.1, crashes at shutdown against a real etcd."""
    python = str(client_python("etcd-client-py==0.4.1"))
    scenario = ROOT / "scenarios" / "concurrent_ops.py"
    campaign = _campaign(tmp_path / "c", scenario, "concurrent_ops")
    alone = _alone(build_bundle(campaign, tmp_path / "bundle").path, tmp_path / "alone")
    assert sorted(p.name for p in (alone / "scenario").iterdir()) == [
        "_clients.py", "concurrent_ops.py"]
    proc = _reproduce(alone, python, "--etcd", etcd_endpoint, "--runs", "24", "--jobs", "4")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "after the work was done (at shutdown)" in proc.stdout
    assert "during the work" not in proc.stdout
    assert re.fullmatch(r"\d+/24 runs died \(.*SIGABRT \d+.*\)", proc.stdout.splitlines()[-1])


def test_scenario_path_falls_back_to_the_builtin_folder(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path, [synth.CellSpec("concurrent-ops", "a", 1, {})])
    path = scenario_path(load_campaign(tmp_path), "concurrent-ops")
    assert path == discovery.BUILTIN_DIR / "concurrent_ops.py"  # installed or source tree
    assert path.exists()


def test_command_txt_names_a_local_wheel_by_its_file_name(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path / "c", SCENARIOS / "abort_at_exit.py", "abort_at_exit", specs=[
        synth.CellSpec("abort_at_exit", "etcd-client-py-0.4.1@explicit", 10,
                       {"pthread-exit-unwind-abort": 3})])
    data = json.loads((campaign / "campaign.json").read_text())
    wheel = f"{tmp_path}/dist/etcd_client_py-0.4.1-cp311-abi3-linux_x86_64.whl"
    data["strategies"] = {"etcd-client-py-0.4.1@explicit": {
        "requirements": [wheel], "mode": "explicit", "python": "/usr/bin/python3"}}
    (campaign / "campaign.json").write_text(json.dumps(data))
    command = (build_bundle(campaign, tmp_path / "b").path / "COMMAND.txt").read_text()
    assert ("--strategy etcd_client_py-0.4.1-cp311-abi3-linux_x86_64.whl@explicit"
            in command)
    assert str(tmp_path) not in command and "put them in this folder" in command


@pytest.mark.slow
def test_reproducer_of_the_opendal_example_crashes_from_an_empty_folder(
    tmp_path: Path, client_python: Callable[[str], Path]
) -> None:
    """README "Your own package": the bundle of examples/opendal_writes.py alone, with a Python
    that has only opendal 0.47.12 and no service at all, dies at shutdown (about 1 run in 10
    here, so 80 runs miss it with p < 0.001) and never during the work."""
    python = str(client_python("opendal==0.47.12"))
    scenario = ROOT / "examples" / "opendal_writes.py"
    campaign = _campaign(tmp_path / "c", scenario, "opendal_writes", specs=[
        synth.CellSpec("opendal_writes", "opendal==0.47.12", 100,
                       {"pthread-exit-unwind-abort": 7}, client_version="opendal==0.47.12")])
    alone = _alone(build_bundle(campaign, tmp_path / "bundle").path, tmp_path / "alone")
    assert "--etcd" not in (alone / "ISSUE.md").read_text()
    proc = _reproduce(alone, python, "--runs", "80", "--jobs", "4")
    last = proc.stdout.splitlines()[-1]
    assert re.fullmatch(r"([1-9]\d*)/80 runs died \(.*\)", last), proc.stdout + proc.stderr
    assert "during the work" not in proc.stdout


_VALKEY_SCENARIO = '''"""Valkey only: a glide client sets fifty keys at once, then exits."""

import asyncio

import _clients

SERVICES = ("valkey",)


async def main() -> None:
    client = await _clients.glide_client()
    await asyncio.gather(*(client.set(f"{_clients.run_id()}/{i}", "v") for i in range(50)))
'''


@pytest.mark.slow
def test_valkey_only_reproducer_takes_valkey_and_runs_the_work(
    tmp_path: Path, valkey_endpoint: str, client_python: Callable[[str], Path]
) -> None:
    """A valkey-only scenario outside the built-in folder (it imports the built-in _clients):
    the bundle carries _clients.py, reproduce.py asks for --valkey and nothing of etcd, and
    with only valkey-glide installed and a real valkey every child gets its work done."""
    python = str(client_python("valkey-glide==2.6.0"))
    scenario = tmp_path / "mine" / "valkey_sets.py"
    scenario.parent.mkdir()
    scenario.write_text(_VALKEY_SCENARIO)
    campaign = _campaign(tmp_path / "c", scenario, "valkey_sets", specs=[
        synth.CellSpec("valkey_sets", "etcd-0.4.1", 10, {"pthread-exit-unwind-abort": 2},
                       client_version="valkey-glide==2.6.0")])
    bundle = build_bundle(campaign, tmp_path / "bundle").path
    assert sorted(p.name for p in (bundle / "scenario").iterdir()) == [
        "_clients.py", "valkey_sets.py"]
    issue = (bundle / "ISSUE.md").read_text()
    assert "python reproduce.py --valkey 127.0.0.1:PORT --runs 200" in issue
    assert "--etcd" not in issue
    alone = _alone(bundle, tmp_path / "alone")
    assert "--etcd" not in _reproduce(alone, python, "--help").stdout
    proc = _reproduce(alone, python, "--valkey", valkey_endpoint, "--runs", "6", "--jobs", "2")
    assert re.fullmatch(r"\d/6 runs died \(.*\)", proc.stdout.splitlines()[-1]), proc.stdout
    assert "during the work" not in proc.stdout, proc.stdout
