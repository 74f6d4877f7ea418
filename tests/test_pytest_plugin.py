"""The pytest plugin, run for real in sub-pytests (pytester) against a real etcd.

The example file (examples/test_shutdown_example.py) must fail against etcd-client-py 0.4.1
and pass against 0.5.1. Its tests judge 90 runs against a 5% bound: they pass only with no
failure at all (upper bounds: 4.1% for 0/90, 6.0% for 1/90). Measured here: 0.4.1 fails 15-30%
of these runs (20% of 200 for the marker test's body), so it passes by chance with probability
(1 - p)**90 <= 7.6e-5 even at p = 10%; 0.5.1 failed 0 of ~500. 0.4.1 stops at its first failures
(passing is then out of reach), so its case is quick; 0.5.1 does all 180 runs (~25 s).

The other sub-pytests use the session's own Python and no service (cheap children).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from shutdown_harness import pytest_plugin
from shutdown_harness.errors import UsageError
from shutdown_harness.store import iter_records

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_shutdown_example.py"
CPUS = len(os.sched_getaffinity(0))


def _run_example(pytester: pytest.Pytester, etcd: str, strategy: str) -> pytest.RunResult:
    pytester.makepyfile(test_shutdown_example=EXAMPLE.read_text())
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--shutdown-strategy", strategy, "--shutdown-etcd", etcd,
        "--shutdown-jobs", "3", "-rN",
    )


def _artifact_folders(text: str) -> list[Path]:
    """The distinct artifact folders named in a sub-pytest's output (the short summary may
    repeat a failure's whole message)."""
    found = re.findall(r"^artifacts:\s+(\S+)$", text, re.MULTILINE)
    return [Path(p) for p in dict.fromkeys(found)]


@pytest.mark.etcd
@pytest.mark.slow
def test_example_fails_against_0_4_1(pytester: pytest.Pytester, etcd_endpoint: str) -> None:
    result = _run_example(pytester, etcd_endpoint, "etcd-client-py==0.4.1")
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    signature = "pthread-exit-unwind-abort" if shutil.which("gdb") else "unclassified-SIGABRT"
    for test in ("concurrent_puts", "test_put_get_survive_exit"):
        assert (
            f"shutdown stress of {test} (strategy etcd-client-py==0.4.1):"
            " failure rate not shown to be below 5.0%"
        ) in text
    rates = re.findall(
        r"^rate:\s+(\d+)/(\d+) runs failed = [\d.]+% \(95% interval ([\d.]+)%\.\.([\d.]+)%\)$",
        text,
        re.MULTILINE,
    )
    assert len(rates) == 2
    for failed, runs, low, high in rates:
        assert int(failed) >= 1 and int(runs) <= 90 and float(high) >= 5.0
        assert float(low) <= 100 * int(failed) / int(runs) <= float(high)
    # Each failure names the crash family; a rarer signature may come first in a short sample.
    assert len(re.findall(rf"^signatures: .*\b{signature} x\d+ \(SIGABRT, finalization\)",
                          text, re.MULTILINE)) == 2
    folders = _artifact_folders(text)
    assert len(folders) == 2
    for folder in folders:
        records = list(iter_records(folder))
        counts = Counter(r["category"] for r in records)
        assert counts["crash"] >= 1
        assert {r["strategy"] for r in records} == {"etcd-client-py==0.4.1"}
        assert {r["client_version"] for r in records} == {"etcd-client-py==0.4.1"}
        failed_record = next(r for r in records if r["category"] == "crash")
        assert (folder / failed_record["artifacts"] / "stderr.txt").exists()
    # Both campaigns ended once passing was out of reach, long before 90 runs.
    assert len(re.findall(r"^stopped:    after \d+ of 90 planned runs: the bound could no"
                          r" longer be met$", text, re.MULTILINE)) == 2


@pytest.mark.etcd
@pytest.mark.slow
def test_example_passes_against_0_5_1(pytester: pytest.Pytester, etcd_endpoint: str) -> None:
    result = _run_example(pytester, etcd_endpoint, "etcd-client-py==0.5.1")
    result.assert_outcomes(passed=2)


MARKER_TESTS = '''
import pytest

pytestmark = pytest.mark.shutdown_stress(runs=8, max_rate=0.5)


@pytest.mark.shutdown_stress(services=())
@pytest.mark.parametrize("crash", [False, True])
def test_body(crash):
    import os
    import sys
    print("child running", flush=True)
    if crash:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core: no gdb, a quick verdict
        sys.stderr.write("about to abort\\n")
        os.abort()


def test_fixtures_refused(tmp_path):
    pass
'''


def test_marker_form_under_xdist(pytester: pytest.Pytester) -> None:
    """The marked body runs in the children; parameters reach them; each test has its pool."""
    pytester.makepyfile(test_marker=MARKER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    assert "shutdown stress of test_body (strategy host): failure rate not shown" in text
    assert re.search(r"^signatures: \S.* x\d+ \(SIGABRT, work\)$", text, re.MULTILINE)
    assert "cannot use fixtures (tmp_path)" in text
    [folder] = _artifact_folders(text)
    campaign = json.loads((folder / "campaign.json").read_text())
    assert campaign["plan"]["jobs"] == max(1, CPUS // 2)  # the CPUs shared by 2 workers
    records = list(iter_records(folder))
    assert records and all(r["category"] == "crash" for r in records)
    assert len(records) < 8  # decided at 2 crashes (2/8: upper bound 59%) + those in flight
    stderr = (folder / records[0]["artifacts"] / "stderr.txt").read_text()
    assert "about to abort" in stderr


FIXTURE_TESTS = '''
import time

import pytest

CONSTANT = 3


def nap():
    import time
    time.sleep(0.1)


def uses_module_name():
    return CONSTANT + 1


@pytest.mark.timeout(14)
def test_deadline(shutdown_stress):
    started = time.monotonic()
    result = shutdown_stress.run(nap, runs=1000, jobs=2, timeout=3, services=())
    print(f"RESULT runs={result.runs} planned={result.planned} stopped={result.stopped}"
          f" records={len(result.records)} elapsed={time.monotonic() - started:.1f}")
    result.assert_rate_below(0.2)


def test_outside_names(shutdown_stress):
    shutdown_stress.run(uses_module_name, runs=2, services=())


def test_scenario_file(shutdown_stress, tmp_path):
    path = tmp_path / "exits_3.py"
    path.write_text('"""Exits with status 3."""\\nSERVICES = ()\\n\\n'
                    'def main():\\n    raise SystemExit(3)\\n')
    result = shutdown_stress.run(path, runs=4, jobs=2)
    assert (result.runs, result.failures, result.categories["error"]) == (4, 4, 4)
    assert result.rate == 1.0 and result.interval[0] > 0.4
    assert result.stopped is None
    result.assert_rate_below(0.5)
'''


def test_fixture_form_timeout_and_scenario_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixture=FIXTURE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    # pytest-timeout's deadline (14 s - 3 s per-run timeout - 2 s) stopped the campaign early,
    # the test was not killed, and its verdict used the runs that finished.
    m = re.search(
        r"RESULT runs=(\d+) planned=(\d+) stopped=(\w+) records=(\d+) elapsed=([\d.]+)", text
    )
    assert m, text
    runs, planned, stopped, records, elapsed = m.groups()
    assert 5 < int(runs) < int(planned) == 1000
    assert int(records) == int(runs) and stopped == "deadline"
    assert 7.0 < float(elapsed) < 12.0
    assert "Timeout" not in text
    assert "names from its module or enclosing function do not exist: CONSTANT" in text
    m = re.search(
        r"shutdown stress of exits_3 \(strategy host\): failure rate not shown to be below 50.0%"
        r"\nrate:\s+4/4 runs failed = 100%",
        text,
    )
    assert m, text
    assert re.search(r"^signatures: exit-3 x4 \(exit:3, work\)$", text, re.MULTILINE), text


# -- in-process helpers --------------------------------------------------------------------
def test_outside_names_and_generated_scenario(tmp_path: Path) -> None:
    limit = 3

    def closure() -> int:
        return limit + len(os.sep)

    assert pytest_plugin._outside_names(closure) == ["limit", "os"]

    async def body(count: int, name: str = "x") -> None:
        import asyncio

        await asyncio.sleep(0)
        assert [name] * count == [name for _ in range(count)]

    assert pytest_plugin._outside_names(body) == []
    path = pytest_plugin._scenario_from_function(body, tmp_path, ("etcd",), {"count": 2})
    text = path.read_text()
    assert "SERVICES = ('etcd',)" in text
    assert "async def main():\n    await _BODY(count=2)" in text
    compile(text, str(path), "exec")
    with pytest.raises(UsageError, match="literal values"):
        pytest_plugin._scenario_from_function(body, tmp_path, (), {"count": object()})
    with pytest.raises(UsageError, match="do not exist: limit, os"):
        pytest_plugin._scenario_from_function(closure, tmp_path, (), None)


def _result(failures: int, runs: int) -> pytest_plugin.StressResult:
    return pytest_plugin.StressResult(
        scenario="s", strategy="host", folder=Path("/nowhere"), runs=runs, failures=failures,
        infra=0, planned=runs, jobs=1, categories=Counter(crash=failures),
        signatures=Counter({"rust-panic": failures} if failures else {}),
    )


def test_assert_rate_below_uses_the_upper_bound() -> None:
    _result(0, 90).assert_rate_below(0.05)  # upper bound 4.1%
    with pytest.raises(pytest.fail.Exception, match=r"(?s)below 5.0%.*1/90 runs failed"):
        _result(1, 90).assert_rate_below(0.05)  # upper bound 6.0%
    with pytest.raises(pytest.fail.Exception, match="no run finished"):
        _result(0, 0).assert_rate_below(0.05)


def test_stop_callback_stops_only_when_passing_is_impossible() -> None:
    from shutdown_harness.progress import Tally

    tally = Tally()
    stop = pytest_plugin._Stop(planned=90, bound=0.05, deadline=None)
    clean = {"category": "clean", "scenario": "s", "strategy": "t"}
    for _ in range(10):
        tally.add(clean)
    assert stop(tally) is None and stop.stopped is None
    tally.add({**clean, "category": "crash"})  # 1 failure: at best 1/90, upper bound 6.0%
    assert stop(tally) is not None and stop.stopped == "decided"
    lenient = pytest_plugin._Stop(planned=90, bound=0.10, deadline=None)
    assert lenient(tally) is None  # 1/90 could still pass a 10% bound
    late = pytest_plugin._Stop(planned=90, bound=None, deadline=time.monotonic() - 1)
    assert late(tally) is not None and late.stopped == "deadline"



HOPELESS_TESTS = '''
import pytest


def body():
    open("ran", "a").close()


def test_function(shutdown_stress):
    shutdown_stress.run(body, runs=40, max_rate=0.05, services=())


@pytest.mark.shutdown_stress(runs=40, max_rate=0.05)
def test_marker():
    open("ran", "a").close()
'''


def test_a_stress_test_that_can_never_pass_fails_before_any_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_hopeless=HOPELESS_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    message = ("runs=40 can never show a failure rate below 5.0%: 40 runs without a failure"
               " bound it at 8.8%; 73 runs without a failure are needed")
    # One failure section per test (newer pytest repeats the message in its short summary too).
    head = f"shutdown stress: {message}"
    sections = [line for line in text.splitlines() if line.startswith(head)]
    assert len(sections) == 2, text
    assert not list(pytester.path.rglob("ran"))  # no child ran


DECLARED_TESTS = '''
def no_service():
    import os
    told = [k for k in ("SHUTDOWN_HARNESS_ETCD", "SHUTDOWN_HARNESS_VALKEY") if k in os.environ]
    assert not told, told


def get_web():
    import os, urllib.request
    urllib.request.urlopen(f"http://{os.environ['WEB_AT']}/", timeout=5).read()


def test_no_service_unless_asked(shutdown_stress):
    result = shutdown_stress.run(no_service, runs=2, max_rate=0.9)
    assert result.categories["clean"] == 2


def test_declared_service(shutdown_stress):
    result = shutdown_stress.run(get_web, runs=2, max_rate=0.9, services=("web",))
    assert result.categories["clean"] == 2
'''


def test_function_form_gets_only_the_services_it_names(pytester: pytest.Pytester) -> None:
    """No service by default (no etcd either); a service the project declares, by its name."""
    pytester.makefile(
        ".toml",
        pyproject=(
            "[tool.shutdown-harness.services.web]\n"
            f'command = "{sys.executable} -m http.server {{port}} --bind 127.0.0.1"\n'
            'ready = "http"\nenv = "WEB_AT"\n'
        ),
    )
    pytester.makepyfile(test_declared=DECLARED_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


WARM_TESTS = '''
import pytest


def crash_every_third_run():
    import atexit, os
    if int(os.environ["SHUTDOWN_HARNESS_RUN_ID"].rsplit("/", 1)[1]) % 3 == 0:
        atexit.register(os.abort)  # a crash during finalization


def test_warm(shutdown_stress):
    result = shutdown_stress.run(crash_every_third_run, runs=40, jobs=2, services=(), warm=True)
    starts = {r["start"] for r in result.records}
    print(f"RESULT starts={sorted(starts)} warm={result.fidelity.warm} "
          f"cold={result.fidelity.cold} differs={result.fidelity.differs}")
    kinds = {(r["start"], r["signature"], r["phase"]) for r in result.records
             if r["category"] != "clean"}
    print(f"KINDS {sorted(kinds)}")
    result.assert_rate_below(0.2)


@pytest.mark.shutdown_stress(runs=24, max_rate=0.5, warm=True)
def test_warm_marker():
    pass
'''


def test_warm_option_of_run_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_warm=WARM_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    # 40 runs: 20 cold controls (at least 20), 20 warm; 14 crash, 7 of each start
    assert "RESULT starts=['cold', 'warm'] warm=(7, 20) cold=(7, 20) differs=False" in text, text
    # a warm crash is classified like a cold one: one signature and phase for both starts
    kinds = re.search(r"KINDS (\[.*\])", text)
    assert kinds, text
    (cold, warm) = ast.literal_eval(kinds.group(1))
    assert (cold[0], warm[0]) == ("cold", "warm") and cold[1:] == warm[1:], text
    assert warm[2] == "finalization"
    assert re.search(r"^fidelity:\s+crash_every_third_run / host: warm 7/20", text, re.M), text
