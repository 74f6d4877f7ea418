"""Cached uv virtualenvs: real builds (about a second each with uv's warm cache), reuse,
rebuild on a changed spec, crash safety and concurrent builders."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from shutdown_harness import strategies, virtualenv
from shutdown_harness.errors import UsageError

CONFIG = {"clients": {"etcd-client-py": {"module": "etcd_client", "cleanup": "cleanup_runtime"}}}
ROOT = Path(__file__).resolve().parent.parent


def _strategy(spec: str) -> strategies.Strategy:
    return strategies.parse_inline(spec, CONFIG)


def _version_in(python: Path, module: str = "etcd_client") -> str:
    code = "from importlib.metadata import version; print(version('etcd-client-py'))"
    done = subprocess.run([str(python), "-c", f"import {module}; {code}"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_build_then_reuse_then_share_between_modes(tmp_path: Path) -> None:
    messages: list[str] = []
    strategy = _strategy("etcd-client-py==0.5.1")
    python = virtualenv.ensure(strategy, tmp_path, messages.append)
    assert python == virtualenv.venv_dir(strategy, tmp_path) / "bin" / "python"
    assert _version_in(python) == "0.5.1"
    assert any("installing etcd-client-py==0.5.1" in m for m in messages)
    assert "virtualenv ready" in messages[-1] and "etcd-client-py 0.5.1" in messages[-1]

    record = json.loads((python.parent.parent / virtualenv.MARKER_FILE).read_text())
    assert record["versions"]["etcd-client-py"] == "0.5.1"
    assert record["hash"] == virtualenv.spec_hash(_strategy("etcd-client-py==0.5.1"))

    again: list[str] = []
    same = virtualenv.ensure(_strategy("etcd-client-py==0.5.1@atexit"), tmp_path, again.append)
    assert same == python and len(again) == 1 and "reusing" in again[0]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [
        python.parent.parent.name
    ]


def test_a_changed_spec_builds_another_venv(tmp_path: Path) -> None:
    first = virtualenv.ensure(_strategy("etcd-client-py==0.5.1"), tmp_path)
    second = virtualenv.ensure(_strategy("etcd-client-py==0.4.1"), tmp_path)
    assert first != second
    assert (_version_in(first), _version_in(second)) == ("0.5.1", "0.4.1")


def test_half_built_leftovers_are_never_taken_for_a_venv(tmp_path: Path) -> None:
    strategy = _strategy("etcd-client-py==0.4.1")
    target = virtualenv.venv_dir(strategy, tmp_path)
    # what a build killed before its rename leaves, and a folder without the record
    stale = tmp_path / f".{target.name}.tmp-123-deadbeef"
    (stale / "bin").mkdir(parents=True)
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "python").symlink_to(sys.executable)
    messages: list[str] = []
    python = virtualenv.ensure(strategy, tmp_path, messages.append)
    assert not any("reusing" in m for m in messages)
    assert _version_in(python) == "0.4.1"
    assert not stale.exists()


def test_a_failed_build_leaves_nothing_and_says_why(tmp_path: Path) -> None:
    strategy = _strategy("etcd-client-py==0.0.999")
    with pytest.raises(UsageError, match="cannot build the virtualenv of strategy") as e:
        virtualenv.ensure(strategy, tmp_path)
    assert "0.0.999" in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from shutdown_harness import strategies, virtualenv
        strategy = strategies.parse_inline("etcd-client-py==0.4.1", {{}})
        python = virtualenv.ensure(strategy, Path({str(tmp_path)!r}), lambda m: print(m))
        print("PYTHON", python)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(out.count("installing") for out in outputs) == 1, outputs
    assert sum(out.count("reusing") for out in outputs) == 2, outputs
    pythons = {line for out in outputs for line in out.splitlines() if line.startswith("PYTHON")}
    assert len(pythons) == 1


def test_installed_versions_from_record_or_from_the_interpreter(tmp_path: Path) -> None:
    python = virtualenv.ensure(_strategy("etcd-client-py==0.4.1"), tmp_path)
    assert virtualenv.installed_versions(python) == {
        "etcd-client-py": "0.4.1",
        "python": platform.python_version(),
    }
    host = virtualenv.installed_versions(Path(sys.executable))
    assert host["python"] == platform.python_version()
    assert host["filelock"]  # a package of the harness's own environment, PEP 503 named


def test_cache_root_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHUTDOWN_HARNESS_CACHE", str(tmp_path / "c"))
    assert virtualenv.cache_root() == tmp_path / "c" / "venvs"
    monkeypatch.delenv("SHUTDOWN_HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert virtualenv.cache_root() == tmp_path / "x" / "shutdown-harness" / "venvs"
    assert virtualenv.cache_root(tmp_path / "given") == tmp_path / "given"


def test_spec_hash_covers_packages_and_python_not_mode() -> None:
    base = strategies.parse_inline("etcd-client-py==0.5.1", CONFIG)
    h = virtualenv.spec_hash
    assert h(base) == h(strategies.parse_inline("etcd-client-py==0.5.1@atexit", CONFIG))
    assert h(base) != h(strategies.parse_inline("etcd-client-py==0.5.0", CONFIG))
    other_python = strategies.Strategy("p", base.requirements, python="3.12")
    assert h(base) != h(other_python)
    a = strategies.parse_inline("a==1+b==2", CONFIG)
    assert h(a) == h(strategies.parse_inline("b==2+a==1", CONFIG))
    assert len(h(base)) == 12
