"""One cached uv virtualenv per strategy's packages.

A strategy's virtualenv lives in ``~/.cache/shutdown-harness/venvs/<packages>-<hash>/``
(``$SHUTDOWN_HARNESS_CACHE/venvs/`` when set), where the hash covers what the environment
depends on: the requirements and the Python (not the cleanup mode, so ``etcd-0.5.1`` and
``etcd-0.5.1-explicit`` share one). It is reused by every campaign while the hash matches; a
changed spec has another hash, hence a fresh build.

A build goes into a temporary folder beside the cache entry and is renamed into place once
complete (``uv venv --relocatable`` makes that safe), so a build killed halfway never leaves a
folder that looks valid; a file lock makes concurrent builders (pytest-xdist workers, two
campaigns) wait for one build instead of racing. The installed versions are recorded in the
venv folder (``shutdown-harness.json``), read back by ``installed_versions``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shutdown_harness.errors import UsageError

if TYPE_CHECKING:
    from shutdown_harness.strategies import Strategy

__all__ = ["MARKER_FILE", "cache_root", "venv_dir", "ensure", "installed_versions", "spec_hash",
           "find_python"]

MARKER_FILE = "shutdown-harness.json"
_SPEC_FORMAT = 1  # bump to rebuild every cached virtualenv
_LOCK_TIMEOUT_S = 900.0
_UV_TIMEOUT_S = 900.0
_VERSIONS_SCRIPT = """
import json, platform, re
from importlib import metadata
versions = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name:
        versions[re.sub(r"[-_.]+", "-", name).lower()] = dist.version
versions["python"] = platform.python_version()
print(json.dumps(versions, sort_keys=True))
"""


def cache_root(cache_dir: Path | None = None) -> Path:
    """The folder holding the cached virtualenvs."""
    if cache_dir is not None:
        return Path(cache_dir)
    configured = os.environ.get("SHUTDOWN_HARNESS_CACHE")
    if configured:
        return Path(configured).expanduser() / "venvs"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "shutdown-harness" / "venvs"


def spec_hash(strategy: Strategy) -> str:
    """What the strategy's virtualenv depends on (packages and Python, not the mode), hashed."""
    if strategy.python is None:
        python = f"{sys.base_prefix}|{sys.version}"
    else:
        python = strategy.python
    payload = json.dumps(
        {"format": _SPEC_FORMAT, "requirements": sorted(strategy.requirements), "python": python},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _slug(strategy: Strategy) -> str:
    text = "+".join(strategy.requirements) or "python"
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-")[:80] or "venv"


def venv_dir(strategy: Strategy, cache_dir: Path | None = None) -> Path:
    """Where the strategy's virtualenv is (or will be) cached."""
    return cache_root(cache_dir) / f"{_slug(strategy)}-{spec_hash(strategy)}"


def _python_of(folder: Path) -> Path:
    return folder / "bin" / "python"


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _valid(folder: Path, digest: str) -> bool:
    marker = _read_marker(folder)
    return (
        marker is not None
        and marker.get("hash") == digest
        and _python_of(folder).exists()  # also false when the base interpreter is gone
    )


def find_python(spec: str) -> str:
    """``--python PATH|VERSION`` -> the path of that interpreter (uv finds it: a path, or a
    version among the installed ones); UsageError when this machine has none."""
    try:
        done = subprocess.run([_uv(), "python", "find", "--no-project", spec],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"--python {spec}: cannot ask uv: {e}") from None
    lines = done.stdout.strip().splitlines()
    path = lines[-1].strip() if lines else ""
    if done.returncode != 0 or not path or not os.access(path, os.X_OK):
        raise UsageError(f"--python {spec}: no such interpreter on this machine")
    return path


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise UsageError("uv is not installed: pip install uv") from None
        return found


def _run_uv(args: list[str], strategy: Strategy) -> None:
    try:
        done = subprocess.run(
            [_uv(), *args], capture_output=True, text=True, timeout=_UV_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"strategy {strategy.name}: uv {args[0]} took over {_UV_TIMEOUT_S:.0f} s"
        ) from None
    if done.returncode != 0:
        lines = [ln.strip(" │╰─▶×") for ln in done.stderr.splitlines()]
        why = " ".join(ln for ln in lines if ln)[-300:] or f"exit code {done.returncode}"
        raise UsageError(f"cannot build the virtualenv of strategy {strategy.name}: {why}")


def _query_versions(python: Path) -> dict[str, str]:
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", _VERSIONS_SCRIPT], capture_output=True, text=True, timeout=120
        )
        versions = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        raise UsageError(f"cannot ask {python} for its installed packages") from None
    if not isinstance(versions, dict):
        raise UsageError(f"cannot ask {python} for its installed packages")
    return {str(k): str(v) for k, v in versions.items()}


def installed_versions(python: Path) -> dict[str, str]:
    """Installed distributions (PEP 503 names) and ``python``, for one interpreter.

    Read from the cached virtualenv's record when ``python`` is one of ours; asked from the
    interpreter otherwise.
    """
    python = Path(python)
    marker = _read_marker(python.parent.parent)
    if marker is not None and isinstance(marker.get("versions"), dict):
        return dict(marker["versions"])
    return _query_versions(python)


def _remove_leftovers(root: Path, name: str) -> None:
    """Temporary folders of builds that died (we hold the lock: nobody is building)."""
    for stale in root.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(strategy: Strategy, target: Path, digest: str, say: Callable[[str], None]) -> None:
    root = target.parent
    _remove_leftovers(root, target.name)
    tmp = root / f".{target.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    interpreter = strategy.python or sys.executable
    started = time.monotonic()
    try:
        say(f"{strategy.name}: creating a virtualenv with Python {interpreter}")
        _run_uv(["venv", "--quiet", "--relocatable", "--python", interpreter, str(tmp)], strategy)
        if strategy.requirements:
            say(f"{strategy.name}: installing {' '.join(strategy.requirements)}")
            _run_uv(
                ["pip", "install", "--quiet", "--python", str(_python_of(tmp)),
                 *strategy.requirements],
                strategy,
            )
        versions = _query_versions(_python_of(tmp))
        marker = {
            "hash": digest,
            "requirements": list(strategy.requirements),
            "python": strategy.python,
            "versions": versions,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if target.exists():  # an invalid leftover (e.g. its interpreter was removed)
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    names = [f"{d} {versions[d]}" for d in strategy.distributions if d in versions]
    say(
        f"{strategy.name}: virtualenv ready in {time.monotonic() - started:.1f} s"
        f" (Python {versions.get('python')}{', ' if names else ''}{', '.join(names)})"
    )


def ensure(
    strategy: Strategy,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The Python executable of the strategy's virtualenv, built first when needed."""
    say = progress or (lambda _message: None)
    target = venv_dir(strategy, cache_dir)
    digest = spec_hash(strategy)
    if _valid(target, digest):
        say(f"{strategy.name}: reusing {target}")
        return _python_of(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # filelock (~25 ms of imports, -X importtime) is needed only to build: `list` and runs
    # with an existing virtualenv never get here.
    from filelock import FileLock, Timeout

    lock = FileLock(str(target.parent / f".{target.name}.lock"), timeout=_LOCK_TIMEOUT_S)
    try:
        with lock:
            if _valid(target, digest):  # another process built it while we waited
                say(f"{strategy.name}: reusing {target}")
            else:
                _build(strategy, target, digest, say)
    except Timeout:
        raise UsageError(
            f"strategy {strategy.name}: another process has been building {target} for over"
            f" {_LOCK_TIMEOUT_S:.0f} s"
        ) from None
    return _python_of(target)
