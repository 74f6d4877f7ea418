"""Strategy specs: inline parsing, named strategies from the configuration, the built-in
defaults, the venv hash, and the cleanup-mode check against real installed clients."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from shutdown_harness import config as config_module
from shutdown_harness import discovery, strategies, virtualenv
from shutdown_harness.errors import UsageError

CLIENTS = {
    "etcd-client-py": {"module": "etcd_client", "cleanup": "cleanup_runtime"},
    "valkey-glide": {"module": "glide"},
}
CONFIG: dict[str, Any] = {
    "clients": CLIENTS,
    "strategies": {
        "old": {"requirements": ["etcd-client-py==0.4.1"], "description": "no cleanup"},
        "new-explicit": {"requirements": ["etcd-client-py==0.5.1"], "mode": "explicit"},
        "host": {"python": "/usr/bin/python3", "mode": "sleep", "sleep": 0.25},
    },
}


# -- inline specs --------------------------------------------------------------------------
def test_parse_inline_packages_and_mode() -> None:
    s = strategies.parse_inline("etcd-client-py==0.5.1+valkey-glide==2.6.0@explicit", CONFIG)
    assert s.name == "etcd-client-py==0.5.1+valkey-glide==2.6.0@explicit"  # as written
    assert s.requirements == ("etcd-client-py==0.5.1", "valkey-glide==2.6.0")
    assert s.distributions == ("etcd-client-py", "valkey-glide")
    assert (s.mode, s.cleanup, s.python) == ("explicit", "etcd_client:cleanup_runtime", None)
    assert s.child_args() == ["--mode", "explicit", "--cleanup", "etcd_client:cleanup_runtime"]


def test_parse_inline_defaults_sleep_value_and_extras() -> None:
    plain = strategies.parse_inline("etcd-client-py==0.4.1", CONFIG)
    assert (plain.mode, plain.cleanup, plain.child_args()) == ("none", None, ["--mode", "none"])
    slow = strategies.parse_inline("etcd-client-py==0.4.1@sleep:0.2", CONFIG)
    assert (slow.mode, slow.sleep_s) == ("sleep", 0.2)
    assert slow.child_args() == ["--mode", "sleep", "--sleep", "0.2"]
    ranged = strategies.parse_inline("Etcd_Client.Py[dev]>=0.4, <0.5@hard-exit", CONFIG)
    assert ranged.requirements == ("Etcd_Client.Py[dev]>=0.4, <0.5",)
    assert ranged.distributions == ("etcd-client-py",) and ranged.mode == "hard-exit"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("etcd-client-py==0.4.1@explict", r"cleanup mode 'explict' \(did you mean explicit"),
        ("etcd-client-py==0.4.1@hard-exit:1", "mode hard-exit takes no value"),
        ("etcd-client-py==0.4.1@explicit:nocolon", "explicit:nocolon names no function"),
        ("etcd-client-py==0.4.1@atexit:m:f:g", "names no function"),
        (
            "valkey-glide==2.6.0@explicit",
            r"none of valkey-glide==2.6.0 has a known one: name one:"
            r" valkey-glide==2.6.0@explicit:module:function",
        ),
        ("etcd-client-py==0.4.1+", "empty requirement"),
        ("@atexit", "empty requirement"),
        ("etcd client==1", "is not a requirement"),
        ("valkey-glide==2.6.0@atexit", "mode atexit needs a cleanup function, and none of"),
    ],
)
def test_parse_inline_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as e:
        strategies.parse_inline(spec, CONFIG)
    assert "\n" not in str(e.value)


def test_inline_cleanup_function_of_any_package() -> None:
    s = strategies.parse_inline("valkey-glide==2.6.0@explicit:my_hooks.glide:shutdown", CONFIG)
    assert (s.mode, s.cleanup) == ("explicit", "my_hooks.glide:shutdown")
    assert s.requirements == ("valkey-glide==2.6.0",)
    assert s.child_args() == ["--mode", "explicit", "--cleanup", "my_hooks.glide:shutdown"]
    # a known client's own function gives way to the one named
    a = strategies.parse_inline("etcd-client-py==0.5.1@atexit:mine:stop", CONFIG)
    assert (a.mode, a.cleanup) == ("atexit", "mine:stop")
    assert a.name == "etcd-client-py==0.5.1@atexit:mine:stop"


def test_local_wheel_path_is_a_requirement(tmp_path: Path) -> None:
    wheel = tmp_path / "etcd_client_py-0.5.2-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    s = strategies.parse_inline(f"{wheel}@atexit", CONFIG)
    assert s.requirements == (str(wheel),) and s.mode == "atexit"
    assert s.name == "etcd-client-py-0.5.2@atexit"  # a short label, not the path
    assert s.distributions == ("etcd-client-py",)  # from the wheel's file name
    assert s.cleanup == "etcd_client:cleanup_runtime"
    source = tmp_path / "checkout"
    source.mkdir()
    with pytest.raises(UsageError, match="needs a cleanup function"):  # a folder says nothing
        strategies.parse_inline(f"{source}@atexit", CONFIG)


def test_two_modes_of_one_local_wheel_read_apart(tmp_path: Path) -> None:
    wheel = tmp_path / "dist" / "etcd_client_py-0.5.2-cp311-abi3-linux_x86_64.whl"
    sdist = tmp_path / "valkey_glide-2.6.0.tar.gz"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")
    sdist.write_bytes(b"")
    found = strategies.resolve([f"{wheel}", f"{wheel}+{sdist}@sleep:0.2",
                                f"{wheel}@explicit"], CONFIG)
    assert [s.name for s in found] == [
        "etcd-client-py-0.5.2", "etcd-client-py-0.5.2+valkey-glide-2.6.0@sleep:0.2",
        "etcd-client-py-0.5.2@explicit"]
    assert found[1].requirements == (str(wheel), str(sdist))
    rebuilt = tmp_path / "other" / wheel.name  # another build of the same version
    rebuilt.parent.mkdir()
    rebuilt.write_bytes(b"")
    assert [s.name for s in strategies.resolve([str(wheel), str(rebuilt)], CONFIG)] == [
        "etcd-client-py-0.5.2", str(rebuilt)]


# -- named strategies and resolve ----------------------------------------------------------
def test_resolve_named_inline_commas_and_version_ranges() -> None:
    found = strategies.resolve(
        ["old,new-explicit", "etcd-client-py>=0.4,<0.5@sleep", "old", "host"], CONFIG
    )
    assert [s.name for s in found] == [
        "old", "new-explicit", "etcd-client-py>=0.4,<0.5@sleep", "host"
    ]
    old, new, ranged, host = found
    assert old.requirements == ("etcd-client-py==0.4.1",) and old.description == "no cleanup"
    assert new.cleanup == "etcd_client:cleanup_runtime"  # from the clients table
    assert ranged.requirements == ("etcd-client-py>=0.4,<0.5",)
    assert (host.requirements, host.python, host.sleep_s) == ((), "/usr/bin/python3", 0.25)


def test_resolve_bare_client_name_is_inline_unknown_word_is_an_error() -> None:
    assert strategies.resolve(["etcd-client-py"], CONFIG)[0].requirements == ("etcd-client-py",)
    with pytest.raises(UsageError, match=r"unknown strategy 'olt' \(did you mean old"):
        strategies.resolve(["olt"], CONFIG)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"requirements": "etcd-client-py==0.5.1", "mode": "explicitly"}, "unknown cleanup mode"),
        ({"requirements": [1]}, "requirements must be a list of strings"),
        ({"requirements": ["etcd-client-py"], "colour": "red"}, "unknown key 'colour'"),
        ({"mode": "none"}, "give requirements, or the python"),
        ({"requirements": ["etcd-client-py"], "sleep": "long"}, "sleep must be a number"),
        ({"requirements": ["x==1"], "mode": "atexit", "cleanup": "nocolon"}, "module:function"),
        ({"requirements": ["valkey-glide==2.6.0"], "mode": "explicit"}, "needs a cleanup"),
    ],
)
def test_named_strategy_validation(table: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        strategies.resolve(["bad"], {**CONFIG, "strategies": {"bad": table}})


def test_explicit_cleanup_overrides_the_clients_table() -> None:
    table = {"requirements": ["valkey-glide==2.6.0"], "mode": "atexit", "cleanup": "glide:stop"}
    s = strategies.from_config("g", table, CONFIG)
    assert s.cleanup == "glide:stop"
    inline = {"requirements": ["valkey-glide==2.6.0"], "mode": "explicit:glide:stop"}
    assert strategies.from_config("g", inline, CONFIG).cleanup == "glide:stop"
    with pytest.raises(UsageError, match=r'cleanup = "module:function" in \[tool.shutdown'):
        strategies.from_config("g", {"requirements": ["valkey-glide==2.6.0"], "mode": "atexit"},
                               CONFIG)


# -- the built-in defaults -----------------------------------------------------------------
def test_builtin_defaults_resolve_and_cover_the_comparison() -> None:
    with config_module.DEFAULTS_PATH.open("rb") as f:
        config = tomllib.load(f)
    named = strategies.resolve(list(config["strategies"]), config)
    by_name = {s.name: s for s in named}
    for name, requirement, mode in [
        ("etcd-0.3.0", "etcd-client-py==0.3.0", "none"),
        ("etcd-0.4.1", "etcd-client-py==0.4.1", "none"),
        ("etcd-0.5.1", "etcd-client-py==0.5.1", "none"),
        ("etcd-0.5.1-explicit", "etcd-client-py==0.5.1", "explicit"),
        ("etcd-0.5.1-atexit", "etcd-client-py==0.5.1", "atexit"),
    ]:
        assert by_name[name].requirements[0] == requirement and by_name[name].mode == mode
        assert by_name[name].description
    assert by_name["etcd-0.5.1-atexit"].cleanup == "etcd_client:cleanup_runtime"
    assert any("valkey-glide" in s.distributions for s in named)
    assert config["default-strategy"] in by_name
    stress = config["presets"]["stress"]  # what `nox -s stress` runs
    assert len(strategies.resolve(stress["strategies"], config)) >= 3
    assert len(discovery.resolve(stress["scenarios"])) >= 2


# -- check_mode against real clients -------------------------------------------------------
@pytest.fixture(scope="module")
def pythons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("venvs")
    return {
        v: virtualenv.ensure(strategies.parse_inline(f"etcd-client-py=={v}", CONFIG), cache)
        for v in ("0.4.1", "0.5.1")
    }


def test_check_mode_accepts_a_client_that_has_the_function(pythons: dict[str, Path]) -> None:
    for spec in ("etcd-client-py==0.5.1@explicit", "etcd-client-py==0.5.1@atexit"):
        strategies.check_mode(strategies.parse_inline(spec, CONFIG), pythons["0.5.1"])
    # modes that call nothing need nothing, whatever the Python
    strategies.check_mode(strategies.parse_inline("x==1@hard-exit", CONFIG), Path("/nonexistent"))


def test_check_mode_refuses_a_release_without_the_function(pythons: dict[str, Path]) -> None:
    strategy = strategies.parse_inline("etcd-client-py==0.4.1@explicit", CONFIG)
    with pytest.raises(
        UsageError,
        match=r"mode explicit calls etcd_client:cleanup_runtime\(\), which etcd-client-py 0.4.1"
        " does not have",
    ):
        strategies.check_mode(strategy, pythons["0.4.1"])


def test_check_mode_finds_a_cleanup_module_next_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text("def shutdown():\n    pass\n")
    strategy = strategies.from_config(
        "s", {"python": sys.executable, "mode": "explicit", "cleanup": "mymod:shutdown"}, CONFIG
    )
    strategies.check_mode(strategy, Path(sys.executable), [tmp_path, tmp_path])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(UsageError, match=f"looked in {elsewhere} too; ModuleNotFoundError"):
        strategies.check_mode(strategy, Path(sys.executable), [tmp_path, elsewhere])
    with pytest.raises(UsageError, match="ModuleNotFoundError"):
        strategies.check_mode(strategy, Path(sys.executable))  # no scenario: packages only


def test_check_mode_names_a_missing_module(tmp_path: Path) -> None:
    strategy = strategies.from_config(
        "s", {"requirements": ["x==1"], "mode": "atexit", "cleanup": "no_such_mod:f"}, CONFIG
    )
    with pytest.raises(UsageError, match="ModuleNotFoundError"):
        strategies.check_mode(strategy, Path(sys.executable))
