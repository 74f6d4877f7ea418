"""A service that freezes, dies or moves is never charged to the client (issue 14, 6-8).

A real embedded etcd, a stdlib-only scenario (tests/fixtures/hostile/etcd_put.py): every run
that is not clean must be ``infra``, and only with evidence.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCENARIO = Path(__file__).parent / "fixtures" / "hostile" / "etcd_put.py"
HARNESS = [sys.executable, "-m", "shutdown_harness"]
HOST = f"""[tool.shutdown-harness.strategies.host]
requirements = []
python = "{sys.executable}"
mode = "none"
"""

pytestmark = pytest.mark.slow


def _records(folder: Path) -> list[dict]:
    path = folder / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _etcd_of(harness: int) -> int:
    """The embedded etcd the harness started (its child, in a session of its own)."""
    for _ in range(600):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
                cmd = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            if ppid == harness and b"etcd" in cmd.split(b"\0")[0]:
                return int(name)
        time.sleep(0.1)
    raise AssertionError("no embedded etcd under the harness")


def _start(tmp_path: Path, runs: int) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "pyproject.toml").write_text(HOST)
    out = tmp_path / "c"
    harness = subprocess.Popen(
        [*HARNESS, "run", "--scenario", str(SCENARIO), "--strategy", "host", "--etcd",
         "embedded", "--runs", str(runs), "--jobs", "2", "--out", str(out), "--cores", "off"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return harness, out


def _wait_records(out: Path, count: int, harness: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180
    while len(_records(out)) < count:
        assert harness.poll() is None, harness.communicate()[0]
        assert time.monotonic() < deadline, "the campaign does not advance"
        time.sleep(0.1)


def _judged(out: Path, output: str) -> list[dict]:
    records = _records(out)
    wrong = [(r["category"], r["signature"], r.get("notes")) for r in records
             if r["category"] not in ("clean", "infra")]
    assert not wrong, f"{wrong}\n{output}"
    return records


def test_a_frozen_etcd_makes_infra_runs_never_failures(tmp_path: Path) -> None:
    harness, out = _start(tmp_path, 40)
    try:
        etcd = _etcd_of(harness.pid)
        _wait_records(out, 4, harness)
        os.kill(etcd, signal.SIGSTOP)  # frozen: connections hang, health checks time out
        time.sleep(14)  # longer than a run's timeout, grace and health check (6 + 2 + 2 s)
        try:
            os.kill(etcd, signal.SIGCONT)  # if the harness has not replaced it yet
        except ProcessLookupError:
            pass
        output, _ = harness.communicate(timeout=300)
    finally:
        harness.kill()
    assert harness.returncode in (0, 1), output
    records = _judged(out, output)
    assert len(records) == 40
    infra = [r for r in records if r["category"] == "infra"]
    assert infra, output
    assert all(r["signature"] == "infra-service-down:etcd" for r in infra)
    notes = [n for r in infra for n in r["notes"]]
    assert any("did not answer within 2 s" in n for n in notes), notes  # the evidence
    assert any("was down from" in n for n in notes), notes  # runs within the outage window


def test_after_a_restart_on_another_port_runs_go_to_the_new_one(tmp_path: Path) -> None:
    harness, out = _start(tmp_path, 30)
    blocker = socket.socket()
    try:
        etcd = _etcd_of(harness.pid)
        _wait_records(out, 4, harness)
        campaign = json.loads((out / "campaign.json").read_text())
        port = int(campaign["services"]["etcd"]["endpoint"].rsplit(":", 1)[1])
        # Stopped first, so that no run fails (and no restart begins) before the port is taken.
        os.kill(etcd, signal.SIGSTOP)
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        os.kill(etcd, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:  # take its port: the new etcd must go elsewhere (a run sent here hangs)
            try:
                blocker.bind(("127.0.0.1", port))
                blocker.listen()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        output, _ = harness.communicate(timeout=300)
    finally:
        harness.kill()
        blocker.close()
    assert harness.returncode in (0, 1), output
    records = _judged(out, output)
    assert len(records) == 30
    assert [r for r in records if r["category"] == "infra"], output
    assert "restarted at 127.0.0.1:" in output and f":{port} " not in output.split("restarted")[-1]


def test_connection_refused_with_a_healthy_service_is_the_clients_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(HOST)
    refused = Path(__file__).parent / "fixtures" / "hostile" / "refused.py"
    result = subprocess.run(
        [*HARNESS, "run", "--scenario", str(refused), "--strategy", "host", "--etcd",
         "embedded", "--runs", "2", "--jobs", "1", "--out", str(tmp_path / "c"), "--cores",
         "off"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    records = _records(tmp_path / "c")
    assert len(records) == 2, result.stdout + result.stderr
    for record in records:
        assert record["category"] == "error"
        assert record["signature"] == "python-exception:ConnectionRefusedError"
        assert any("answered its health check after this run" in n for n in record["notes"])
