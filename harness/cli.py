"""The command line: ``shutdown-harness SUBCOMMAND ...`` (also ``python -m shutdown_harness``).

Exit codes: 0 success; 1 a gate or threshold failed; 2 bad input or an unusable environment
(one line on stderr, no traceback); 130 interrupted (every finished run is kept: ``--resume``).
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from shutdown_harness import __version__
from shutdown_harness import config as config_module
from shutdown_harness.errors import EXIT_OK, EXIT_USAGE, UsageError
from shutdown_harness.plan import Plan, parse_shard
from shutdown_harness.service_kinds import BUILTIN, ServiceKind
from shutdown_harness.stressors import parse_exit_delay, parse_jobs, pin_cpus

__all__ = ["main", "build_parser"]

#: `run` options that define the plan (stored in campaign.json), by argparse dest.
_PLAN_KEYS = (
    "scenario",
    "strategy",
    "command",
    "runs",
    "jobs",
    "timeout",
    "seed",
    "shard",
    "until_halfwidth",
    "etcd",
    "valkey",
    "services",
    "pin",
    "exit_delay",
    "cores",
    "keep_cores",
    "keep_artifacts",
    "cores_per_signature",
    "no_faulthandler",
    "python",
    "warm",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _number(kind: type[int] | type[float], minimum: float, strict: bool) -> Any:
    """An argparse type: a whole number (``int``) or a number, at least (or above) minimum."""
    what = "a whole number" if kind is int else "a number"
    bound = f"more than {minimum:g}" if strict else f"at least {minimum:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not math.isfinite(value):  # nan never fires a timeout, inf cannot be stored
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    return parse


_positive_int = _number(int, 1, strict=False)
_non_negative_int = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)


def _argtype(parse: Callable[[str], Any], option: str) -> Callable[[str], Any]:
    """An argparse type from a parser of this package that raises UsageError with a message
    starting with the option's name (argparse names the option itself)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UsageError as e:
            message = str(e).removeprefix(option).lstrip(": ")
            raise argparse.ArgumentTypeError(message) from None

    return convert


def _service_how(kind: str | ServiceKind) -> Callable[[str], str]:
    """``--etcd``/``--valkey``/``--NAME``: checked by `harness.services`, imported only when
    given (services and containers were 40 ms of the CLI's 70 ms of imports, -X importtime)."""

    def validate(text: str) -> str:
        from shutdown_harness.services import validate_how

        return validate_how(kind)(text)

    return validate


def _exit_delay(text: str) -> float:
    value = parse_exit_delay(text)
    if value <= 0:
        raise UsageError(f"--exit-delay must be more than 0, not {text}")
    return value


def _halfwidth(text: str) -> float:
    # Imported here, as a subcommand's modules are: stats is ~10 M instructions (~5 ms) that
    # `--help` and `list` do not need.
    from shutdown_harness.stats import parse_halfwidth

    return parse_halfwidth(text)


#: How each preset key is checked (the same parsers as the options'), by argparse dest.
_PRESET_TYPES: dict[str, Callable[[str], Any]] = {
    "runs": _positive_int,
    "jobs": _argtype(parse_jobs, "--jobs"),
    "timeout": _positive_float,
    "seed": _number(int, -(1 << 63), strict=False),
    "until_halfwidth": _argtype(_halfwidth, "--until-halfwidth"),
    "exit_delay": _argtype(_exit_delay, "--exit-delay"),
    "keep_artifacts": _non_negative_int,
    "cores_per_signature": _non_negative_int,
}
_PRESET_TEXT = ("shard", "pin", "etcd", "valkey", "cores")
_PRESET_FLAGS = ("keep_cores", "no_faulthandler", "warm")


def _checked_preset(name: str, table: Any) -> dict[str, Any]:
    """A preset's table with its values checked (and numbers parsed) as the options are."""
    where = f"[tool.shutdown-harness.presets.{name}]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table")
    preset: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key in _PRESET_TYPES:
            if isinstance(value, bool | dict | list):
                raise UsageError(f"{where} {raw_key} = {value!r}: not a valid value")
            try:
                value = _PRESET_TYPES[key](str(value))
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"{where} {raw_key} = {value!r}: {e}") from None
        elif key in _PRESET_FLAGS and not isinstance(value, bool):
            raise UsageError(f"{where} {raw_key} = {value!r}: must be true or false")
        elif key in _PRESET_TEXT and not isinstance(value, str):
            raise UsageError(f"{where} {raw_key} = {value!r}: must be a string")
        elif key in ("scenarios", "strategies"):
            _string_list(f"{where} {raw_key}", value, single=True)
        preset[key] = value
    return preset


def _string_list(where: str, value: Any, single: bool = False) -> list[str]:
    """``value`` as a list of strings (a single string too when ``single``), else UsageError."""
    if single and isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where} = {value!r}: must be a list of names")
    return value


def _command_argv(command: str) -> list[str]:
    """``--command`` split as a shell would, with a program that exists (else UsageError)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"--command {command!r}: {e}") from None
    if not argv:
        raise UsageError("--command is empty")
    program = argv[0]
    if "/" in program:
        found = os.path.isfile(program) and os.access(program, os.X_OK)
    else:
        found = shutil.which(program) is not None
    if not found:
        where = "" if "/" in program else " on PATH"
        raise UsageError(f"--command: no program {program!r}{where}")
    return argv


def _listed(value: Any) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _csv(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _service_options(group: Any, services: Mapping[str, ServiceKind]) -> None:
    """`--NAME auto|embedded|HOST:PORT` for each declared service (dest ``service:NAME``)."""
    for name, kind in services.items():
        if name in BUILTIN:
            continue
        what = (kind.summary or f"declared service {name}").replace("%", "%%")
        try:
            group.add_argument(f"--{name}", dest=f"service:{name}", metavar="HOW",
                               type=_argtype(_service_how(kind), f"--{name}"),
                               help=f"{what}: auto|embedded|HOST:PORT")
        except argparse.ArgumentError:
            raise UsageError(
                f"[tool.shutdown-harness.services.{name}]: --{name} is already an option of"
                " run: give the service another name"
            ) from None


def build_parser(services: Mapping[str, ServiceKind] | None = None,
                 only: str | None = None) -> argparse.ArgumentParser:
    """The command line; `services` adds `run --NAME` for each declared service.

    ``only``: the one subcommand to define (the one argv names first), which parses the same
    as the whole parser: building every subcommand's options was 18 M instructions (callgrind),
    ~9 ms of every command's start; `run`'s alone is a third of it.
    """
    parser = _Parser(
        prog="shutdown-harness",
        description="Reproduce, measure and explain interpreter-shutdown crashes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="pyproject.toml to read (default: ./)")
    sub = parser.add_subparsers(dest="command_name", required=True, parser_class=_Parser)
    for name, (summary, define) in _SUBCOMMANDS.items():
        if only is None or name == only:
            define(sub.add_parser(name, help=summary), services or {})
    return parser


def _run_options(run: argparse.ArgumentParser, services: Mapping[str, ServiceKind]) -> None:
    what = run.add_argument_group("what to run")
    what.add_argument("--scenario", action="append", help="scenario names or .py paths")
    what.add_argument("--strategy", action="append", help="strategy names or inline specs")
    what.add_argument("--command",
                      help='any child program instead of a scenario, e.g. "python x.py"')
    what.add_argument("--preset",
                      help="take unset options from [tool.shutdown-harness.presets.NAME]")
    how = run.add_argument_group("how")
    how.add_argument("--runs", type=_positive_int, help="runs per cell (cap when adaptive)")
    how.add_argument("--jobs", type=_argtype(parse_jobs, "--jobs"),
                     help="children at once: N, or 2x the CPUs (default: CPU count)")
    how.add_argument("--timeout", type=_positive_float, help="seconds per run")
    how.add_argument("--until-halfwidth", type=_argtype(_halfwidth, "--until-halfwidth"),
                     metavar="W",
                     help="stop a cell once its 95%% interval half-width is below W (0.02 or 2%%)")
    how.add_argument("--seed", type=int, help="seed for the scenarios' randomness")
    how.add_argument("--python", metavar="PATH|VERSION",
                     help="the interpreter of the strategies' virtualenvs (found by uv)")
    how.add_argument("--shard", help="run only shard I of N (I/N)")
    how.add_argument("--etcd", type=_argtype(_service_how("etcd"), "--etcd"),
                     help="auto|embedded|container|HOST:PORT")
    how.add_argument("--valkey", type=_argtype(_service_how("valkey"), "--valkey"),
                     help="auto|embedded|container|HOST:PORT")
    how.add_argument("--warm", action="store_true", default=None,
                     help="fork children from a server that imported the client (cold "
                          "controls and a warm-vs-cold fidelity test in every report)")
    _service_options(how, services)
    stress = run.add_argument_group("stressors")
    stress.add_argument("--pin", metavar="CPUS", help="pin children to these CPUs (0 or 0-1)")
    stress.add_argument("--exit-delay", type=_argtype(_exit_delay, "--exit-delay"), metavar="S",
                        help="random delay of 0..S s (or 200ms) after the work, before exit")
    evidence = run.add_argument_group("evidence")
    evidence.add_argument("--cores", choices=("auto", "off"), help="core dumps and gdb backtraces")
    evidence.add_argument("--keep-cores", action="store_true", default=None,
                          help="keep exemplar core files in artifacts/")
    evidence.add_argument("--keep-artifacts", type=_non_negative_int, metavar="N",
                          help="full output kept for the first N runs per signature (3)")
    evidence.add_argument("--cores-per-signature", type=_non_negative_int, metavar="N",
                          help="cores analysed with gdb per signature group (3)")
    evidence.add_argument("--no-faulthandler", action="store_true", default=None)
    out = run.add_argument_group("output")
    out.add_argument("--out", type=Path, help="campaign folder (default: reports/<time>/)")
    out.add_argument("--resume", action="store_true", help="continue the campaign in --out")


def _no_options(parser: argparse.ArgumentParser, services: Mapping[str, ServiceKind]) -> None:
    """`list` and `doctor` take none."""


def _classify_options(parser: argparse.ArgumentParser,
                      services: Mapping[str, ServiceKind]) -> None:
    parser.add_argument("file", type=Path)


def _report_options(report: argparse.ArgumentParser,
                    services: Mapping[str, ServiceKind]) -> None:
    report.add_argument("dir", type=Path)
    report.add_argument("--format", default="terminal",
                        choices=("terminal", "json", "markdown", "junit", "html"))
    report.add_argument("--output", "-o", type=Path, help="write to a file instead of stdout")


def _compare_options(compare: argparse.ArgumentParser,
                     services: Mapping[str, ServiceKind]) -> None:
    compare.add_argument("dir", type=Path)


def _evidence_options(evidence: argparse.ArgumentParser,
                      services: Mapping[str, ServiceKind]) -> None:
    evidence.add_argument("dir", type=Path)
    evidence.add_argument("--out", type=Path, required=True)
    evidence.add_argument("--scenario", help="the cell's scenario (default: see --strategy)")
    evidence.add_argument("--strategy", help="the cell's strategy (default: the newest"
                          " release that still fails)")


def _merge_options(merge: argparse.ArgumentParser, services: Mapping[str, ServiceKind]) -> None:
    merge.add_argument("dirs", type=Path, nargs="+")
    merge.add_argument("--out", type=Path, required=True)


def _sweep_options(sweep: argparse.ArgumentParser, services: Mapping[str, ServiceKind]) -> None:
    sweep.add_argument("package")
    _release_options(sweep, services)
    sweep.add_argument("--versions", metavar="SPEC",
                       help="versions (0.3.0,0.4.1: works offline) or a specifier ('>=0.3')")
    sweep.add_argument("--runs", type=_positive_int, help="runs per release (cap if adaptive)")
    sweep.add_argument("--until-halfwidth", type=_argtype(_halfwidth, "--until-halfwidth"),
                       metavar="W", help="stop a release once its interval half-width is below W")
    sweep.add_argument("--pre", action="store_true", help="include pre-releases")
    sweep.add_argument("--yanked", action="store_true", help="include yanked releases")


def _bisect_options(bisect: argparse.ArgumentParser,
                    services: Mapping[str, ServiceKind]) -> None:
    bisect.add_argument("package")
    _release_options(bisect, services)
    bisect.add_argument("--bad", required=True, metavar="VERSION", help="a release that fails")
    bisect.add_argument("--good", required=True, metavar="VERSION",
                        help="a release that does not (older: a regression; newer: a fix)")
    bisect.add_argument("--batch", type=_positive_int, help="runs per probe (10)")
    bisect.add_argument("--max-runs", type=_positive_int, metavar="N",
                        help="stop at N runs in all and say how sure (3000)")
    bisect.add_argument("--pre", action="store_true", help="include pre-releases in between")


#: Each subcommand: its one-line summary, and what defines its options (in --help's order).
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser,
                                             Mapping[str, ServiceKind]], None]]] = {
    "run": ("run a campaign", _run_options),
    "list": ("scenarios and strategies", _no_options),
    "classify": ("classify one saved run (JSON)", _classify_options),
    "report": ("render a campaign's report", _report_options),
    "compare": ("strategies side by side, with p-values", _compare_options),
    "evidence": ("an upstream-ready evidence bundle", _evidence_options),
    "merge": ("combine shard folders", _merge_options),
    "doctor": ("what this machine offers, and what degrades", _no_options),
    "sweep": ("one scenario across a package's releases", _sweep_options),
    "bisect": ("the release where the failure rate changes", _bisect_options),
}


def _release_options(parser: argparse.ArgumentParser,
                     services: Mapping[str, ServiceKind]) -> None:
    """What sweep and bisect share with run: scenario, load, services, interpreter, output."""
    parser.add_argument("--scenario", required=True, help="a scenario name or .py path")
    parser.add_argument("--python", metavar="PATH|VERSION",
                        help="the interpreter of the releases' virtualenvs (through uv)")
    parser.add_argument("--jobs", type=_argtype(parse_jobs, "--jobs"),
                        help="children at once: N, or 2x the CPUs (default: CPU count)")
    parser.add_argument("--timeout", type=_positive_float, help="seconds per run")
    parser.add_argument("--seed", type=int, help="seed for the scenarios' randomness")
    parser.add_argument("--etcd", type=_argtype(_service_how("etcd"), "--etcd"),
                        help="auto|embedded|container|HOST:PORT")
    parser.add_argument("--valkey", type=_argtype(_service_how("valkey"), "--valkey"),
                        help="auto|embedded|container|HOST:PORT")
    _service_options(parser, services)
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<time>/)")


# -- run ------------------------------------------------------------------------------------
def _newest_campaign(root: Path) -> Path:
    folders = sorted(p.parent for p in root.glob("*/campaign.json"))
    if not folders:
        raise UsageError(f"--resume: no campaign under {root}/; name it with --out")
    return folders[-1]


def _plan_from_args(
    args: argparse.Namespace, config: dict[str, Any]
) -> tuple[Plan, frozenset[str]]:
    """The plan: options given, else the preset's, else :class:`Plan`'s defaults; and the plan
    settings given on the command line (``--resume`` checks them)."""
    declared = {
        key.removeprefix("service:"): value
        for key, value in vars(args).items()
        if key.startswith("service:") and value is not None
    }
    args.services = declared or None
    given = {key for key in _PLAN_KEYS if getattr(args, key, None) is not None}
    preset: dict[str, Any] = {}
    if args.preset:
        presets = config.get("presets", {})
        if args.preset not in presets:
            raise UsageError(f"unknown --preset {args.preset!r} (known: {', '.join(presets)})")
        preset = _checked_preset(args.preset, presets[args.preset])

    def pick(key: str, default: Any = None) -> Any:
        value = getattr(args, key, None)
        if value is not None:
            return value
        return preset.get(key, default)

    if args.command is not None and args.scenario:
        raise UsageError("--command and --scenario exclude each other")
    if args.command is not None and args.strategy:
        raise UsageError("--command runs as it is: --strategy does not apply")
    if args.command is not None and pick("warm"):
        raise UsageError("--warm forks scenario children: it does not apply to --command")
    if args.command is not None:
        _command_argv(args.command)
    scenarios = _csv(args.scenario) or _csv(_listed(preset.get("scenarios"))) or _string_list(
        "[tool.shutdown-harness] default-scenarios", config.get("default-scenarios", ["sanity"])
    )
    default_strategy = config.get("default-strategy", "etcd-0.5.1")
    strategies = _csv(args.strategy) or _csv(_listed(preset.get("strategies"))) or _string_list(
        "[tool.shutdown-harness] default-strategies",
        config.get("default-strategies", [default_strategy]),
    )
    pin = pick("pin")
    chosen = {
        "runs": pick("runs"),
        "jobs": pick("jobs"),
        "timeout": pick("timeout"),
        "seed": pick("seed"),
        "shard": parse_shard(pick("shard")),
        "until_halfwidth": pick("until_halfwidth"),
        "etcd": pick("etcd"),
        "valkey": pick("valkey"),
        "services": pick("services"),
        "pin": pin,
        "exit_delay": pick("exit_delay"),
        "cores": pick("cores"),
        "keep_cores": pick("keep_cores"),
        "keep_artifacts": pick("keep_artifacts"),
        "cores_per_signature": pick("cores_per_signature"),
        "faulthandler": False if pick("no_faulthandler") else None,
        "python": _interpreter(pick("python")),
        "warm": True if pick("warm") else None,
    }
    if pin:
        chosen["pin_cpus"] = pin_cpus(pin)
    plan = Plan(
        command=args.command,
        scenarios=None if args.command is not None else tuple(scenarios),
        strategies=None if args.command is not None else tuple(strategies),
        **{key: value for key, value in chosen.items() if value is not None},
    )
    if chosen["seed"] is None:
        plan = plan.replace(seed=plan.derived_seed())  # shards of one campaign agree
    rename = {"scenario": "scenarios", "strategy": "strategies", "no_faulthandler": "faulthandler"}
    return plan, frozenset(rename.get(k, k) for k in given)


def _cmd_run(args: argparse.Namespace, config: dict[str, Any], argv: Sequence[str]) -> int:
    from shutdown_harness.workflow import Options, run

    plan, given = _plan_from_args(args, config)
    from shutdown_harness.gates import parse_gates

    parse_gates(config.get("gates"))  # a bad gate is said now, not after the campaign
    if args.out is not None:
        out = args.out
    elif args.resume:
        out = _newest_campaign(Path("reports"))
    else:
        out = Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    options = Options(
        out=out,
        resume=args.resume,
        config=config,
        argv=("shutdown-harness", *argv),
        given=given,
    )
    # This process's modules live to its end: frozen, the cyclic collector no longer walks
    # them at each full collection during the runs; it is on again from here (off while they
    # loaded: shutdown_harness/__main__.py). Frozen again at the end, the last collection at
    # exit walks nothing either (exit: 24 -> 6 ms). Here, not in workflow.run, which the pytest
    # plugin calls inside a test session that goes on.
    gc.freeze()
    gc.enable()
    code = run(plan, options).code
    gc.freeze()
    return code


# -- the other subcommands -------------------------------------------------------------------
def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]],
           width: int | None) -> str:
    """A plain table, one row a line; on a terminal (``width``) the last column wraps under
    itself. Plain text, not rich: rich's import and table layout were 2/3 of `list`'s time."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    indent = 2 + sum(w + 2 for w in widths)
    lines = [title]
    for row in (header, *rows):
        lead = "  " + "".join(cell.ljust(w + 2) for cell, w in zip(row, widths, strict=False))
        last = [row[-1]]
        if width is not None and width - indent >= 20:
            # Imported here: textwrap is 4 M instructions (callgrind) of every command's start,
            # for `list` on a terminal only.
            import textwrap

            last = textwrap.wrap(row[-1], width - indent) or [""]
        lines.append((lead + last[0]).rstrip())
        lines.extend(" " * indent + more for more in last[1:])
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness import discovery, strategies
    from shutdown_harness.service_kinds import kinds

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    known = kinds(config)
    scenarios = [
        (info.name, ",".join(info.services) or "-", str(info.runs), f"{info.timeout:g}s",
         info.summary)
        for info in discovery.builtin(services=known)
    ]
    named = [
        (strategy.name, " + ".join(strategy.requirements), strategy.mode, strategy.description)
        for strategy in strategies.resolve(list(config.get("strategies", {})), config)
    ]
    services = [
        (name, kind.env_var, " ".join(kind.modes()) + " HOST:PORT",
         f"{'built in' if name in BUILTIN else 'declared'}: {kind.describe()}")
        for name, kind in known.items()
    ]
    print(_table("scenarios", ("name", "services", "runs", "timeout", "what it reproduces"),
                 scenarios, width))
    print()
    print(_table("strategies", ("name", "packages", "cleanup mode", "what it shows"), named,
                 width))
    print()
    print(_table("services", ("name", "exports", "modes", "what it is"), services, width))
    print()
    print("Inline strategies work too: 'etcd-client-py==0.5.1@atexit', "
          "'etcd-client-py==0.5.1+valkey-glide==2.6.0@explicit'.")
    return EXIT_OK


def _cmd_classify(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness.classify import classify_file

    print(json.dumps(classify_file(args.file), indent=2))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness import reports

    return reports.report_command(args.dir, args.format, args.output, config=config)


def _cmd_compare(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness import reports

    return reports.compare_command(args.dir, config=config)


def _cmd_evidence(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness.evidence import build_bundle

    bundle = build_bundle(args.dir, args.out, gates=config.get("gates"),
                          scenario=args.scenario, strategy=args.strategy)
    issue = len((bundle.path / "ISSUE.md").read_text(encoding="utf-8"))
    cell = bundle.choice.cell
    print(f"evidence bundle: {bundle.path} ({bundle.size():,} bytes; ISSUE.md {issue:,}"
          f" characters), {bundle.tarball} ({bundle.tarball.stat().st_size:,} bytes)\n"
          f"cell: {cell.scenario} x {cell.strategy}: {bundle.choice.reason}")
    return EXIT_OK


def _cmd_merge(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness.merge import merge

    merge(args.dirs, args.out)
    print(f"merged {len(args.dirs)} folders into {args.out}")
    return EXIT_OK


def _interpreter(python: str | None) -> str | None:
    """``--python PATH|VERSION`` -> that interpreter's path; exit 2 when there is none."""
    if python is None:
        return None
    from shutdown_harness.virtualenv import find_python

    return find_python(python)


def _release_settings(args: argparse.Namespace) -> dict[str, Any]:
    declared = {key.removeprefix("service:"): value for key, value in vars(args).items()
                if key.startswith("service:") and value is not None}
    return {"jobs": args.jobs, "timeout": args.timeout, "etcd": args.etcd,
            "valkey": args.valkey, "services": declared or None,
            "seed": args.seed}


def _default_out(args: argparse.Namespace) -> Path:
    return args.out or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _cmd_sweep(args: argparse.Namespace, config: dict[str, Any], argv: Sequence[str]) -> int:
    from shutdown_harness.sweep import sweep_command

    return sweep_command(args.package, args.scenario, spec=args.versions, runs=args.runs,
                         until_halfwidth=args.until_halfwidth, out=_default_out(args),
                         pre=args.pre, yanked=args.yanked, python=args.python,
                         settings=_release_settings(args), config=config,
                         argv=["shutdown-harness", *argv])


def _cmd_bisect(args: argparse.Namespace, config: dict[str, Any], argv: Sequence[str]) -> int:
    from shutdown_harness import bisection

    return bisection.bisect_command(
        args.package, args.scenario, bad=args.bad, good=args.good, out=_default_out(args),
        batch=args.batch or bisection.DEFAULT_BATCH, cap=args.max_runs or bisection.DEFAULT_CAP,
        pre=args.pre, python=args.python, settings=_release_settings(args), config=config,
        argv=["shutdown-harness", *argv])


def _cmd_doctor(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from shutdown_harness import doctor

    return doctor.main(config)


def _config_option(argv: list[str]) -> Path | None:
    """`--config FILE` when given (before the parser exists: it adds declared services)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", type=Path)
    return early.parse_known_args(argv)[0].config


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that services and stores are cleaned up in finally blocks


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        from shutdown_harness.service_kinds import kinds

        # The configuration first: its declared services are options of `run`.
        config = config_module.load(_config_option(argv))
        command = argv[0] if argv and argv[0] in _SUBCOMMANDS else None
        args = build_parser(kinds(config), only=command).parse_args(argv)
        if args.command_name == "run":
            return _cmd_run(args, config, argv)
        gc.enable()  # off while the modules loaded (shutdown_harness/__main__.py)
        if args.command_name == "sweep":
            return _cmd_sweep(args, config, argv)
        if args.command_name == "bisect":
            return _cmd_bisect(args, config, argv)
        handler = {
            "list": _cmd_list,
            "classify": _cmd_classify,
            "report": _cmd_report,
            "compare": _cmd_compare,
            "evidence": _cmd_evidence,
            "merge": _cmd_merge,
            "doctor": _cmd_doctor,
        }[args.command_name]
        return handler(args, config)
    except UsageError as e:
        sys.stderr.write(f"shutdown-harness: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("shutdown-harness: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader left (`shutdown-harness list | head`): end quietly, as `cat` does; point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({e.filename})" if e.filename else ""
        sys.stderr.write(f"shutdown-harness: error: no space left on the device{where}: what is"
                         " written stays readable (report, merge, --resume)\n")
        return EXIT_USAGE
