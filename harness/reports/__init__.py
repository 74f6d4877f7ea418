"""Reports: one module per format, all rendered from the same aggregate and gate results.

`render(DIR or Aggregate, fmt)` returns the text of one format; `write_all(DIR)` writes every
format next to the results (the end of every `run` does that); `report_command` and
`compare_command` are the `report` and `compare` subcommands (exit code 1 when a gate fails).

Formats: terminal (a text table, reports/_table.py), json (aggregate + inputs, for tools),
markdown (GitHub issue or $GITHUB_STEP_SUMMARY), junit (one test case per cell, failing when a
gate is exceeded), html (one self-contained file: SVG chart, signatures, exemplar backtraces).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from shutdown_harness import config as _config
from shutdown_harness.aggregate import Aggregate, load_campaign
from shutdown_harness.errors import EXIT_GATE, EXIT_OK, UsageError
from shutdown_harness.gates import evaluate, parse_gates, unmatched
from shutdown_harness.reports._common import ReportData

__all__ = ["FORMATS", "FILENAMES", "render", "write_all", "prepare", "report_command",
           "compare_command", "print_terminal", "ReportData"]

#: format -> module in this package
FORMATS: dict[str, str] = {
    "terminal": "terminal",
    "json": "json_report",
    "markdown": "markdown",
    "junit": "junit",
    "html": "html",
}
#: format -> file name written by write_all
FILENAMES: dict[str, str] = {
    "terminal": "report.txt",
    "json": "report.json",
    "markdown": "report.md",
    "junit": "junit.xml",
    "html": "report.html",
}


def prepare(source: Path | str | Aggregate | ReportData,
            gates: Mapping[str, Any] | None = None) -> ReportData:
    """An aggregate (loaded from a folder when given a path) with its gates evaluated.

    `gates` is the `[tool.shutdown-harness.gates]` table; None reads it from the configuration
    (`harness.config.load()`: ./pyproject.toml over the defaults); {} means no gates.
    """
    if isinstance(source, ReportData):
        return source
    agg = source if isinstance(source, Aggregate) else load_campaign(Path(source))
    parsed = parse_gates(_gates_table(None) if gates is None else gates)
    return ReportData(agg, evaluate(agg, parsed), unmatched(agg, parsed))


def render(source: Path | str | Aggregate | ReportData, fmt: str,
           gates: Mapping[str, Any] | None = None, **options: Any) -> str:
    """The report of a campaign folder (or aggregate) in one format.

    `gates` is the `[tool.shutdown-harness.gates]` table (see harness.gates; None: from the
    configuration). Options go to the format's renderer (terminal: `color`, `width`).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r} (one of: {', '.join(FORMATS)})")
    module = importlib.import_module(f"shutdown_harness.reports.{FORMATS[fmt]}")
    text: str = module.render(prepare(source, gates), **options)
    return text


def write_all(directory: Path | Aggregate | ReportData, out_dir: Path | None = None,
              gates: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write every format (report.txt, .json, .md, junit.xml, .html) to out_dir (default: the
    campaign folder). Give a `prepare()`d ReportData to avoid reading results.jsonl again."""
    data = prepare(directory, gates)
    if out_dir is None:
        if data.agg.directory is None:
            raise ValueError("write_all needs out_dir for an aggregate without a folder")
        out_dir = data.agg.directory
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt, name in FILENAMES.items():
        path = out_dir / name
        path.write_text(render(data, fmt), encoding="utf-8")
        written[fmt] = path
    return written


def _gates_table(config: Mapping[str, Any] | Path | None) -> Mapping[str, Any]:
    """The gates table of a loaded configuration, or of `harness.config.load(path)`."""
    if not isinstance(config, Mapping):
        config = _config.load(config)
    gates = config.get("gates") or {}
    if not isinstance(gates, Mapping):
        raise UsageError("[tool.shutdown-harness.gates] must be a table")
    return gates


def report_command(directory: Path, fmt: str = "terminal", out: Path | None = None,
                   config: Mapping[str, Any] | Path | None = None,
                   stream: IO[str] | None = None) -> int:
    """`report DIR --format FMT [--out FILE]`: print or write one format; 1 if a gate fails.

    `config` is the loaded configuration (or a pyproject path; None: ./pyproject.toml).
    """
    data = prepare(Path(directory), _gates_table(config))
    stream = stream or sys.stdout
    if out is not None:
        Path(out).write_text(render(data, fmt), encoding="utf-8")
    elif fmt == "terminal":
        stream.write(render(data, fmt, color=stream.isatty()))
    else:
        stream.write(render(data, fmt))
    return EXIT_OK if data.passed else EXIT_GATE


def compare_command(directory: Path, config: Mapping[str, Any] | Path | None = None,
                    stream: IO[str] | None = None) -> int:
    """`compare DIR`: strategies side by side per scenario, with intervals, p-values, verdicts."""
    from shutdown_harness.reports import terminal

    data = prepare(Path(directory), _gates_table(config))
    stream = stream or sys.stdout
    stream.write(terminal.render_compare(data, color=stream.isatty()))
    return EXIT_OK if data.passed else EXIT_GATE


def print_terminal(directory: Path | Aggregate | ReportData, stream: IO[str] | None = None,
                   gates: Mapping[str, Any] | None = None) -> bool:
    """Print the terminal report of a campaign folder (end of `run`); True if a gate failed."""
    data = prepare(directory, gates)
    stream = stream or sys.stdout
    stream.write(render(data, "terminal", color=stream.isatty()))
    return not data.passed
