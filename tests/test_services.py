"""harness/services.py: embedded servers, external endpoints, health checks, restarts, cleanup.

Every server here is real (the wheels' etcd and valkey-server); failures are real too (a
SIGKILLed or SIGSTOPped server, a closed port, a harness killed with SIGINT or SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _processes import gone
from shutdown_harness import service_kinds, services
from shutdown_harness.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets LISTENing on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":
                    found.add(address)
    return found


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("auto", ("auto", None)),
        ("Embedded", ("embedded", None)),
        ("container", ("container", None)),
        ("127.0.0.1:2379", ("external", "127.0.0.1:2379")),
        ("http://etcd.example:2379/", ("external", "etcd.example:2379")),
        ("[::1]:6379", ("external", "[::1]:6379")),
    ],
)
def test_parse_how_accepts_modes_and_endpoints(how: str, expected: tuple[str, str | None]) -> None:
    assert services.parse_how("etcd", how) == expected


@pytest.mark.parametrize(
    "how", ["", "docker", "localhost", "host:", "host:0", "host:70000", ":2379"]
)
def test_parse_how_rejects_anything_else_with_one_line(how: str) -> None:
    with pytest.raises(UsageError) as info:
        services.parse_how("etcd", how)
    assert "\n" not in str(info.value) and "--etcd" in str(info.value)


def test_unknown_service_kind_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown service"):
        services.ServiceSet({"postgres": "embedded"})


@pytest.mark.parametrize(("kind", "version"), [("etcd", "3.5."), ("valkey", "")])
def test_embedded_binaries_come_from_the_installed_wheels(kind: str, version: str) -> None:
    binary = services.embedded_binary(kind)
    assert binary.read_bytes()[:4] == b"\x7fELF" and os.access(binary, os.X_OK)
    assert "site-packages" in str(binary) or "dist-packages" in str(binary)
    assert services.binary_version(binary).startswith(version)
    assert services.binary_version(binary) != "?"


@pytest.mark.etcd
def test_etcd_fixture_serves_real_puts_on_loopback_only(etcd_service: services.Service) -> None:
    host, port = etcd_service.endpoint.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert services.check("etcd", etcd_service.endpoint).startswith("3.5.")
    assert etcd_service.healthy()
    assert _listening_addresses(int(port)) == {"0100007F"}  # 127.0.0.1, nothing else


@pytest.mark.etcd
def test_embedded_etcd_killed_mid_use_is_detected_and_restarted() -> None:
    with services.EmbeddedService("etcd") as etcd:
        endpoint, pid, folder = etcd.endpoint, etcd.pid, etcd.log_path.parent
        assert pid is not None and etcd.healthy()
        os.kill(pid, signal.SIGKILL)
        assert gone(pid)
        started = time.monotonic()
        assert not etcd.healthy()
        assert time.monotonic() - started < 1.0  # cheap: a dead process needs no network
        etcd.restart()
        assert etcd.healthy() and etcd.pid != pid
        assert etcd.endpoint == endpoint  # same port: children's environment stays valid
        assert services.check("etcd", etcd.endpoint).startswith("3.5.")
        described = etcd.describe()
        assert described["mode"] == "embedded" and described["restarts"] == 1
        assert described["binary"] == str(services.embedded_binary("etcd"))
        new_pid = etcd.pid
    assert new_pid is not None and gone(new_pid)
    assert not folder.exists()  # the private data dir is removed
    assert not services.ping("etcd", endpoint, timeout=0.5)


def test_embedded_valkey_hung_then_killed_is_detected_and_restarted() -> None:
    with services.EmbeddedService("valkey") as valkey:
        assert valkey.check() != "?" and valkey.healthy()
        pid = valkey.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive, port open, but not answering
        started = time.monotonic()
        assert not valkey.healthy()
        assert time.monotonic() - started < 8.0
        valkey.restart()  # must get rid of the stopped process, not wait on it forever
        assert gone(pid) and valkey.healthy() and valkey.restarts == 1
        pid = valkey.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert gone(pid) and not valkey.healthy()
        valkey.restart()
        assert valkey.healthy() and valkey.restarts == 2
        assert _listening_addresses(int(valkey.endpoint.rsplit(":", 1)[1])) == {"0100007F"}


@pytest.mark.etcd
def test_external_endpoint_is_checked_and_used_as_given(etcd_endpoint: str) -> None:
    with services.start("etcd", etcd_endpoint) as etcd:
        assert etcd.mode == "external" and etcd.endpoint == etcd_endpoint
        assert etcd.healthy() and etcd.describe()["version"].startswith("3.5.")
    assert services.ping("etcd", etcd_endpoint)  # not ours: stopping leaves it running


@pytest.mark.parametrize("kind", ["etcd", "valkey"])
def test_unreachable_external_endpoint_is_a_one_line_usage_error(kind: str) -> None:
    port = _closed_port()
    with pytest.raises(UsageError) as info:
        services.start(kind, f"127.0.0.1:{port}")
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and f"--{kind}" in message


def test_external_endpoint_that_stays_down_cannot_be_restarted() -> None:
    with services.EmbeddedService("valkey") as valkey:
        external = services.ExternalService("valkey", valkey.endpoint, wait_for_return=0.5)
        valkey.stop()
        assert not external.healthy()
        with pytest.raises(services.ServiceError, match="not ours to restart"):
            external.restart()


def test_auto_without_engine_uses_the_embedded_binary_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with services.ServiceSet({"valkey": "auto"}) as found:
        described = found.describe()["valkey"]
        assert described["mode"] == "embedded" and described["requested"] == "auto"
        assert "no container engine" in described["notes"][0]
        assert found.env() == {"SHUTDOWN_HARNESS_VALKEY": found.endpoints()["valkey"]}


@pytest.mark.etcd
def test_service_set_starts_all_restarts_one_and_stops_all() -> None:
    said: list[str] = []
    with services.ServiceSet({"etcd": "embedded", "valkey": "embedded"}, log=said.append) as s:
        assert set(s.env()) == {"SHUTDOWN_HARNESS_ETCD", "SHUTDOWN_HARNESS_VALKEY"}
        assert s.healthy() == {"etcd": True, "valkey": True}
        valkey = s["valkey"]
        assert isinstance(valkey, services.EmbeddedService) and valkey.pid is not None
        os.kill(valkey.pid, signal.SIGKILL)
        assert gone(valkey.pid)
        assert s.healthy() == {"etcd": True, "valkey": False}
        s.restart("valkey")
        assert s.healthy() == {"etcd": True, "valkey": True}
        assert s.describe()["valkey"]["restarts"] == 1 and s.describe()["etcd"]["restarts"] == 0
        pids = [svc.pid for svc in s.services.values() if isinstance(svc, services.EmbeddedService)]
    assert all(gone(pid) for pid in pids)
    assert any("restarted" in line for line in said) and any("ready at" in line for line in said)


_HOLDER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {root!r})
    from shutdown_harness import services
    with services.ServiceSet({{"etcd": "embedded", "valkey": "embedded"}}) as s:
        print(json.dumps({{k: [s[k].pid, str(s[k].log_path.parent)] for k in s}}), flush=True)
        time.sleep(60)
    """
)


def _holder() -> tuple[subprocess.Popen[str], dict[str, list[object]]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER.format(root=str(ROOT))],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    held: dict[str, list[object]] = json.loads(proc.stdout.readline())
    return proc, held


def test_ctrl_c_stops_the_servers_and_removes_their_data() -> None:
    proc, held = _holder()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) != 0  # KeyboardInterrupt went through the with-block
    for pid, folder in held.values():
        assert isinstance(pid, int) and gone(pid)
        assert not Path(str(folder)).exists()


def test_servers_of_a_killed_harness_are_reaped_by_the_next_one() -> None:
    proc, held = _holder()
    proc.kill()  # SIGKILL: no finally, no atexit
    proc.wait(timeout=10)
    for pid, _ in held.values():
        assert isinstance(pid, int) and not gone(pid, within=0.2)  # orphans still running
    with services.EmbeddedService("valkey"):
        for pid, folder in held.values():
            assert isinstance(pid, int) and gone(pid)
            assert not Path(str(folder)).exists()


@pytest.mark.etcd
def test_sanity_scenario_puts_and_reads_back_through_the_real_client(
    etcd_endpoint: str, client_python: Callable[[str], Path]
) -> None:
    python = str(client_python("etcd-client-py==0.5.1"))
    run = (
        "import asyncio, runpy, sys; m = runpy.run_path(sys.argv[1]);"
        "assert m['applicable']() is None; asyncio.run(m['main']()); print('ok')"
    )
    env = {**os.environ, "SHUTDOWN_HARNESS_ETCD": etcd_endpoint, "SHUTDOWN_HARNESS_RUN_ID": "t/s/0"}
    done = subprocess.run(
        [python, "-c", run, str(ROOT / "scenarios" / "sanity.py")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode in (0, -signal.SIGSEGV, -signal.SIGABRT), done.stderr
    assert "ok" in done.stdout, done.stderr  # the work itself succeeded; exit is the client's
    got = service_kinds._etcd_call(
        etcd_endpoint,
        "/v3/kv/range",
        {"key": "c2h1dGRvd24taGFybmVzcy9zYW5pdHkvdC9zLzA="},  # shutdown-harness/sanity/t/s/0
        5.0,
    )
    assert len(got.get("kvs", [])) == 1
