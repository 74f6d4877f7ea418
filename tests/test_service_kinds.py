"""harness/service_kinds.py: the built-in definitions, and services a project declares.

Declared services run for real here: `python -m http.server` on a free loopback port, killed
and restarted like an embedded etcd.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from _processes import gone
from shutdown_harness import service_kinds, services
from shutdown_harness.errors import UsageError
from shutdown_harness.service_kinds import BUILTIN, ETCD, VALKEY, Declared, declared, kinds

HTTP = {"command": f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1", "ready": "http"}


def test_builtin_kinds_say_what_they_export_and_how_they_run() -> None:
    assert BUILTIN == {"etcd": ETCD, "valkey": VALKEY}
    assert ETCD.env("127.0.0.1:1") == {"SHUTDOWN_HARNESS_ETCD": "127.0.0.1:1"}
    assert VALKEY.env_var == "SHUTDOWN_HARNESS_VALKEY"
    assert ETCD.modes() == ("auto", "embedded", "container")
    argv = VALKEY.embedded_argv(6390, Path("/tmp/x"))
    assert argv[0] == str(service_kinds.embedded_binary("valkey"))
    assert argv[argv.index("--bind") + 1] == "127.0.0.1" and "6390" in argv
    inside = ETCD.container_argv(41000)
    assert "--listen-client-urls=http://0.0.0.0:2379" in inside
    assert "--advertise-client-urls=http://127.0.0.1:41000" in inside


def test_a_declared_service_gets_defaults_and_its_placeholders() -> None:
    raw = {"command": ["srv", "-p{port}", "{{x}}"]}
    found = declared({"services": {"my-web": HTTP, "raw": raw}})
    web = found["my-web"]
    assert isinstance(web, Declared)
    assert web.env_var == "SHUTDOWN_HARNESS_MY_WEB" and web.modes() == ("auto", "embedded")
    assert web.ready == "http" and web.path == "/" and web.startup_timeout == 30.0
    assert web.embedded_argv(8123, Path("/d"))[-3:] == ["8123", "--bind", "127.0.0.1"]
    assert found["raw"].embedded_argv(9, Path("/d")) == ["srv", "-p9", "{x}"]
    assert found["raw"].env_var == "SHUTDOWN_HARNESS_RAW"
    assert list(kinds({"services": {"raw": {"command": "s {port}"}}})) == ["etcd", "valkey", "raw"]
    assert service_kinds.kind("etcd") is ETCD


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, "missing command"),
        ({"command": 7}, "command must be a string or a list of strings"),
        ({"command": ""}, "command is empty"),
        ({"command": "srv --port {port} --data {data}"}, "unknown placeholder {data}"),
        ({"command": "srv --port {port!r}"}, "unknown placeholder {port}"),
        ({"command": "srv --port 80"}, "command must listen on {port}"),
        ({"command": "srv {port}", "ready": "udp"}, 'ready must be "tcp" or "http"'),
        ({"command": "srv {port}", "ready": "http", "path": "health"}, "path must be a string"),
        ({"command": "srv {port}", "path": "/x"}, 'path is for ready = "http"'),
        ({"command": "srv {port}", "env": "NOT A NAME"}, "env must be an environment variable"),
        ({"command": "srv {port}", "timeout": -1}, "timeout must be a positive number"),
        ({"command": "srv {port}", "timeout": True}, "timeout must be a positive number"),
        ({"command": "srv {port}", "comand": "x"}, "unknown key 'comand'"),
        ({"command": "srv {port}", "env": "SHUTDOWN_HARNESS_ETCD"}, "two services export"),
        ("srv {port}", "must be a table"),
    ],
)
def test_bad_declarations_are_one_line_usage_errors(entry: Any, message: str) -> None:
    with pytest.raises(UsageError) as info:
        declared({"services": {"web": entry}})
    text = str(info.value)
    assert "\n" not in text and message in text and "[tool.shutdown-harness.services" in text


@pytest.mark.parametrize(("name", "message"), [("etcd", "is built in"), ("Web", "lower-case")])
def test_bad_service_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        declared({"services": {name: {"command": "srv {port}"}}})


def test_unknown_service_names_where_to_declare_it() -> None:
    with pytest.raises(UsageError, match=r"tool.shutdown-harness.services.kafka"):
        services.ServiceSet({"kafka": "embedded"})


def test_a_declared_service_has_no_container_mode() -> None:
    web = declared({"services": {"web": HTTP}})["web"]
    with pytest.raises(UsageError, match="no container image"):
        services.parse_how(web, "container")
    assert services.parse_how(web, "auto") == ("auto", None)
    assert services.parse_how(web, "127.0.0.1:80") == ("external", "127.0.0.1:80")


def test_declared_http_service_runs_on_loopback_is_checked_killed_and_restarted() -> None:
    web = declared({"services": {"web": {**HTTP, "path": "/"}}})["web"]
    with services.start(web, "auto") as service:
        assert isinstance(service, services.EmbeddedService)
        assert service.endpoint.startswith("127.0.0.1:")
        assert "SimpleHTTP" in service.version  # the Server header of the answer
        assert service.describe()["env"] == "SHUTDOWN_HARNESS_WEB"
        endpoint, pid, folder = service.endpoint, service.pid, service.log_path.parent
        assert pid is not None and service.healthy()
        os.kill(pid, signal.SIGKILL)
        assert gone(pid) and not service.healthy()
        service.restart()
        assert service.healthy() and service.endpoint == endpoint and service.restarts == 1
        with services.start(web, endpoint) as external:  # --web HOST:PORT: checked, not ours
            assert external.mode == "external" and external.healthy()
        assert service.healthy()
        new_pid = service.pid
    assert new_pid is not None and gone(new_pid)
    assert not folder.exists()
    assert not web.ping(endpoint, 0.5)


def test_a_tcp_service_with_its_dir_placeholder(tmp_path: Path) -> None:
    # {dir} is the service's private folder: the server serves it, and it is gone afterwards.
    command = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "-d", "{dir}"]
    tcp = declared({"services": {"files": {"command": command, "env": "FILES_AT"}}})["files"]
    with services.start(tcp, "embedded") as service:
        assert service.version == "?" and service.healthy()
        assert tcp.env(service.endpoint) == {"FILES_AT": service.endpoint}
        assert service.describe()["binary"] == sys.executable


def test_a_command_that_listens_beyond_loopback_is_refused() -> None:
    command = f"{sys.executable} -m http.server {{port}} --bind 0.0.0.0"
    wide = declared({"services": {"wide": {"command": command}}})["wide"]
    with pytest.raises(services.ServiceError, match="listens beyond 127.0.0.1"):
        services.start(wide, "embedded")


def test_a_command_that_never_becomes_ready_says_why() -> None:
    broken = declared(
        {"services": {"broken": {"command": f"{sys.executable} -c 'raise SystemExit(3)' {{port}}"}}}
    )["broken"]
    with pytest.raises(services.ServiceError, match="exited with 3"):
        services.start(broken, "embedded")
