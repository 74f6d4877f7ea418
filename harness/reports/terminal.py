"""Terminal report: a table of scenario x strategy (rates, intervals, top signatures), the
verdict sentences, gates and notes; and the `compare` view. Drawn by reports/_table.py."""

from __future__ import annotations

import shutil

from shutdown_harness.reports._common import (
    ReportData,
    cell_label,
    gate_status,
    title,
    top_signatures_text,
    varying_pythons,
    verdicts,
)
from shutdown_harness.reports._table import Styled, Table, paint

__all__ = ["render", "render_compare", "cells_table"]


def _width(color: bool, width: int | None) -> int:
    """The terminal's width when coloured, else 140 columns."""
    if width is not None:
        return width
    return shutil.get_terminal_size((140, 40)).columns if color else 140


def cells_table(data: ReportData) -> Table:
    agg = data.agg
    table = Table(title(agg))
    table.add_column("Scenario")
    table.add_column("Strategy")
    table.add_column("Runs", justify="right")
    table.add_column("Fail", justify="right")
    table.add_column("Failure rate [95% CI]", justify="right")
    table.add_column("Top signatures")
    pythons = varying_pythons(agg)
    if pythons:
        table.add_column("Python")
    if agg.infra:
        table.add_column("Infra", justify="right")
    if data.gates:
        table.add_column("Gates")
    previous = None
    for cell in agg.cells:
        style = "yellow" if cell.not_runnable else ("red" if cell.failures else "green")
        row: list[str | Styled] = [
            cell.scenario if cell.scenario != previous else "",
            cell_label(cell, agg),
            str(cell.runs),
            str(cell.failures),
            Styled(cell.rate_text(), style),
            top_signatures_text(cell),
        ]
        if pythons:
            row.append(", ".join(sorted(cell.pythons)))
        if agg.infra:
            row.append(str(cell.infra))
        if data.gates:
            status = gate_status(data, cell)
            row.append(Styled(status, "bold red" if status.startswith("FAIL") else "green"))
        table.add_row(*row)
        previous = cell.scenario
    return table


def _fidelity(out: list[str], data: ReportData, color: bool) -> None:
    """``run --warm``: each warm cell against its cold controls; a difference is loud."""
    fidelity = data.agg.fidelity
    if not fidelity:
        return
    out.append("\n" + paint("Fidelity", "bold", color)
               + " (warm start vs cold controls, Fisher's exact test)")
    for f in fidelity:
        if f.differs:
            out.append(" " + paint("✘", "bold red", color) + " "
                       + paint(f.sentence(), "bold red", color))
        else:
            out.append(" · " + f.sentence())


def _tail(out: list[str], data: ReportData, color: bool) -> None:
    _fidelity(out, data, color)
    lines = verdicts(data.agg)
    if lines:
        out.append("\n" + paint("Verdicts", "bold", color))
        for cc, sentence in lines:
            mark = paint("✔", "green", color) if cc.comparison.direction == "lower" else (
                paint("✘", "red", color) if cc.comparison.direction == "higher" else "·")
            out.append(f" {mark} {sentence}")
    failed = [g for g in data.gates if not g.passed]
    if data.gates:
        state = paint("FAILED", "bold red", color) if failed else paint("passed", "green", color)
        out.append(f"\n{paint('Gates', 'bold', color)} {state}: "
                   f"{len(data.gates) - len(failed)}/{len(data.gates)} checks pass")
        for g in failed:
            where = f"{g.cell.scenario} / {cell_label(g.cell, data.agg)}"
            out.append(" " + paint("✘", "red", color) + f" {where}: {g.message}")
    for gate in data.unmatched_gates:
        out.append(paint(f" ! gate {gate.name} matches no cell of this campaign", "yellow",
                         color))
    if data.agg.notes:
        out.append("\n" + paint("Notes", "bold", color))
        for note in data.agg.notes:
            out.append(f" - {note}")


def render(data: ReportData, color: bool = False, width: int | None = None) -> str:
    """The terminal report as text (ANSI colors only when `color`)."""
    out = [cells_table(data).render(_width(color, width), color).rstrip("\n")]
    _tail(out, data, color)
    return "\n".join(out) + "\n"


def render_compare(data: ReportData, color: bool = False, width: int | None = None) -> str:
    """`compare`: per scenario (and load), strategies side by side, then every pair's verdict."""
    agg = data.agg
    width = _width(color, width)
    out: list[str] = []
    groups: dict[tuple[str, str], list] = {}
    for cell in agg.cells:
        groups.setdefault((cell.scenario, cell.load_label), []).append(cell)
    for (scenario, label), cells in groups.items():
        table = Table(f"{scenario} — {label}")
        table.add_column("", style="bold")
        for cell in cells:
            table.add_column(cell.strategy, justify="right")
        table.add_row("runs", *[str(c.runs) for c in cells])
        table.add_row("failures", *[str(c.failures) for c in cells])
        table.add_row("rate [95% CI]", *[Styled(c.rate_text(), "red" if c.failures
                                                else "green") for c in cells])
        signatures = list(dict.fromkeys(s.signature for c in cells for s in c.top_signatures()))
        for sig in signatures:
            table.add_row(sig, *[str(c.signatures[sig].count) if sig in c.signatures else "·"
                                 for c in cells])
        out.append(table.render(width, color).rstrip("\n"))
        for cc in agg.comparisons:
            if cc.scenario == scenario and cc.load_label == label:
                out.append(" • " + cc.comparison.sentence())
        out.append("")
    if not groups:
        out.append("no runs to compare")
    _fidelity(out, data, color)
    for note in agg.notes:
        out.append(f" - {note}")
    return "\n".join(out) + "\n"
