"""Project-wide pytest fixtures: real etcd and valkey servers, and the container engine.

`etcd_endpoint` / `valkey_endpoint` give "host:port" of a real server, started once per test
session. Under pytest-xdist every worker has its own session, hence its own server on its own
free port with its own data dir: nothing is shared, so nothing needs a lock. The mode comes
from SHUTDOWN_HARNESS_TEST_ETCD / SHUTDOWN_HARNESS_TEST_VALKEY (auto, embedded, container or
HOST:PORT; default: embedded, the fastest). A server that cannot be had fails the tests that
need it, with the reason: a missing server is a broken environment, not a skip.

`container_engine` gives the reachable Docker-API engine, or skips with the reason when none
can be had (see .ci/setup-podman).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from shutdown_harness import containers, services


def _service(kind: str) -> Iterator[services.Service]:
    how = os.environ.get(f"SHUTDOWN_HARNESS_TEST_{kind.upper()}", "embedded")
    try:
        service = services.start(kind, how)
    except services.ServiceError as e:
        pytest.fail(f"no {kind} for the tests: {e}", pytrace=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def etcd_service() -> Iterator[services.Service]:
    """The session's etcd (a services.Service: endpoint, healthy(), restart(), ...)."""
    yield from _service("etcd")


@pytest.fixture(scope="session")
def valkey_service() -> Iterator[services.Service]:
    """The session's valkey (a services.Service)."""
    yield from _service("valkey")


@pytest.fixture(scope="session")
def etcd_endpoint(etcd_service: services.Service) -> str:
    """ "host:port" of a real etcd for this test session (one per xdist worker)."""
    return etcd_service.endpoint


@pytest.fixture(scope="session")
def valkey_endpoint(valkey_service: services.Service) -> str:
    """ "host:port" of a real valkey for this test session (one per xdist worker)."""
    return valkey_service.endpoint


@pytest.fixture(scope="session")
def container_engine() -> containers.Engine:
    """The Docker-API engine (Docker, or Podman's service); skips when there is none."""
    engine, why = containers.find_engine()
    if engine is None:
        pytest.skip(f"no container engine: {why} (.ci/setup-podman starts Podman's service)")
    return engine


@pytest.fixture(scope="session")
def client_python() -> Callable[[str], Path]:
    """``client_python("etcd-client-py==0.4.1")``: the Python of a cached uv virtualenv with
    those packages (``+`` joins several), built once per machine like a strategy's."""
    from shutdown_harness import strategies, virtualenv

    def build(packages: str) -> Path:
        return virtualenv.ensure(strategies.parse_inline(packages, {"clients": {}}))

    return build
