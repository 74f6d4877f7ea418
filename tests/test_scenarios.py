"""Scenario discovery (ast, no import), name/path resolution, probing, and every built-in
scenario run for real under the child wrapper against a real etcd (and valkey)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from shutdown_harness import MARKER, discovery
from shutdown_harness.errors import UsageError

#: Every scenario the issue asks for (sanity.py is written elsewhere and checked too).
EXPECTED = {
    "active_watch",
    "concurrent_ops",
    "rapid_client_creation",
    "watch_and_concurrent_ops",
    "ultra_rapid",
    "etcd_and_valkey",
    "multi_async_tasks",
    "multi_threaded",
    "mixed_concurrency",
    "lease_keepalive_at_exit",
    "lock_held_at_exit",
    "pending_futures_at_exit",
    "daemon_thread_inflight",
    "exception_exit",
    "signal_exit",
}


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# -- discovery -----------------------------------------------------------------------------
def test_builtin_lists_every_scenario_with_its_contract() -> None:
    infos = {info.name: info for info in discovery.builtin()}
    assert EXPECTED <= set(infos)
    assert not any(name.startswith("_") for name in infos)  # _clients.py is a helper
    for info in infos.values():
        assert info.summary and not info.summary.endswith("\n"), info.name
        assert info.description, f"{info.name}: docstring needs a description"
        assert set(info.services) <= set(discovery.KNOWN_SERVICES) and info.services
        assert info.runs >= 1 and info.timeout > 0
        assert info.path == discovery.BUILTIN_DIR / f"{info.name}.py"
    assert infos["etcd_and_valkey"].services == ("etcd", "valkey")
    assert infos["concurrent_ops"].runs == 300 and infos["concurrent_ops"].timeout == 15.0


def test_read_never_imports_the_scenario(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mine.py",
        '''
        """My scenario.

        What it does, at length."""
        import does_not_exist_anywhere
        raise SystemExit("imported!")
        SERVICES = ("etcd", "valkey")
        RUNS: int = 7
        TIMEOUT = 2
        async def main():
            pass
        ''',
    )
    info = discovery.read(path)
    assert info == discovery.ScenarioInfo(
        name="mine",
        path=path,
        summary="My scenario.",
        description="What it does, at length.",
        services=("etcd", "valkey"),
        runs=7,
        timeout=2.0,
    )


def test_read_defaults_for_a_bare_user_script(tmp_path: Path) -> None:
    info = discovery.read(_write(tmp_path, "bare.py", "def main():\n    pass\n"))
    assert (info.summary, info.services, info.runs, info.timeout) == (
        "",
        discovery.DEFAULT_SERVICES,
        discovery.DEFAULT_RUNS,
        discovery.DEFAULT_TIMEOUT,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def main(:\n", "syntax error at line 1"),
        ("x = 1\n", "defines no main()"),
        ("RUNS = 0\ndef main(): pass\n", "RUNS must be a positive integer"),
        ("RUNS = True\ndef main(): pass\n", "RUNS must be a positive integer"),
        ("TIMEOUT = -1\ndef main(): pass\n", "TIMEOUT must be a positive number"),
        ("SERVICES = ('etcd', 'kafka')\ndef main(): pass\n", "unknown service 'kafka'"),
        ("SERVICES = make()\ndef main(): pass\n", "SERVICES must be a literal"),
    ],
)
def test_read_rejects_a_broken_scenario_in_one_line(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as e:
        discovery.read(_write(tmp_path, "broken.py", body))
    assert "\n" not in str(e.value)


# -- resolve -------------------------------------------------------------------------------
def test_resolve_names_commas_paths_in_order_once(tmp_path: Path) -> None:
    mine = _write(tmp_path, "my_case.py", "async def main(): pass\n")
    infos = discovery.resolve(["ultra_rapid,concurrent_ops", str(mine), " ultra_rapid ", ""])
    assert [i.name for i in infos] == ["ultra_rapid", "concurrent_ops", "my_case"]
    assert infos[2].path == mine.resolve()


def test_resolve_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UsageError, match=r"unknown scenario 'concurent_ops' \(did you mean "
                       r"concurrent_ops") as e:
        discovery.resolve(["concurent_ops"])
    assert "shutdown-harness list" in str(e.value)
    with pytest.raises(UsageError, match=r"unknown scenario 'zzz'; "):
        discovery.resolve(["zzz"])


def test_resolve_rejects_missing_and_non_python_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="scenario file not found"):
        discovery.resolve([str(tmp_path / "nope.py")])
    text = _write(tmp_path, "notes.txt", "def main(): pass\n")
    with pytest.raises(UsageError, match="not a .py file"):
        discovery.resolve([str(text)])


def test_resolve_refuses_two_files_with_one_name(tmp_path: Path) -> None:
    clash = _write(tmp_path, "concurrent_ops.py", "def main(): pass\n")
    with pytest.raises(UsageError, match="two scenarios are named 'concurrent_ops'"):
        discovery.resolve(["concurrent_ops", str(clash)])


# -- probe ---------------------------------------------------------------------------------
def test_probe_reports_applicable_reason_and_missing_module(tmp_path: Path) -> None:
    python = Path(sys.executable)
    ok = discovery.read(_write(tmp_path, "ok.py", "def main(): pass\n"))
    assert discovery.probe(ok, python) is None
    no = discovery.read(
        _write(tmp_path, "no.py", "def applicable():\n    return 'needs X'\ndef main(): pass\n")
    )
    assert discovery.probe(no, python) == "needs X"
    imports = discovery.read(
        _write(tmp_path, "imp.py", "import no_such_client_lib\ndef main(): pass\n")
    )
    assert discovery.probe(imports, python) == "No module named 'no_such_client_lib'"
    boom = discovery.read(_write(tmp_path, "boom.py", "1 / 0\ndef main(): pass\n"))
    with pytest.raises(UsageError, match="ZeroDivisionError"):
        discovery.probe(boom, python)


# -- every built-in scenario, for real ------------------------------------------------------
RUNS_EACH = 3
#: Scenarios that end the child on purpose: their expected (non-clean) outcome.
DELIBERATE = {"exception_exit", "signal_exit"}
#: A client context left open at exit defeats 0.5.1's reference-counted cleanup: these crash in
#: a few percent (lock_held_at_exit) to tens of percent (daemon_thread_inflight) of runs.
KNOWN_TO_CRASH_ON_051 = {"daemon_thread_inflight", "lock_held_at_exit"}
FINALIZATION_SIGNALS = {-6, -7, -11}  # SIGABRT, SIGBUS, SIGSEGV
#: Threads each with their own event loop: 0.5.1's reference count of client contexts can hit
#: zero in one thread while another thread's request is in flight, and the runtime shuts down
#: under it ("Service was not ready: transport error", or a future that never completes and a
#: thread that never ends). Seen here in 1-3% of runs under load (harness campaign, 8 jobs).
KNOWN_RACY_ON_051 = {"multi_threaded", "mixed_concurrency"}
RACE_SIGNS = ("Service was not ready", "did not finish in")


@pytest.fixture(scope="module")
def python_051(client_python: Callable[[str], Path]) -> Path:
    """etcd-client-py 0.5.1 with valkey-glide, so that every scenario is applicable."""
    return client_python("etcd-client-py==0.5.1+valkey-glide==2.6.0")


def _run(python: Path, info: discovery.ScenarioInfo, env: dict[str, str], index: int):
    env = {**env, "SHUTDOWN_HARNESS_RUN_ID": f"{info.name}/test/{index}"}
    argv = [str(python), str(discovery.CHILD), str(info.path), "--mode", "none"]
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=info.timeout)
    except subprocess.TimeoutExpired as e:  # a hung child: killed by subprocess.run
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(argv, None, out, err + "\n(timed out)")


def _describe(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-800:]}\nstderr:\n{done.stderr[-2500:]}"


@pytest.mark.etcd
@pytest.mark.parametrize("name", sorted(info.name for info in discovery.builtin()))
def test_every_scenario_runs_on_051(
    name: str, python_051: Path, etcd_endpoint: str, request: pytest.FixtureRequest
) -> None:
    info = discovery.resolve([name])[0]
    env = {**os.environ, "SHUTDOWN_HARNESS_ETCD": etcd_endpoint, "SHUTDOWN_HARNESS_SEED": "7"}
    if "valkey" in info.services:
        env["SHUTDOWN_HARNESS_VALKEY"] = request.getfixturevalue("valkey_endpoint")
    assert discovery.probe(info, python_051, env) is None

    with ThreadPoolExecutor(RUNS_EACH) as pool:
        runs = list(pool.map(lambda i: _run(python_051, info, env, i), range(RUNS_EACH)))
    for done in runs:
        marker = MARKER in done.stdout
        if name == "exception_exit":
            assert (done.returncode, marker) == (1, False), _describe(done)
            assert "ScenarioError: deliberate application error" in done.stderr
        elif name == "signal_exit":
            assert not marker, _describe(done)
            assert done.returncode in (1, -2), _describe(done)
            if done.returncode == 1:  # SIGTERM, handled as a service would
                assert "Terminated: stopped by SIGTERM" in done.stderr
            else:  # SIGINT: KeyboardInterrupt, then Python re-raises SIGINT on itself
                assert done.stderr.rstrip().endswith("KeyboardInterrupt"), _describe(done)
        elif name in KNOWN_RACY_ON_051 and (done.returncode, marker) != (0, True):
            assert any(sign in done.stderr for sign in RACE_SIGNS), _describe(done)
        elif name in KNOWN_TO_CRASH_ON_051:
            assert marker, _describe(done)  # the work completes; only finalization may crash
            assert done.returncode == 0 or done.returncode in FINALIZATION_SIGNALS, _describe(
                done
            )
        else:
            assert (done.returncode, marker) == (0, True), _describe(done)
    if name in KNOWN_RACY_ON_051:  # the scenario itself works: at least one run is clean
        assert any(d.returncode == 0 and MARKER in d.stdout for d in runs)
    if name == "signal_exit":  # seed 7 picks SIGINT, SIGTERM, SIGINT for runs 0, 1, 2
        assert sorted(done.returncode for done in runs) == [-2, -2, 1]


def test_expectations_name_real_scenarios() -> None:
    names = {info.name for info in discovery.builtin()}
    assert DELIBERATE | KNOWN_TO_CRASH_ON_051 | KNOWN_RACY_ON_051 <= names
