"""pytest integration: shutdown stress inside a client project's own test suite.

Registered through the ``pytest11`` entry point, so installing shutdown-harness is enough.
Two forms. The ``shutdown_stress`` fixture runs a scenario (a function, a scenario name or a
``.py`` path) many times in short-lived child processes and returns a :class:`StressResult`::

    async def concurrent_puts():                # the body of one child process: self-contained
        import asyncio, os
        from etcd_client import Client
        ep = os.environ["SHUTDOWN_HARNESS_ETCD"]
        async with Client([f"http://{ep}"]).connect() as c:
            await asyncio.gather(*[c.put(f"k{i}".encode(), b"v") for i in range(50)])

    def test_no_crash_at_exit(shutdown_stress):
        shutdown_stress.run(concurrent_puts, runs=90, max_rate=0.05, services=("etcd",))

With ``max_rate`` the test fails unless the upper end of the 95% (Wilson) interval of the
failure rate (crash, error or hang; infra runs do not count) is below it, and the campaign
stops as soon as that verdict is certain. Without it, ``run`` returns the result for the test
to judge (``result.assert_rate_below(0.05)``, ``result.rate``, ``result.signatures``...).

The marker runs the test function's own body (sync or ``async def``) in the children::

    @pytest.mark.shutdown_stress(runs=90, max_rate=0.05, services=("etcd",))
    async def test_no_crash_at_exit():
        ...                                     # the same body as above

A marked test may take ``@pytest.mark.parametrize`` arguments (literal values, passed to the
children) but no fixtures. Markers on the class or module merge with the closest one winning.

Where the children's Python comes from: ``strategy=`` (any strategy name or inline spec, e.g.
``"etcd-client-py==0.4.1"``, built once into a cached virtualenv), else ``--shutdown-strategy``,
else the test session's own Python, so a project tests the build it has installed. A function
body needs the services ``services`` names, and none without it (``services=("etcd",)``); a
scenario file, those its ``SERVICES`` lists. A service is etcd, valkey, or one the project's
pyproject.toml declares in ``[tool.shutdown-harness.services.NAME]``. Its endpoint:
``services={"etcd": "HOST:PORT"}``, else ``--shutdown-etcd`` / ``--shutdown-valkey``, else the
variable it exports (``$SHUTDOWN_HARNESS_ETCD``...) when set, else one started once per test
session (per xdist worker) from the embedded binary or the declared command.

The runs of one test go through the harness's own pool: ``jobs`` children at once, by default
the usable CPUs divided among the pytest-xdist workers (``--shutdown-jobs`` overrides). Under
pytest-timeout no run starts after the test's deadline minus a reserve (the per-run timeout,
at most 30% of the test's timeout, plus 5% or 2 s), so the verdict uses the runs that finished.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import io
import os
import re
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any

import pytest
from shutdown_harness import config as config_module
from shutdown_harness import stressors
from shutdown_harness.errors import UsageError
from shutdown_harness.plan import Plan
from shutdown_harness.progress import Tally
from shutdown_harness.schema import FAILURE_CATEGORIES
from shutdown_harness.stats import format_pct, wilson_interval
from shutdown_harness.store import iter_records

if TYPE_CHECKING:
    from shutdown_harness.workflow import Outcome

__all__ = [
    "HOST_STRATEGY",
    "DEFAULT_RUNS",
    "DEFAULT_TIMEOUT",
    "StressResult",
    "ShutdownStress",
    "shutdown_stress",
    "pytest_addoption",
    "pytest_configure",
    "pytest_unconfigure",
    "pytest_pyfunc_call",
    "pytest_timeout_set_timer",
]

HOST_STRATEGY = "host"
DEFAULT_RUNS = 100
DEFAULT_TIMEOUT = 30.0
_MARKER = "shutdown_stress"
_MARKER_KEYS = frozenset(
    {"runs", "max_rate", "strategy", "jobs", "timeout", "services", "exit_delay", "seed",
     "warm"}
)
_EXPIRES = pytest.StashKey[tuple[float, float]]()  # (time.monotonic() it expires, timeout)
_SERVICES = pytest.StashKey["_SessionServices"]()
_STRESS = pytest.StashKey["ShutdownStress"]()


# -- the result ----------------------------------------------------------------------------
@dataclass
class StressResult:
    """What one :meth:`ShutdownStress.run` measured, and where its evidence is."""

    scenario: str
    strategy: str
    folder: Path
    runs: int  # runs that count for the rate (infra runs excluded)
    failures: int  # crash + error + hang
    infra: int
    planned: int
    jobs: int
    categories: Counter[str]
    signatures: Counter[str]  # failure signatures only
    stopped: str | None = None  # why fewer runs than planned: "decided", "deadline", ...
    log: str = ""
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    fidelity: Any = None  # warm=True: harness.aggregate.Fidelity (warm runs vs cold controls)

    @property
    def rate(self) -> float:
        return self.failures / self.runs if self.runs else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of the failure rate."""
        return wilson_interval(self.failures, self.runs)

    def exemplars(self) -> list[Path]:
        """Artifact folders (full stdout, stderr, backtrace) of failed runs, a few per signature."""
        found: list[Path] = []
        for record in self.records:
            if record["category"] in FAILURE_CATEGORIES and record.get("artifacts"):
                found.append(self.folder / record["artifacts"])
        return found

    def describe(self) -> str:
        """Rate, interval, top signatures and the artifacts folder, one item per line."""
        low, high = self.interval
        lines = [
            f"rate:       {self.failures}/{self.runs} runs failed = {format_pct(self.rate)}"
            f" (95% interval {format_pct(low, 'down')}..{format_pct(high, 'up')})",
        ]
        if self.runs + self.infra < self.planned:
            why = {
                "decided": "the bound could no longer be met",
                "deadline": "the pytest-timeout deadline came",
            }.get(self.stopped or "", self.stopped or "interrupted")
            lines.append(
                f"stopped:    after {self.runs + self.infra} of {self.planned} planned runs: {why}"
            )
        by_signature = self._signature_details()
        top = ", ".join(
            f"{sig} x{n}{by_signature.get(sig, '')}" for sig, n in self.signatures.most_common(3)
        )
        lines.append(f"signatures: {top or 'none'}")
        if self.infra:
            lines.append(f"infra:      {self.infra} runs lost to the service or harness")
        if self.fidelity is not None:
            lines.append(f"fidelity:   {self.fidelity.sentence()}")
        lines.append(f"artifacts:  {self.folder}")
        exemplars = self.exemplars()
        if exemplars:
            lines.append(f"exemplar:   {exemplars[0]}")
        lines.append(f"report:     shutdown-harness report {self.folder} --format markdown")
        return "\n".join(lines)

    def _signature_details(self) -> dict[str, str]:
        details: dict[str, str] = {}
        for record in self.records:
            sig = str(record.get("signature"))
            if record["category"] in FAILURE_CATEGORIES and sig not in details:
                what = record.get("signal") or record.get("outcome") or record["category"]
                details[sig] = f" ({what}, {record.get('phase', 'unknown')})"
        return details

    def assert_rate_below(self, bound: float) -> None:
        """Fail unless the upper end of the 95% interval of the failure rate is below ``bound``."""
        if not 0 < bound <= 1:
            raise UsageError(f"max_rate must be in (0, 1], not {bound!r}")
        head = f"shutdown stress of {self.scenario} (strategy {self.strategy})"
        if self.runs == 0:
            pytest.fail(f"{head}: no run finished\n{self.describe()}", pytrace=False)
        if self.fidelity is not None and self.fidelity.differs:
            pytest.fail(f"{head}: warm and cold runs differ, the rate cannot be trusted\n"
                        + self.describe(), pytrace=False)
        if self.interval[1] >= bound:
            pytest.fail(
                f"{head}: failure rate not shown to be below {format_pct(bound)}\n"
                + self.describe(),
                pytrace=False,
            )


class _Stop:
    """The stop callback of one campaign: no new run once no outcome of the remaining runs can
    pass ``bound`` (the verdict is decided), or once the pytest-timeout ``deadline`` is near."""

    def __init__(self, planned: int, bound: float | None, deadline: float | None) -> None:
        self.planned = planned
        self.bound = bound
        self.deadline = deadline
        self.stopped: str | None = None  # "decided" or "deadline" once it said stop

    def __call__(self, tally: Tally) -> str | None:
        if self._decided(tally):
            self.stopped = "decided"
            return "the failure rate can no longer be shown below the bound"
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.stopped = "deadline"
            return "deadline reached"
        return None

    def _decided(self, tally: Tally) -> bool:
        if self.bound is None:
            return False
        failures = Tally.failures(tally.total)
        # The most runs the rate can still have: every planned run that is not infra so far.
        most = self.planned - tally.total["infra"]
        return bool(failures and most > 0 and wilson_interval(failures, most)[1] >= self.bound)


# -- scenarios from functions --------------------------------------------------------------
def _function_source(func: Callable[..., Any]) -> str:
    """The function's source, dedented, without its decorators."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as e:
        raise UsageError(f"cannot read the source of {func!r}: {e}") from None
    tree = ast.parse(source)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        raise UsageError(f"{func.__qualname__} is not a plain def/async def function")
    lines = source.splitlines()
    return "\n".join(lines[node.lineno - 1 :]) + "\n"


def _code_objects(code: CodeType) -> Iterable[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _code_objects(const)


def _outside_names(func: Callable[..., Any]) -> list[str]:
    """Names the function takes from its module or enclosing function (absent in a child)."""
    code = func.__code__
    loaded: set[str] = set()
    stored: set[str] = set()
    for each in _code_objects(code):
        for ins in dis.get_instructions(each):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                loaded.add(str(ins.argval))
            elif ins.opname in ("STORE_GLOBAL", "STORE_NAME"):
                stored.add(str(ins.argval))
    missing = loaded - stored - set(dir(builtins)) - {func.__name__}
    # "@py_assert..." names come from pytest's assertion rewriting; the child gets the source.
    return sorted(name for name in missing | set(code.co_freevars) if not name.startswith("@"))


def _literal_repr(name: str, value: Any) -> str:
    text = repr(value)
    try:
        ok = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        ok = False
    if not ok:
        raise UsageError(
            f"parameter {name}={text[:60]} cannot be passed to a child process: only literal"
            " values (str, numbers, bool, None, tuples, lists, dicts of them) can"
        )
    return text


def _scenario_from_function(
    func: Callable[..., Any],
    folder: Path,
    services: tuple[str, ...],
    params: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``func`` (self-contained) as a scenario module whose ``main`` calls it."""
    outside = _outside_names(func)
    if outside:
        raise UsageError(
            f"{func.__qualname__} runs in child processes, where names from its module or"
            f" enclosing function do not exist: {', '.join(outside)}; import or define them"
            " inside the function"
        )
    name = func.__name__
    params = dict(params or {})
    args = ", ".join(f"{key}={_literal_repr(key, value)}" for key, value in params.items())
    if inspect.iscoroutinefunction(func):
        main = f"async def main():\n    await _BODY({args})\n"
    else:
        main = f"def main():\n    _BODY({args})\n"
    where = inspect.getsourcefile(func) or "?"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(
        f'"""{name} from {where} (pytest shutdown_stress)."""\n\n'
        f"SERVICES = {tuple(services)!r}\n\n\n"
        f"{_function_source(func)}\n\n_BODY = {name}\n\n\n{main}",
        encoding="utf-8",
    )
    return path


# -- session-wide services -----------------------------------------------------------------
class _SessionServices:
    """Embedded servers started on first need and shared by the session's tests."""

    def __init__(self) -> None:
        self.started: dict[str, Any] = {}

    def endpoint(self, kind: Any) -> str:
        """``host:port`` of the session's service of this kind (a ServiceKind)."""
        service = self.started.get(kind.name)
        if service is not None and not service.alive():
            service.stop()
            service = None
        if service is None:
            from shutdown_harness import services

            service = self.started[kind.name] = services.start(kind, "embedded")
        return str(service.endpoint)

    def stop(self) -> None:
        for service in self.started.values():
            service.stop()
        self.started.clear()


def _session_services(config: pytest.Config) -> _SessionServices:
    if _SERVICES not in config.stash:
        config.stash[_SERVICES] = _SessionServices()
    return config.stash[_SERVICES]


# -- the fixture's object ------------------------------------------------------------------
def _default_jobs(config: pytest.Config) -> int:
    given = config.getoption("shutdown_jobs", None)
    if given:
        return int(given)
    # An xdist worker knows the pool's size; the environment variable would also leak into a
    # pytest started by a test, which is not a worker.
    workerinput = getattr(config, "workerinput", None)
    workers = int(workerinput.get("workercount", 1)) if workerinput else 1
    return max(1, stressors.cpu_count() // max(1, workers))


def _deadline(item: pytest.Item, run_timeout: float) -> float | None:
    """When no new run may start for pytest-timeout to leave room for the verdict."""
    expires = item.stash.get(_EXPIRES, None)
    if expires is None:
        return None
    at, timeout = expires
    return at - min(run_timeout, 0.3 * timeout) - max(2.0, 0.05 * timeout)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120] or "test"


class ShutdownStress:
    """The ``shutdown_stress`` fixture's object: :meth:`run` campaigns for one test."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._item = request.node
        self._config = request.config
        self._tmp = tmp_path
        self._count = 0

    def _folder(self) -> Path:
        self._count += 1
        root = self._config.getoption("shutdown_out", None)
        if not root:
            return self._tmp / f"shutdown-stress-{self._count}"
        base = Path(root) / _safe(self._item.nodeid)
        while (base / str(self._count)).exists():  # kept from an earlier session
            self._count += 1
        return base / str(self._count)

    def _endpoints(
        self, needed: Iterable[str], given: Mapping[str, str | None], known: Mapping[str, Any]
    ) -> dict[str, str]:
        endpoints: dict[str, str] = {}
        for name in needed:
            endpoint = (
                given.get(name)
                or self._config.getoption(f"shutdown_{name}", None)
                or os.environ.get(known[name].env_var)
            )
            if not endpoint or endpoint == "embedded":
                endpoint = _session_services(self._config).endpoint(known[name])
            endpoints[name] = endpoint
        return endpoints

    def _config_with_host(self) -> dict[str, Any]:
        pyproject = self._config.rootpath / "pyproject.toml"
        config = config_module.load(pyproject if pyproject.is_file() else None)
        host = {
            "requirements": [],
            "python": sys.executable,
            "mode": "none",
            "description": "the test session's own Python",
        }
        return {**config, "strategies": {**config.get("strategies", {}), HOST_STRATEGY: host}}

    def run(
        self,
        scenario: str | Path | Callable[..., Any],
        *,
        runs: int = DEFAULT_RUNS,
        max_rate: float | None = None,
        strategy: str | None = None,
        jobs: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        services: Mapping[str, str | None] | Iterable[str] | None = None,
        exit_delay: float | None = None,
        seed: int = 0,
        params: Mapping[str, Any] | None = None,
        warm: bool = False,
    ) -> StressResult:
        """Run ``scenario`` ``runs`` times in child processes; judge it when ``max_rate`` is set.

        ``scenario``: a self-contained function (its body is one child's work; ``params`` are
        its keyword arguments, literal values), a built-in scenario name or a scenario ``.py``
        path. ``services``: the services a function needs (none by default; ``("etcd",)``),
        or a mapping of service to ``HOST:PORT`` (None: the default endpoint).
        ``warm``: fork the children from a server that imported the scenario (``run --warm``),
        with cold controls; the test fails when warm and cold runs differ (Fisher p < 0.01).
        """
        try:
            return self._run(
                scenario, runs=runs, max_rate=max_rate, strategy=strategy, jobs=jobs,
                timeout=timeout, services=services, exit_delay=exit_delay, seed=seed,
                params=params, warm=warm,
            )
        except UsageError as e:
            problem = str(e)
        pytest.fail(f"shutdown stress: {problem}", pytrace=False)

    def _run(
        self,
        scenario: str | Path | Callable[..., Any],
        *,
        runs: int,
        max_rate: float | None,
        strategy: str | None,
        jobs: int | None,
        timeout: float,
        services: Mapping[str, str | None] | Iterable[str] | None,
        exit_delay: float | None,
        seed: int,
        params: Mapping[str, Any] | None,
        warm: bool = False,
    ) -> StressResult:
        from shutdown_harness import discovery
        from shutdown_harness.service_kinds import BUILTIN, kinds
        from shutdown_harness.workflow import Options, run

        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise UsageError(f"runs must be a positive whole number, not {runs!r}")
        if max_rate is not None and not 0 < max_rate <= 1:
            raise UsageError(f"max_rate must be in (0, 1], not {max_rate!r}")
        if max_rate is not None:
            _check_feasible(runs, max_rate)
        given: dict[str, str | None] = {}
        if isinstance(services, Mapping):
            given = dict(services)
        elif services is not None:
            given = dict.fromkeys(services)
        config = self._config_with_host()
        known = kinds(config)
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise UsageError(
                f"unknown service {unknown[0]!r} (known: {', '.join(known)}; declare it in"
                f" [tool.shutdown-harness.services.{unknown[0]}])"
            )
        folder = self._folder()
        if callable(scenario):
            needed = tuple(given)
            # Beside tmp_path, never under --shutdown-out: pytest would collect test_*.py there.
            where = self._tmp / f"shutdown-stress-{self._count}-scenario"
            path = _scenario_from_function(scenario, where, needed, params)
            spec = str(path)
        else:
            if params:
                raise UsageError("params= is for function scenarios only")
            spec = str(scenario)
        info = discovery.resolve([spec], services=known)[0]
        endpoints = self._endpoints(info.services, given, known)
        strategy = strategy or self._config.getoption("shutdown_strategy", None) or HOST_STRATEGY
        jobs = jobs or _default_jobs(self._config)
        plan = Plan(
            scenarios=(spec,),
            strategies=(strategy,),
            runs=runs,
            jobs=jobs,
            timeout=timeout,
            seed=seed,
            etcd=endpoints.get("etcd", "embedded"),
            valkey=endpoints.get("valkey", "embedded"),
            services={k: v for k, v in endpoints.items() if k not in BUILTIN},
            exit_delay=exit_delay,
            warm=bool(warm),
        )
        log = io.StringIO()
        stop = _Stop(runs, max_rate, _deadline(self._item, timeout))
        outcome = run(
            plan,
            Options(out=folder, config=config, stream=log, with_reports=False, stop=stop),
        )
        stopped = stop.stopped or ("interrupted" if outcome.interrupted else None)
        result = _result(info.name, strategy, folder, outcome, log.getvalue(), stopped)
        if max_rate is not None:
            result.assert_rate_below(max_rate)
        return result


def _check_feasible(runs: int, max_rate: float) -> None:
    """UsageError, before any run, when no outcome of ``runs`` runs can pass ``max_rate``."""
    from shutdown_harness.gates import runs_to_pass

    needed = runs_to_pass("max_upper", max_rate)
    if needed is not None and runs >= needed:
        return
    bound = wilson_interval(0, runs)[1]
    raise UsageError(
        f"runs={runs} can never show a failure rate below {format_pct(max_rate)}: {runs} runs"
        f" without a failure bound it at {format_pct(bound, 'up')}; {needed} runs without a"
        " failure are needed (or a higher max_rate)"
    )


def _result(
    scenario: str, strategy: str, folder: Path, outcome: Outcome, log: str, stopped: str | None
) -> StressResult:
    categories: Counter[str] = Counter()
    signatures: Counter[str] = Counter()
    records = list(iter_records(folder))
    for record in records:
        categories[record["category"]] += 1
        if record["category"] in FAILURE_CATEGORIES:
            signatures[record["signature"]] += 1
    infra = categories["infra"]
    fidelity = None
    if any(record.get("start") == "warm" for record in records):
        from shutdown_harness.aggregate import aggregate

        fidelity = next(iter(aggregate(records).fidelity), None)
    return StressResult(
        scenario=scenario,
        strategy=strategy,
        folder=folder,
        runs=len(records) - infra,
        failures=sum(categories[c] for c in FAILURE_CATEGORIES),
        infra=infra,
        planned=sum(info.runs for info in outcome.cells.values()),
        jobs=outcome.plan.jobs,
        categories=categories,
        signatures=signatures,
        stopped=stopped,
        log=log,
        records=records,
        fidelity=fidelity,
    )


# -- pytest hooks --------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shutdown-harness", "shutdown stress (shutdown-harness)")
    group.addoption("--shutdown-strategy", dest="shutdown_strategy", default=None,
                    help="strategy for shutdown_stress tests that name none, e.g."
                         " etcd-client-py==0.4.1 (default: this Python)")
    group.addoption("--shutdown-etcd", dest="shutdown_etcd", default=None,
                    help="etcd HOST:PORT for shutdown_stress (default: an embedded etcd)")
    group.addoption("--shutdown-valkey", dest="shutdown_valkey", default=None,
                    help="valkey HOST:PORT for shutdown_stress (default: an embedded valkey)")
    group.addoption("--shutdown-jobs", dest="shutdown_jobs", type=int, default=None,
                    help="children at once per test (default: CPUs / xdist workers)")
    group.addoption("--shutdown-out", dest="shutdown_out", default=None,
                    help="keep campaign folders under DIR/<test id>/ (default: tmp_path)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "shutdown_stress(runs=100, max_rate=..., strategy=None, jobs=None, timeout=30,"
        " services=None, exit_delay=None, seed=0): run the test's body in many child"
        " processes under shutdown-harness; fail unless the 95% upper bound of the failure"
        " rate is below max_rate",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVICES in config.stash:
        config.stash[_SERVICES].stop()


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout starts its timer: remember when it will fire (it still sets it)."""
    if settings.timeout and settings.timeout > 0:
        item.stash[_EXPIRES] = (time.monotonic() + float(settings.timeout), float(settings.timeout))


def _marker_options(item: pytest.Function) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for marker in reversed(list(item.iter_markers(_MARKER))):  # farthest first: closest wins
        if marker.args:
            raise UsageError("@pytest.mark.shutdown_stress takes keyword arguments only")
        unknown = sorted(set(marker.kwargs) - _MARKER_KEYS)
        if unknown:
            raise UsageError(
                f"@pytest.mark.shutdown_stress: unknown option {unknown[0]!r}"
                f" (known: {', '.join(sorted(_MARKER_KEYS))})"
            )
        options.update(marker.kwargs)
    if options.get("max_rate") is None:
        raise UsageError("@pytest.mark.shutdown_stress needs max_rate= (e.g. 0.05)")
    return options


def _argnames(item: pytest.Function) -> list[str]:
    """The test function's own arguments, as pytest fills them (none with a default)."""
    parameters = inspect.signature(item.obj).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and p.default is p.empty]


@pytest.fixture(autouse=True)
def _shutdown_stress_marked(request: pytest.FixtureRequest) -> None:
    """A test marked ``shutdown_stress`` gets a :class:`ShutdownStress` to run its body with
    (its own arguments are the children's, so it cannot request the fixture itself)."""
    if request.node.get_closest_marker(_MARKER) is not None:
        request.node.stash[_STRESS] = request.getfixturevalue("shutdown_stress")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test marked ``shutdown_stress``: its body runs in the children, not here."""
    if pyfuncitem.get_closest_marker(_MARKER) is None:
        return None
    problem = None
    try:
        options = _marker_options(pyfuncitem)
        callspec = getattr(pyfuncitem, "callspec", None)
        parametrized = dict(callspec.params) if callspec is not None else {}
        argnames = _argnames(pyfuncitem)
        fixtures = [name for name in argnames if name not in parametrized]
        if fixtures:
            raise UsageError(
                f"a @pytest.mark.shutdown_stress test runs its body in child processes: it"
                f" cannot use fixtures ({', '.join(fixtures)})"
            )
    except UsageError as e:
        problem = str(e)
    if problem is not None:
        pytest.fail(f"shutdown stress: {problem}", pytrace=False)
    stress = pyfuncitem.stash[_STRESS]
    params = {name: parametrized[name] for name in argnames}
    stress.run(inspect.unwrap(pyfuncitem.obj), params=params, **options)
    return True


@pytest.fixture
def shutdown_stress(request: pytest.FixtureRequest, tmp_path: Path) -> ShutdownStress:
    """Runs scenarios many times in child processes and judges their crash rate."""
    return ShutdownStress(request, tmp_path)
