"""Markdown report (GitHub-flavoured): fits an issue comment or $GITHUB_STEP_SUMMARY.

Verdict sentences first, then the scenario x strategy table, signatures, gates, notes, and the
environment folded in a <details> block."""

from __future__ import annotations

from shutdown_harness import stats
from shutdown_harness.reports._common import (
    ReportData,
    cell_label,
    command_line,
    env_rows,
    gate_status,
    title,
    top_signatures_text,
    varying_pythons,
    verdicts,
)

__all__ = ["render", "cells_table", "escape"]


def escape(text: object) -> str:
    """Make text safe inside a table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def cells_table(data: ReportData) -> list[str]:
    agg = data.agg
    head = ["Scenario", "Strategy", "Runs", "Failures", "Failure rate [95% CI]",
            "Top signatures"]
    pythons = varying_pythons(agg)
    if pythons:
        head.append("Python")
    if agg.infra:
        head.append("Infra")
    if data.gates:
        head.append("Gates")
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in ("Runs", "Failures", "Infra") else "---"
                            for h in head) + "|"]
    for cell in agg.cells:
        row = [escape(cell.scenario), f"`{escape(cell_label(cell, agg))}`", str(cell.runs),
               str(cell.failures), cell.rate_text(), escape(top_signatures_text(cell)) or "—"]
        if pythons:
            row.append(escape(", ".join(sorted(cell.pythons))))
        if agg.infra:
            row.append(str(cell.infra))
        if data.gates:
            status = gate_status(data, cell)
            row.append(f"**{status}**" if status.startswith("FAIL") else (status or "—"))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _fidelity(data: ReportData) -> list[str]:
    """``run --warm``: warm runs against cold controls per cell (Fisher's exact test)."""
    fidelity = data.agg.fidelity
    if not fidelity:
        return []
    differ = [f for f in fidelity if f.differs]
    out = [f"### Fidelity of warm start: {'❌ warm and cold differ' if differ else '✅ faithful'}",
           "", "| Cell | Warm (failures/runs) | Cold (failures/runs) | Fisher p |",
           "|---|---:|---:|---:|"]
    for f in fidelity:
        p = "—" if f.p_value is None else stats.format_p(f.p_value).removeprefix("p = ")
        mark = " ❌" if f.differs else ""
        out.append(f"| {escape(f.cell.scenario)} / `{escape(cell_label(f.cell, data.agg))}` | "
                   f"{f.warm[0]}/{f.warm[1]} | {f.cold[0]}/{f.cold[1]} | {p}{mark} |")
    out.append("")
    out += [f"> **{escape(f.sentence())}**" for f in differ]
    return out + ([""] if differ else [])


def render(data: ReportData) -> str:
    agg = data.agg
    out = [f"## {title(agg)}", ""]
    sentences = verdicts(agg)
    if sentences:
        out += ["**Verdict**", ""]
        out += [f"- {s}" for _, s in sentences]
        out.append("")
    out += cells_table(data)
    out += ["", f"{agg.runs} runs ({agg.failures} failures, {agg.infra} infra), "
            "95% Wilson intervals; a zero-failure rate shows its upper bound. "
            "p-values: Fisher's exact test, two-sided, not adjusted for multiple comparisons.",
            ""]
    out += _fidelity(data)
    signatures = agg.signatures()
    if signatures:
        out += ["### Signatures", "",
                "| Signature | Category | Phase | Count | Where (count/runs, rate) |",
                "|---|---|---|---:|---|"]
        for sig, cells in signatures:
            where = "; ".join(
                f"{escape(c.scenario)} / `{escape(cell_label(c, agg))}` "
                f"{c.signatures[sig.signature].count}/{c.runs} "
                f"({stats.format_rate(c.signatures[sig.signature].count, c.runs)})"
                for c in cells
            )
            out.append(f"| `{escape(sig.signature)}` | {sig.category} | {sig.phase} | "
                       f"{sig.count} | {where} |")
        out.append("")
    if data.gates or data.unmatched_gates:
        failed = [g for g in data.gates if not g.passed]
        out += [f"### Gates: {'❌ failed' if failed else '✅ passed'}", ""]
        if data.gates:
            out += ["| Cell | Gate | Result |", "|---|---|---|"]
            for g in data.gates:
                mark = "✅" if g.passed else "❌"
                out.append(f"| {escape(g.cell.scenario)} / `{escape(cell_label(g.cell, agg))}` "
                           f"| {g.threshold} | {mark} {escape(g.message)} |")
        for gate in data.unmatched_gates:
            out.append(f"\n> gate {escape(gate.name)} matches no cell of this campaign")
        out.append("")
    if agg.notes:
        out += ["### Notes", ""] + [f"- {escape(n)}" for n in agg.notes] + [""]
    rows = env_rows(agg)
    command = command_line(agg)
    if rows or command:
        out += ["<details><summary>Environment and command</summary>", ""]
        if command:
            out += ["```sh", command, "```", ""]
        if rows:
            out += ["| | |", "|---|---|"] + [f"| {escape(k)} | {escape(v)} |" for k, v in rows]
        out += ["", "</details>", ""]
    return "\n".join(out)
