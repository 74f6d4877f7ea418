"""harness/containers.py and the container mode of harness/services.py, against a real engine.

The engine is whatever `DOCKER_HOST` names (here: Podman's service, set up by .ci/setup-podman);
tests marked `container` skip with the reason when there is none. One etcd container serves
the whole module; all of them run on one xdist worker (group "containers").
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from shutdown_harness import containers, services


def _names(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_rootfs_of_a_dynamic_binary_holds_the_libraries_ldd_names() -> None:
    binary = services.embedded_binary("valkey")
    members = _names(containers.rootfs_tar({"/usr/local/bin/valkey-server": binary}))
    server = members["usr/local/bin/valkey-server"]
    assert server.isfile() and server.mode & 0o111 and server.size == binary.stat().st_size
    libs = {name for name in members if "/lib" in f"/{name}" and members[name].isfile()}
    assert any(Path(n).name.startswith("libc.so") for n in libs)
    assert any(Path(n).name.startswith("ld-linux") for n in libs)  # the loader itself
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777


def test_rootfs_of_a_static_binary_is_the_binary_alone() -> None:
    binary = services.embedded_binary("etcd")
    members = _names(containers.rootfs_tar({"/usr/local/bin/etcd": binary}, ("var/lib/etcd",)))
    files = {name for name, m in members.items() if m.isfile()}
    assert files == {"usr/local/bin/etcd"}
    assert members["var/lib/etcd"].isdir()


def test_no_engine_is_reported_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    engine, why = containers.find_engine(timeout=1)
    assert engine is None and f"{tmp_path}/none.sock" in why
    with pytest.raises(services.ServiceError, match="no container engine"):
        services.start("etcd", "container")


@pytest.fixture(scope="module")
def etcd_container(container_engine: containers.Engine) -> Iterator[services.ContainerService]:
    with services.ContainerService("etcd", engine=container_engine) as etcd:
        yield etcd


@pytest.mark.container
@pytest.mark.xdist_group("containers")
@pytest.mark.etcd
def test_etcd_container_serves_real_puts_on_127_0_0_1(
    etcd_container: services.ContainerService, container_engine: containers.Engine
) -> None:
    assert etcd_container.mode == "container"
    assert etcd_container.endpoint.startswith("127.0.0.1:")
    assert services.check("etcd", etcd_container.endpoint).startswith("3.5.")
    described = etcd_container.describe()
    assert described["engine"] == container_engine.describe()
    origin = described["image_origin"]
    assert origin in ("present", "pulled") or origin.startswith("built from ")
    running = etcd_container.container
    assert running is not None and running.running()
    assert "ready to serve client requests" in running.logs(100_000)
    attrs = running.handle.get_wrapped_container().attrs
    bindings = attrs["NetworkSettings"]["Ports"]["2379/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert attrs["Config"]["Labels"][containers.LABEL] == "etcd"


@pytest.mark.container
@pytest.mark.xdist_group("containers")
@pytest.mark.etcd
def test_killed_etcd_container_is_detected_and_restarted(
    etcd_container: services.ContainerService,
) -> None:
    endpoint = etcd_container.endpoint
    running = etcd_container.container
    assert running is not None and etcd_container.healthy()
    running.kill()
    assert not etcd_container.healthy()
    etcd_container.restart()
    assert etcd_container.healthy() and etcd_container.endpoint == endpoint
    assert etcd_container.container is not None and etcd_container.container.id != running.id
    assert etcd_container.describe()["restarts"] == 1
    client = etcd_container.engine.client()
    try:
        assert running.id not in {c.id for c in client.containers.list(all=True)}  # removed
    finally:
        client.close()


@pytest.mark.container
@pytest.mark.xdist_group("containers")
def test_auto_picks_the_engine_and_stop_removes_the_container(
    container_engine: containers.Engine,
) -> None:
    with services.ServiceSet({"valkey": "auto"}) as found:
        valkey = found["valkey"]
        assert isinstance(valkey, services.ContainerService)
        assert valkey.check() != "?"  # PING, SET, GET through the published port
        assert found.describe()["valkey"]["mode"] == "container"
        running = valkey.container
        assert running is not None
    client = container_engine.client()
    try:
        assert running.id not in {c.id for c in client.containers.list(all=True)}
    finally:
        client.close()


@pytest.mark.container
@pytest.mark.xdist_group("containers")
def test_containers_of_a_dead_owner_are_reaped(
    etcd_container: services.ContainerService, container_engine: containers.Engine
) -> None:
    client = container_engine.client()
    try:
        owner = {
            containers.LABEL: "etcd",
            "shutdown-harness.owner-pid": "999999999",  # above any pid_max: no such process
            "shutdown-harness.owner-host": socket.gethostname(),
        }
        alive = {**owner, "shutdown-harness.owner-pid": str(os.getpid())}
        dead = client.containers.create(etcd_container.image, ["/usr/local/bin/etcd"], labels=owner)
        mine = client.containers.create(etcd_container.image, ["/usr/local/bin/etcd"], labels=alive)
        try:
            removed = containers.reap_stale_containers(client)
            ids = {c.id for c in client.containers.list(all=True)}
            assert dead.short_id in removed and dead.id not in ids
            assert mine.id in ids  # its owner (this process) is alive
        finally:
            mine.remove(force=True)
    finally:
        client.close()


@pytest.mark.container
@pytest.mark.xdist_group("containers")
def test_a_server_that_exits_at_start_is_reported_and_its_container_removed(
    etcd_container: services.ContainerService, container_engine: containers.Engine
) -> None:
    with pytest.raises(containers.ContainerError) as info:
        containers.run_container(
            container_engine,
            etcd_container.image,
            kind="etcd",
            command=["/usr/local/bin/etcd", "--no-such-flag"],
            port=2379,
            host_port=0,
            ready_log="ready to serve client requests",
            timeout=30,
        )
    message = str(info.value)
    assert "\n" not in message and "no-such-flag" in message  # the server's own complaint
    client = container_engine.client()
    try:
        # Only this process's: the engine may be shared with other test sessions.
        owner = f"shutdown-harness.owner-pid={os.getpid()}"
        mine = client.containers.list(all=True, filters={"label": [containers.LABEL, owner]})
        assert [c.id for c in mine] == [etcd_container.container.id]  # type: ignore[union-attr]
    finally:
        client.close()


def test_only_sockets_of_this_user_or_root_are_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = {}
    for name, uid in (("mine.sock", os.getuid()), ("theirs.sock", 54321)):
        path = tmp_path / name
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
        if uid != os.getuid():
            if os.getuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(path, uid, -1)
        paths[name] = str(path)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    both = (paths["theirs.sock"], paths["mine.sock"])
    monkeypatch.setattr(containers, "_FALLBACK_SOCKETS", both)
    skipped: list[str] = []
    assert containers._candidate_urls(skipped) == [f"unix://{paths['mine.sock']}"]
    assert skipped and "uid 54321" in skipped[0]
    monkeypatch.setattr(containers, "_FALLBACK_SOCKETS", (paths["theirs.sock"],))
    engine, why = containers.find_engine(timeout=1)
    assert engine is None and "not trusted" in why and "DOCKER_HOST" in why
    monkeypatch.setenv("DOCKER_HOST", f"unix://{paths['theirs.sock']}")  # named: trusted
    assert containers._candidate_urls() == [f"unix://{paths['theirs.sock']}"]
