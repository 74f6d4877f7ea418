"""Container engines and images: finding a Docker-API engine, getting an image, running a server.

The engine is whatever `DOCKER_HOST` names (Docker, or Podman's Docker-compatible service);
without `DOCKER_HOST`, the usual sockets of Docker and Podman are tried. Containers run through
testcontainers' `DockerContainer`, with the service port published on 127.0.0.1 only.

Images: the official image when it is present or can be pulled; otherwise (no registry, as on
air-gapped CI machines) a minimal image built here from a local binary: a root filesystem
holding the binary and the shared libraries `ldd` names, imported through the engine's API
(`POST /images/create?fromSrc=-`). Such images are tagged with the binary's digest, so a new
binary makes a new image and an unchanged one is built once per engine.

Ryuk (testcontainers' reaper) is disabled by default since its image needs a registry too;
instead every container carries labels naming its owner process, and containers whose owner
is gone are removed before new ones start.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:  # optional at run time: imported where a container is used
    from docker import DockerClient
    from testcontainers.core.container import DockerContainer

__all__ = [
    "ContainerError",
    "Engine",
    "RunningContainer",
    "find_engine",
    "docker_client",
    "ensure_image",
    "build_local_image",
    "rootfs_tar",
    "registry_reachable",
    "run_container",
    "reap_stale_containers",
    "engine_host",
    "LABEL",
]

#: Label key on every container this project starts; its value is the service kind.
LABEL = "shutdown-harness.kind"
_OWNER_PID = "shutdown-harness.owner-pid"
_OWNER_HOST = "shutdown-harness.owner-host"
_LOCAL_REPO = "localhost/shutdown-harness"
_FALLBACK_SOCKETS = (
    "/var/run/docker.sock",
    "/run/podman/podman.sock",
    "{xdg}/podman/podman.sock",
    "/tmp/podman.sock",  # where .ci/setup-podman starts Podman's service
)
_registry_cache: dict[str, tuple[bool, str]] = {}


class ContainerError(Exception):
    """The engine refused or failed to do what was asked (message says what and why)."""


@dataclass(frozen=True)
class Engine:
    """A reachable Docker-API engine."""

    url: str  # e.g. unix:///tmp/podman.sock
    name: str  # "Podman" or "Docker"
    version: str
    api_version: str  # the Docker API version both sides speak, e.g. "1.41"

    def describe(self) -> str:
        return f"{self.name} {self.version} at {self.url}"

    def client(self, timeout: float = 120.0) -> DockerClient:
        """A docker-py client (close it after use)."""
        return docker_client(self.url, self.api_version, timeout)

    def client_kw(self) -> dict[str, Any]:
        """`docker_client_kw` for testcontainers: this engine, no version round trip."""
        return {"environment": {"DOCKER_HOST": self.url}, "version": self.api_version}


def _candidate_urls(skipped: list[str] | None = None) -> list[str]:
    """``DOCKER_HOST``, or the usual sockets that are owned by this user or root (a socket in a
    world-writable folder such as /tmp could be anyone's engine); ``skipped`` gets the others."""
    if os.environ.get("DOCKER_HOST"):
        return [os.environ["DOCKER_HOST"]]
    xdg = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    urls = []
    for path in (p.format(xdg=xdg) for p in _FALLBACK_SOCKETS):
        if not Path(path).is_socket():
            continue
        owner = os.stat(path).st_uid
        if owner in (0, os.getuid()):
            urls.append(f"unix://{path}")
        elif skipped is not None:
            skipped.append(f"{path} (owned by uid {owner}, not trusted: name it in DOCKER_HOST)")
    return urls


def docker_client(url: str, api_version: str = "auto", timeout: float = 120.0) -> DockerClient:
    """A docker-py client for the engine at `url`.

    Give `api_version` (Engine.api_version): "auto" costs a `/version` call, which Podman
    answers slowly (seconds on a loaded machine)."""
    import docker

    return docker.DockerClient(base_url=url, version=api_version, timeout=int(timeout))


def _ping(url: str, timeout: float) -> Engine:
    """Ask `/_ping` (cheap on every engine); its headers name the engine and API version."""
    import docker
    from docker.constants import DEFAULT_DOCKER_API_VERSION

    api = docker.APIClient(base_url=url, version="1.24", timeout=int(max(timeout, 1)))
    try:
        response = api._get(api._url("/_ping"))  # ping() would drop the headers
        response.raise_for_status()
    finally:
        api.close()
    server = response.headers.get("Server", "")
    m = re.match(r"(Libpod|Docker)/(\S+)", server)
    name = (
        "Podman"
        if (m and m.group(1) == "Libpod") or "Libpod-Api-Version" in response.headers
        else "Docker"
    )
    version = m.group(2) if m else response.headers.get("Libpod-Api-Version", "?")
    offered = response.headers.get("Api-Version", "1.41")
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    api_version = min(offered, DEFAULT_DOCKER_API_VERSION, key=as_tuple)
    return Engine(url=url, name=name, version=version, api_version=api_version)


def find_engine(timeout: float = 10.0) -> tuple[Engine | None, str]:
    """The engine to use and a one-line account; `(None, why)` when none answers."""
    skipped: list[str] = []
    urls = _candidate_urls(skipped)
    if not urls:
        if skipped:
            return None, f"DOCKER_HOST is not set and no socket is trusted: {'; '.join(skipped)}"
        return None, "DOCKER_HOST is not set and no Docker or Podman socket exists"
    problems = []
    for url in urls:
        try:
            return _ping(url, timeout), "ok"
        except Exception as e:  # docker-py raises many kinds: any failure means "not usable"
            problems.append(f"{url}: {_one_line(e)}")
    return None, "; ".join(problems)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__


def registry_reachable(image: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the registry serving `image` accepts a TCP connection on port 443 (cached)."""
    first = image.split("/", 1)[0]
    host = first if ("." in first or ":" in first) and "/" in image else "registry-1.docker.io"
    if host not in _registry_cache:
        try:
            with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
                _registry_cache[host] = (True, f"{host} reachable")
        except OSError as e:
            _registry_cache[host] = (False, f"registry {host} unreachable ({e.strerror or e})")
    return _registry_cache[host]


def _image_present(client: DockerClient, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _shared_libraries(binary: Path) -> list[Path]:
    """The files the dynamic loader needs for `binary` (empty for a static binary)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    libs = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def rootfs_tar(files: dict[str, Path], dirs: Sequence[str] = ("tmp", "data")) -> bytes:
    """A tar of a minimal root filesystem: `files` ({path in image: source}), their shared
    libraries at the paths `ldd` gives, and world-writable `dirs`."""
    entries: dict[str, Path] = {}
    for dest, src in files.items():
        entries[dest.lstrip("/")] = src
        for lib in _shared_libraries(src):
            entries.setdefault(str(lib).lstrip("/"), lib)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        made: set[str] = set()
        for d in dirs:
            _add_dir(tar, d, made, mode=0o1777)
        for dest, src in sorted(entries.items()):
            parent = str(Path(dest).parent)
            if parent != ".":
                _add_dir(tar, parent, made, mode=0o755)
            info = tar.gettarinfo(str(src.resolve()), arcname=dest)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with src.resolve().open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _add_dir(tar: tarfile.TarFile, path: str, made: set[str], mode: int) -> None:
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub in made:
            continue
        made.add(sub)
        info = tarfile.TarInfo(sub)
        info.type = tarfile.DIRTYPE
        info.mode = mode if i == len(parts) else 0o755
        tar.addfile(info)


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def build_local_image(
    client: DockerClient, kind: str, binary: Path, dest: str, dirs: Sequence[str] = ("tmp",)
) -> str:
    """Import a minimal image holding `binary` at `dest` (and world-writable `dirs`);
    returns its name. An image already built from the same binary is reused."""
    name = f"{_LOCAL_REPO}/{kind}:{_digest([binary])}"
    if _image_present(client, name):
        return name
    data = rootfs_tar({dest: binary}, dirs)
    try:
        out = client.api.import_image_from_data(data, changes=[f'CMD ["{dest}"]'])
    except Exception as e:
        raise ContainerError(f"cannot import a local {kind} image: {_one_line(e)}") from None
    image_id = _imported_id(out)
    repo, tag = name.rsplit(":", 1)
    # Podman's compat API ignores the repo/tag of an import: tag by id afterwards.
    client.api.tag(image_id, repo, tag)
    return name


def _imported_id(output: Any) -> str:
    text = output.decode() if isinstance(output, bytes) else str(output)
    for line in reversed(text.strip().splitlines()):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "error" in msg:
            raise ContainerError(f"image import failed: {msg['error']}")
        for key in ("id", "status"):
            value = str(msg.get(key, ""))
            if value.startswith("sha256:"):
                return value
    raise ContainerError(f"image import gave no image id: {text[:200]}")


def ensure_image(
    client: DockerClient,
    kind: str,
    official: str,
    binary: Path | None,
    dest: str,
    dirs: Sequence[str] = ("tmp",),
) -> tuple[str, str]:
    """`(image, origin)`: the official image when present or pullable, else a local build.

    `origin` is "present", "pulled" or "built from <binary> (<why no official image>)".
    """
    if _image_present(client, official):
        return official, "present"
    reachable, why = registry_reachable(official)
    if reachable:
        repo, _, tag = official.rpartition(":")
        try:
            client.images.pull(repo, tag=tag)
            return official, "pulled"
        except Exception as e:
            why = f"pull failed: {_one_line(e)}"
    if binary is None:
        raise ContainerError(f"no {kind} image: {why}, and no local binary to build one from")
    return build_local_image(client, kind, binary, dest, dirs), f"built from {binary} ({why})"


@dataclass
class RunningContainer:
    """A started container whose `port` is published on 127.0.0.1:`host_port`."""

    handle: DockerContainer
    image: str
    host_port: int

    @property
    def id(self) -> str:
        return str(self.handle.get_container_id())

    def running(self) -> bool:
        try:
            self.handle.reload()
            return bool(self.handle.status == "running")
        except Exception:
            return False

    def logs(self, limit: int = 2000) -> str:
        try:
            out, err = self.handle.get_logs()
        except Exception as e:
            return f"(no logs: {_one_line(e)})"
        text = (out + err).decode(errors="replace")
        return text[-limit:]

    def kill(self) -> None:
        """Kill the server (the container stays, stopped): for tests of failure handling."""
        self.handle.get_wrapped_container().kill()

    def stop(self) -> None:
        """Stop and remove the container; never raises."""
        try:
            self.handle.stop()
        except Exception:
            try:
                self.handle.get_docker_client().client.close()
            except Exception:
                pass


def _configure_testcontainers() -> None:
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as config

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        config.ryuk_disabled = True
    if "TESTCONTAINERS_CONNECTION_MODE" not in os.environ:
        # Ports are published on 127.0.0.1 of the engine's host: ask for nothing else.
        config.connection_mode_override = ConnectionMode.docker_host


def reap_stale_containers(client: DockerClient) -> list[str]:
    """Remove this host's shutdown-harness containers whose owner process is gone."""
    removed: list[str] = []
    me = socket.gethostname()
    try:
        found = client.containers.list(all=True, filters={"label": LABEL})
    except Exception:
        return removed
    for container in found:
        labels = container.labels or {}
        if labels.get(_OWNER_HOST) != me:
            continue
        try:
            pid = int(labels.get(_OWNER_PID, "0"))
        except ValueError:
            continue
        if pid > 0 and Path(f"/proc/{pid}").exists():
            continue
        try:
            container.remove(force=True)
            removed.append(container.short_id)
        except Exception:
            pass
    return removed


def run_container(
    engine: Engine,
    image: str,
    *,
    kind: str,
    command: list[str],
    port: int,
    host_port: int,
    ready_log: str,
    timeout: float = 60.0,
) -> RunningContainer:
    """Start `image` with `command`, publish `port` on 127.0.0.1:`host_port`, wait until
    the log shows `ready_log`. Raises ContainerError (and removes the container) on failure."""
    _configure_testcontainers()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    labels = {LABEL: kind, _OWNER_PID: str(os.getpid()), _OWNER_HOST: socket.gethostname()}
    handle = DockerContainer(image, docker_client_kw=engine.client_kw(), labels=labels)
    # docker-py accepts (ip, port) here; testcontainers' annotation only says int.
    ports: dict[str, Any] = handle.ports
    host = engine_host(engine)
    ports[f"{port}/tcp"] = ("127.0.0.1" if host == "127.0.0.1" else "0.0.0.0", host_port)
    handle.with_command(command)
    strategy = LogMessageWaitStrategy(re.compile(re.escape(ready_log)))
    handle.waiting_for(strategy.with_startup_timeout(int(timeout)).with_poll_interval(0.1))
    reap_stale_containers(handle.get_docker_client().client)
    started = time.monotonic()
    try:
        handle.start()
    except BaseException as e:  # also Ctrl-C: never leave a half-started container behind
        logs = ""
        if handle._container is not None and isinstance(e, Exception):
            logs = RunningContainer(handle, image, host_port).logs(20_000)
        RunningContainer(handle, image, host_port).stop()
        if not isinstance(e, Exception):
            raise
        said = _log_summary(logs)
        detail = f"; the server said: {said}" if said else ""
        why = _one_line(e).split(" Hint:")[0]
        raise ContainerError(
            f"{kind} container from {image} did not start after "
            f"{time.monotonic() - started:.1f}s: {why}{detail}"
        ) from None
    return RunningContainer(handle, image, host_port)


_COMPLAINT = re.compile(r"error|fatal|panic|invalid|not defined|unknown|denied|fail", re.I)


def _log_summary(logs: str) -> str:
    """The lines of a server's log that say what went wrong (else its last lines), one line."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    picked = [line for line in lines if _COMPLAINT.search(line)][:2] or lines[-2:]
    return " / ".join(picked)[:300]


def engine_host(engine: Engine) -> str:
    """The address where published ports appear: 127.0.0.1 for a local engine."""
    parsed = urlparse(engine.url)
    if parsed.scheme in ("tcp", "http", "https") and parsed.hostname:
        return parsed.hostname
    return "127.0.0.1"
