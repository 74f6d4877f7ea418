"""pytest integration: shutdown stress inside a client project's own test suite.

Registered through the ``pytest11`` entry point, so installing shutdown-harness is enough::

    def test_no_crash_at_exit(shutdown_stress):
        async def body():                      # the body of one short-lived child process
            import asyncio, os
            from etcd_client import Client
            ep = os.environ["SHUTDOWN_HARNESS_ETCD"]
            async with Client([f"http://{ep}"]).connect() as c:
                await asyncio.gather(*[c.put(f"k{i}".encode(), b"v") for i in range(50)])

        result = shutdown_stress.run(body, runs=200)   # a function, a scenario name or a path
        result.assert_rate_below(0.02)                  # upper 95% bound must stay below 2%

The runs of one test go through the harness's own pool (``jobs`` children at once, by default
the CPUs divided among pytest-xdist workers), not one run per xdist worker. Under
pytest-timeout, the campaign stops early enough to leave time for the verdict: runs that did
not fit are not counted, and the verdict uses the runs that finished.

By default the children run with the test session's own Python, so a client project tests the
build it has installed; ``strategy="etcd-client-py==0.4.1"`` (any strategy name or inline spec)
builds and caches a virtualenv for it instead. The etcd (and valkey) endpoint comes from
``services={"etcd": "HOST:PORT"}``, else from ``--shutdown-etcd`` / ``$SHUTDOWN_HARNESS_ETCD``,
else an embedded server is started for the run.
"""

from __future__ import annotations

import inspect
import io
import os
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import config as config_module
from harness.progress import FAILURE_CATEGORIES
from harness.stats import format_rate, wilson_interval
from harness.store import iter_records

__all__ = ["StressResult", "ShutdownStress", "pytest_addoption", "shutdown_stress"]

HOST_STRATEGY = "host"


@dataclass
class StressResult:
    """The outcome of one :meth:`ShutdownStress.run`: counts, interval, signatures, folder."""

    folder: Path
    runs: int
    failures: int
    infra: int
    categories: Counter[str]
    signatures: Counter[str]
    planned: int
    log: str = ""
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.failures / self.runs if self.runs else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.failures, self.runs)

    def describe(self) -> str:
        top = ", ".join(f"{sig} x{n}" for sig, n in self.signatures.most_common(3)) or "none"
        return (
            f"{format_rate(self.failures, self.runs)} failed "
            f"({self.runs} runs of {self.planned} planned, {self.infra} infra); "
            f"top signatures: {top}; artifacts: {self.folder}"
        )

    def assert_rate_below(self, bound: float) -> None:
        """Fail unless the upper end of the 95% interval of the failure rate is below ``bound``."""
        if self.runs == 0:
            pytest.fail(f"shutdown stress: no run finished; see {self.folder}", pytrace=False)
        low, high = self.interval
        if high >= bound:
            pytest.fail(
                f"shutdown stress: failure rate not shown to be below {bound:.2%} "
                f"(95% interval {low:.2%}..{high:.2%}): {self.describe()}",
                pytrace=False,
            )


def _function_scenario(func: Callable[..., Any], folder: Path) -> Path:
    """Write a function's source as a scenario module (it must be self-contained)."""
    source = textwrap.dedent(inspect.getsource(func))
    name = func.__name__
    path = folder / f"{name}_scenario.py"
    path.write_text(
        f'"""{name} from {inspect.getsourcefile(func)} (pytest shutdown_stress)."""\n'
        f"SERVICES = ('etcd',)\n\n{source}\n\nmain = {name}\n"
    )
    return path


class ShutdownStress:
    """The ``shutdown_stress`` fixture's object."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._request = request
        self._tmp = tmp_path
        self._count = 0

    def _jobs(self) -> int:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        return max(1, len(os.sched_getaffinity(0)) // workers)

    def _deadline(self) -> float | None:
        """Seconds left before pytest-timeout would end this test, minus a margin."""
        marker = self._request.node.get_closest_marker("timeout")
        timeout = None
        if marker is not None and marker.args:
            timeout = float(marker.args[0])
        elif self._request.config.pluginmanager.hasplugin("timeout"):
            timeout = float(self._request.config.getini("timeout") or 0) or None
            timeout = getattr(self._request.config.option, "timeout", None) or timeout
        if not timeout:
            return None
        return time.monotonic() + 0.8 * float(timeout) - 5.0

    def run(
        self,
        scenario: str | Path | Callable[..., Any],
        *,
        runs: int = 100,
        strategy: str | None = None,
        jobs: int | None = None,
        timeout: float = 30.0,
        services: dict[str, str] | None = None,
        exit_delay: float | None = None,
    ) -> StressResult:
        from harness.workflow import Campaign, run

        self._count += 1
        folder = self._tmp / f"shutdown-stress-{self._count}"
        if callable(scenario):
            scenario_spec = str(_function_scenario(scenario, self._tmp))
        else:
            scenario_spec = str(scenario)
        option = self._request.config.getoption("shutdown_etcd", None)
        etcd = (services or {}).get("etcd") or option or os.environ.get("SHUTDOWN_HARNESS_ETCD")
        valkey = (services or {}).get("valkey") or os.environ.get("SHUTDOWN_HARNESS_VALKEY")
        config = config_module.load()
        strategies = [strategy] if strategy else [HOST_STRATEGY]
        if not strategy:
            config = {
                **config,
                "strategies": {
                    **config.get("strategies", {}),
                    HOST_STRATEGY: {
                        "requirements": [],
                        "python": sys.executable,
                        "mode": "none",
                        "description": "the test session's own Python",
                    },
                },
            }
        plan: dict[str, Any] = {
            "command": None,
            "scenarios": [scenario_spec],
            "strategies": strategies,
            "runs": runs,
            "jobs": jobs or self._jobs(),
            "timeout": timeout,
            "seed": 0,
            "shard": None,
            "until_halfwidth": None,
            "etcd": etcd or "embedded",
            "valkey": valkey or "embedded",
            "pin": None,
            "pin_cpus": None,
            "exit_delay": exit_delay,
            "cores": "auto",
            "keep_cores": False,
            "keep_artifacts": 3,
            "cores_per_signature": 3,
            "faulthandler": True,
        }
        log = io.StringIO()
        campaign = Campaign(
            plan=plan,
            out=folder,
            resume=False,
            config=config,
            stream=log,
            deadline=self._deadline(),
            with_reports=False,
        )
        run(campaign)
        return _result(folder, campaign, log.getvalue())


def _result(folder: Path, campaign: Any, log: str) -> StressResult:
    categories: Counter[str] = Counter()
    signatures: Counter[str] = Counter()
    records = list(iter_records(folder))
    for record in records:
        categories[record["category"]] += 1
        if record["category"] in FAILURE_CATEGORIES:
            signatures[record["signature"]] += 1
    failures = sum(categories[c] for c in FAILURE_CATEGORIES)
    infra = categories["infra"]
    planned = sum(info.runs for info in campaign.cells.values())
    return StressResult(
        folder=folder,
        runs=len(records) - infra,
        failures=failures,
        infra=infra,
        categories=categories,
        signatures=signatures,
        planned=planned,
        log=log,
        records=records,
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shutdown-harness")
    group.addoption(
        "--shutdown-etcd",
        dest="shutdown_etcd",
        default=None,
        help="etcd endpoint (HOST:PORT) for shutdown_stress; default: an embedded etcd",
    )


@pytest.fixture
def shutdown_stress(request: pytest.FixtureRequest, tmp_path: Path) -> ShutdownStress:
    """Run a scenario many times in child processes and judge its crash rate."""
    return ShutdownStress(request, tmp_path)
