"""The run pipeline with real services, real clients and real children."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from shutdown_harness import config as config_module
from shutdown_harness.plan import Plan
from shutdown_harness.stats import cell_done
from shutdown_harness.store import iter_records
from shutdown_harness.workflow import Options, Outcome, run

SLOW_PUT = '''"""Puts a key every 50 ms for 0.4 s: long enough to be caught by a dying etcd."""
import asyncio, os
SERVICES = ("etcd",)
RUNS = 10
TIMEOUT = 20.0

async def main():
    from etcd_client import Client
    ep = os.environ["SHUTDOWN_HARNESS_ETCD"]
    async with Client([f"http://{ep}"]).connect() as c:
        for i in range(8):
            await c.put(b"slow-put", str(i).encode())
            await asyncio.sleep(0.05)
'''


def _plan(**overrides: Any) -> Plan:
    settings: dict[str, Any] = {
        "scenarios": ["sanity"],
        "strategies": ["etcd-0.5.1"],
        "runs": 4,
        "jobs": 2,
        "seed": 1,
        "etcd": "embedded",
        "valkey": "embedded",
    }
    return Plan(**{**settings, **overrides})


def _run(out: Path, stream: io.StringIO | None = None, **overrides: Any) -> Outcome:
    options = Options(out=out, config=config_module.load(), stream=stream or io.StringIO())
    return run(_plan(**overrides), options)


def _etcd_pid(out: Path) -> int | None:
    """The pid of the embedded etcd serving the campaign in ``out`` (from campaign.json's
    endpoint: the process whose command line names its port)."""
    try:
        endpoint = json.loads((out / "campaign.json").read_text())["services"]["etcd"]["endpoint"]
    except (OSError, ValueError, KeyError):
        return None
    port = endpoint.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode()).name == "etcd" and any(
            arg.decode().endswith(f":{port}") for arg in argv
        ):
            return int(proc.name)
    return None


@pytest.mark.etcd
@pytest.mark.slow
def test_etcd_killed_mid_campaign_is_infra_restarted_and_survived(tmp_path: Path) -> None:
    scenario = tmp_path / "slow_put.py"
    scenario.write_text(SLOW_PUT)
    out = tmp_path / "campaign"
    stream = io.StringIO()
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pid = _etcd_pid(out) if sum(1 for _ in iter_records(out)) >= 6 else None
            if pid is not None:
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    outcome = _run(out, stream, scenarios=[str(scenario)], runs=30)
    thread.join(5)
    assert killed, "etcd was never killed"
    assert outcome.code == 0
    records = list(iter_records(out))
    assert len(records) == 30  # nothing lost, nothing duplicated
    infra = [r for r in records if r["category"] == "infra"]
    assert infra, "the runs broken by the dead etcd must be infra"
    assert all(r["category"] in ("clean", "infra") for r in records), [
        (r["category"], r["signature"]) for r in records if r["category"] not in ("clean", "infra")
    ]
    last_infra = max(r["started_at"] for r in infra)
    assert any(r["category"] == "clean" and r["started_at"] > last_infra for r in records)
    assert "restarted" in stream.getvalue()
    report = json.loads((out / "report.json").read_text())
    assert "infra" in json.dumps(report)


@pytest.mark.etcd
def test_not_applicable_cells_are_reported_not_failed(tmp_path: Path) -> None:
    outcome = _run(
        tmp_path / "na", scenarios=["sanity", "etcd_and_valkey"], strategies=["etcd-0.5.1"],
        runs=2,
    )
    assert outcome.code == 0
    stored = json.loads((tmp_path / "na" / "campaign.json").read_text())
    assert "etcd_and_valkey/etcd-0.5.1" in stored["not_applicable"]
    assert "valkey-glide" in stored["not_applicable"]["etcd_and_valkey/etcd-0.5.1"]
    assert {r["scenario"] for r in iter_records(tmp_path / "na")} == {"sanity"}


def test_pinned_children_run_on_the_pinned_cpu(tmp_path: Path) -> None:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    command = f"{sys.executable} -c 'import os; print(sorted(os.sched_getaffinity(0)))'"
    outcome = _run(
        tmp_path / "pin", command=command, scenarios=None, strategies=None, runs=3,
        pin=str(cpu), pin_cpus=[cpu],
    )
    assert outcome.code == 0
    records = list(iter_records(tmp_path / "pin"))
    assert len(records) == 3
    assert all(r["load"]["pin"] == str(cpu) and r["load"]["cpus"] == 1 for r in records)
    stdout = (tmp_path / "pin" / records[0]["artifacts"] / "stdout.txt").read_text()
    assert stdout.strip() == f"[{cpu}]"


def test_adaptive_stop_ends_a_clear_cell_early(tmp_path: Path) -> None:
    outcome = _run(
        tmp_path / "ad", command=f"{sys.executable} -c pass", scenarios=None, strategies=None,
        runs=2000, until_halfwidth=0.05, cores="off",
    )
    assert outcome.code == 0
    count = sum(1 for _ in iter_records(tmp_path / "ad"))
    # 0 failures: the cell is done at the first n whose Wilson half-width is <= 5% (~37 runs).
    enough = next(n for n in range(1, 2000) if cell_done(0, n, 0.05))
    # Beyond it, only runs already started or handed out: the slot that records the run ending
    # the cell has its next child running, the other slot at most an exited child and a running
    # one. That needs the ending record counted at once, not with the next batch of records.
    assert enough <= count <= enough + 3


def test_crashes_beyond_the_gdb_budget_get_the_signature_of_their_exemplars(
    tmp_path: Path,
) -> None:
    from shutdown_harness.cores import core_dump_unavailable, gdb_available

    if gdb_available() or core_dump_unavailable():
        pytest.skip(f"no native backtraces here: {gdb_available() or core_dump_unavailable()}")
    behave = Path(__file__).parent / "children" / "behave.py"
    out = tmp_path / "segv"
    outcome = _run(
        out, command=f"{sys.executable} {behave} segv", scenarios=None, strategies=None,
        runs=24, cores_per_signature=2,
    )
    assert outcome.code == 0
    records = list(iter_records(out))
    assert len(records) == 24
    sources = {r["signature_source"] for r in records}
    signatures = {r["signature"] for r in records}
    # One crash site, one signature, named from native frames: by gdb for the exemplars, and
    # inferred from them (never left unclassified) for the cores the budget skipped.
    assert len(signatures) == 1, signatures
    (signature,) = signatures
    assert signature.startswith("native-crash:") and "string_at" in signature
    assert "frames" in sources and sources <= {"frames", "inferred"}
    assert sum(r["signature_source"] == "frames" for r in records) >= 2
    assert not list((out / "artifacts").glob("*/core"))  # cores are not kept by default


# -- services are what a scenario declares -------------------------------------------------
NO_SERVICE = '''"""Imports the client, touches no server: a scenario without a SERVICES line."""
import os

def main():
    told = [k for k in ("SHUTDOWN_HARNESS_ETCD", "SHUTDOWN_HARNESS_VALKEY") if k in os.environ]
    assert not told, told
    import etcd_client
    print("imported", etcd_client.__name__)
'''

VALKEY_ONLY = '''"""valkey-glide against the harness's valkey, and nothing else."""
import os
SERVICES = ("valkey",)

async def main():
    assert "SHUTDOWN_HARNESS_ETCD" not in os.environ
    from glide import GlideClient, GlideClientConfiguration, NodeAddress
    host, port = os.environ["SHUTDOWN_HARNESS_VALKEY"].rsplit(":", 1)
    client = await GlideClient.create(GlideClientConfiguration([NodeAddress(host, int(port))]))
    key = "valkey-only/" + os.environ["SHUTDOWN_HARNESS_RUN_ID"]
    await client.set(key, "v")
    assert await client.get(key) == b"v"
    await client.close()
'''


def test_a_scenario_without_services_starts_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SHUTDOWN_HARNESS_ETCD", "SHUTDOWN_HARNESS_VALKEY"):
        monkeypatch.delenv(name, raising=False)
    scenario = tmp_path / "no_service.py"
    scenario.write_text(NO_SERVICE)
    out = tmp_path / "none"
    stream = io.StringIO()
    outcome = _run(out, stream, scenarios=[str(scenario)], runs=3, etcd="auto", valkey="auto")
    assert outcome.code == 0
    log = stream.getvalue()
    assert "starting " not in log and " ready at " not in log, log  # what ServiceSet says
    assert json.loads((out / "campaign.json").read_text())["services"] == {}
    records = list(iter_records(out))
    assert [r["category"] for r in records] == ["clean"] * 3, records


@pytest.mark.slow
def test_a_valkey_only_scenario_gets_valkey_and_no_etcd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHUTDOWN_HARNESS_ETCD", raising=False)
    scenario = tmp_path / "valkey_only.py"
    scenario.write_text(VALKEY_ONLY)
    out = tmp_path / "valkey"
    outcome = _run(out, scenarios=[str(scenario)], strategies=["valkey-glide==2.6.0"], runs=4)
    assert outcome.code == 0
    described = json.loads((out / "campaign.json").read_text())["services"]
    assert list(described) == ["valkey"] and described["valkey"]["mode"] == "embedded"
    assert described["valkey"]["env"] == "SHUTDOWN_HARNESS_VALKEY"
    records = list(iter_records(out))
    assert len(records) == 4
    # The work succeeds every time (no exception during it); a crash at exit is glide's own.
    assert all(r["work_done"] and r["phase"] != "work" for r in records), records


DECLARED_WEB = '''"""GETs / from the project's own HTTP server; run 2 kills the server first."""
import os, signal, time, urllib.request
SERVICES = ("web",)
TIMEOUT = 20.0

def _kill(port):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        except OSError:
            continue
        if b"http.server" in argv and port.encode() in argv:
            os.kill(int(pid), signal.SIGKILL)
            while os.path.exists(f"/proc/{pid}") and ") Z" not in open(f"/proc/{pid}/stat").read():
                time.sleep(0.01)

def main():
    endpoint = os.environ["WEB_AT"]
    if os.environ["SHUTDOWN_HARNESS_RUN_ID"].endswith("/2"):
        _kill(endpoint.rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://{endpoint}/", timeout=5) as reply:
        assert reply.status == 200
'''


def _pyproject(tmp_path: Path) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[tool.shutdown-harness.strategies.here]\n"
        f"python = {json.dumps(sys.executable)}\n"
        "[tool.shutdown-harness.services.web]\n"
        f'command = "{sys.executable} -m http.server {{port}} --bind 127.0.0.1"\n'
        'ready = "http"\n'
        'path = "/"\n'
        'env = "WEB_AT"\n'
    )
    return path


def test_a_declared_service_killed_mid_campaign_is_infra_and_restarted(tmp_path: Path) -> None:
    scenario = tmp_path / "web.py"
    scenario.write_text(DECLARED_WEB)
    out = tmp_path / "web"
    stream = io.StringIO()
    outcome = run(
        _plan(scenarios=[str(scenario)], strategies=["here"], runs=6, jobs=1),
        Options(out=out, config=config_module.load(_pyproject(tmp_path)), stream=stream),
    )
    assert outcome.code == 0
    records = sorted(iter_records(out), key=lambda r: r["index"])
    assert [r["category"] for r in records] == ["clean", "clean", "infra"] + ["clean"] * 3
    assert records[2]["signature"] == "infra-service-down:web"
    described = json.loads((out / "campaign.json").read_text())["services"]
    assert list(described) == ["web"] and described["web"]["env"] == "WEB_AT"
    assert "web went down; restarting it" in stream.getvalue()


# -- cleanup hooks of any package ----------------------------------------------------------
MY_CLEANUP = '''"""A user's own cleanup hook, next to the scenario (in no installed package)."""

def shutdown():
    import etcd_client
    etcd_client.cleanup_runtime()
    print("my_cleanup.shutdown ran", flush=True)
'''


def test_a_cleanup_hook_next_to_the_scenario_runs_inline_and_named(tmp_path: Path) -> None:
    scenario = tmp_path / "no_service.py"
    scenario.write_text(NO_SERVICE)
    (tmp_path / "my_cleanup.py").write_text(MY_CLEANUP)
    config = config_module.load()
    named = {"requirements": ["etcd-client-py==0.5.1"], "mode": "atexit",
             "cleanup": "my_cleanup:shutdown"}
    config["strategies"] = {**config["strategies"], "mine-atexit": named}
    out = tmp_path / "hooks"
    inline = "etcd-client-py==0.5.1@explicit:my_cleanup:shutdown"
    outcome = run(
        _plan(scenarios=[str(scenario)], strategies=[inline, "mine-atexit"], runs=2),
        Options(out=out, config=config),
    )
    assert outcome.code == 0
    records = list(iter_records(out))
    assert sorted(r["strategy"] for r in records) == [inline, inline, "mine-atexit", "mine-atexit"]
    for record in records:
        assert record["category"] == "clean", record
        stdout = (out / record["artifacts"] / "stdout.txt").read_text()
        assert "my_cleanup.shutdown ran" in stdout
    cells = json.loads((out / "campaign.json").read_text())["cells"]
    assert "--cleanup" in cells[f"no_service/{inline}"]["argv"]


# -- tasks alone -----------------------------------------------------------------------------
def test_resume_reads_an_older_plan_and_checks_the_options_given_again(tmp_path: Path) -> None:
    from shutdown_harness.errors import UsageError
    from shutdown_harness.workflow import open_campaign

    out = tmp_path / "old"
    out.mkdir()
    # A campaign.json from before some settings existed: they take their defaults.
    old = {"scenarios": ["sanity"], "strategies": ["etcd-0.5.1"], "runs": 4, "jobs": 2,
           "seed": 9, "shard": [1, 2], "etcd": "auto", "cores": "auto"}
    (out / "campaign.json").write_text(json.dumps({"format": 1, "plan": old}))
    said: list[str] = []
    given = Plan(runs=4, jobs=1, seed=123)  # seed drawn afresh: not given, so not compared
    store, plan = open_campaign(given, out, True, frozenset({"runs", "jobs"}), said.append)
    store.close()
    assert plan == Plan.from_dict(old).replace(jobs=1)  # the stored plan, jobs as given now
    assert plan.seed == 9 and plan.shard == (1, 2) and plan.keep_artifacts == 3
    assert said == [f"resuming {out}: 0 runs already recorded"]
    with pytest.raises(UsageError, match="planned with runs=4, not 5"):
        open_campaign(given.replace(runs=5), out, True, frozenset({"runs"}), said.append)


def test_environment_says_what_platform_says_without_running_uname() -> None:
    import platform

    from shutdown_harness.workflow import environment

    found = environment()
    assert found["os"] == platform.platform()
    assert found["libc"] == " ".join(platform.libc_ver()).strip()
    assert found["python_build"] == " ".join(platform.python_build())
    assert found["python_implementation"] == platform.python_implementation()
    assert (found["kernel"], found["machine"]) == (platform.release(), platform.machine())


@pytest.mark.parametrize("begun", [True, False])
def test_the_report_stage_loads_only_once_begun_and_close_waits(begun: bool) -> None:
    code = (
        "import sys, time\n"
        "from shutdown_harness.workflow import REPORT_MODULES, ReportStage\n"
        "stage = ReportStage()\n"
        "time.sleep(0.3)\n"
        "assert not set(REPORT_MODULES) & set(sys.modules), 'loaded before begin'\n"
        f"if {begun}:\n"
        "    stage.begin()\n"
        "stage.close()\n"
        "loaded = set(REPORT_MODULES) <= set(sys.modules)\n"
        f"assert loaded == {begun}, sorted(set(REPORT_MODULES) - set(sys.modules))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
