"""What every report format shares: the aggregate with its gate results, verdict sentences,
the environment as rows, exemplar artifacts read from the campaign folder."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shutdown_harness.aggregate import Aggregate, Cell, CellComparison
from shutdown_harness.gates import Gate, GateResult

__all__ = ["ReportData", "verdicts", "env_rows", "cell_label", "read_artifact", "title",
           "gate_status", "top_signatures_text", "command_line", "artifact_dir", "crashing_thread",
           "ENV_ORDER", "varying_pythons"]

#: Environment keys shown first, in this order (the rest follow alphabetically).
ENV_ORDER = ("os", "kernel", "machine", "libc", "glibc", "python", "python_build",
             "python_implementation", "cpus", "cpus_usable", "core_pattern", "packages", "harness")


@dataclass
class ReportData:
    """An aggregate and its gates, ready to render."""

    agg: Aggregate
    gates: list[GateResult] = field(default_factory=list)
    unmatched_gates: list[Gate] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def gates_of(self, cell: Cell) -> list[GateResult]:
        return [g for g in self.gates if g.cell is cell]


def title(agg: Aggregate) -> str:
    scenarios = ", ".join(agg.scenarios) or "no runs"
    return f"shutdown-harness: {scenarios}"


def cell_label(cell: Cell, agg: Aggregate) -> str:
    """The strategy, with the load when the campaign mixes loads."""
    return f"{cell.strategy} ({cell.load_label})" if agg.mixed_load else cell.strategy


def verdicts(agg: Aggregate) -> list[tuple[CellComparison, str]]:
    """(comparison, sentence) for every pair of strategies in the same scenario and load."""
    many_scenarios = len(agg.scenarios) > 1
    out = []
    for cc in agg.comparisons:
        prefix = []
        if many_scenarios:
            prefix.append(cc.scenario)
        if agg.mixed_load:
            prefix.append(cc.load_label)
        lead = f"{' / '.join(prefix)}: " if prefix else ""
        out.append((cc, lead + cc.comparison.sentence()))
    return out


def varying_pythons(agg: Aggregate) -> list[str]:
    """The Python versions the cells ran under, when they are not all the same (else [])."""
    pythons = sorted({p for c in agg.cells for p in c.pythons})
    return pythons if len(pythons) > 1 else []


def gate_status(data: ReportData, cell: Cell) -> str:
    results = data.gates_of(cell)
    if not results:
        return ""
    failed = [g for g in results if not g.passed]
    return f"FAIL ({len(failed)}/{len(results)})" if failed else "pass"


def top_signatures_text(cell: Cell, n: int = 3) -> str:
    return ", ".join(f"{s.signature} ×{s.count}" for s in cell.top_signatures(n))


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        if not value:
            return
        if all(not isinstance(v, dict | list) for v in value.values()) and prefix.endswith(
            "packages"
        ):
            rows.append((prefix, ", ".join(f"{k}=={v}" for k, v in value.items())))
            return
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, list):
        rows.append((prefix, ", ".join(str(v) if not isinstance(v, dict | list)
                                        else json.dumps(v) for v in value)))
    elif value is not None and value != "":
        rows.append((prefix, str(value)))


def env_rows(agg: Aggregate) -> list[tuple[str, str]]:
    """The campaign's environment (and load) as (key, value) rows, well-known keys first."""
    env = agg.campaign.get("environment") or {}
    rows: list[tuple[str, str]] = []
    known = [k for k in ENV_ORDER if k in env]
    for k in known + sorted(k for k in env if k not in known):
        _flatten(k, env[k], rows)
    load = agg.campaign.get("load") or {}
    _flatten("load", load, rows)
    rows.append(("load (per record)", "; ".join(agg.load_labels) or "none"))
    pythons = sorted({p for c in agg.cells for p in c.pythons})
    if pythons and "python" not in env:
        rows.append(("python (per record)", ", ".join(pythons)))
    return rows


def command_line(agg: Aggregate) -> str:
    """The command that reruns the whole campaign (unsharded, fresh folder)."""
    plan = agg.campaign.get("plan") or {}
    if not plan:
        argv = agg.campaign.get("argv") or []
        return shlex.join(["shutdown-harness", *argv]) if argv else ""
    if plan.get("command"):
        args = ["shutdown-harness", "run", "--command", str(plan["command"])]
    else:
        args = ["shutdown-harness", "run"]
        for s in plan.get("scenarios") or agg.scenarios:
            args += ["--scenario", str(s)]
    for s in plan.get("strategies") or agg.strategies:
        args += ["--strategy", str(s)]
    for key, opt in (("runs", "--runs"), ("jobs", "--jobs"), ("timeout", "--timeout"),
                     ("seed", "--seed"), ("until_halfwidth", "--until-halfwidth")):
        if plan.get(key) is not None:
            args += [opt, f"{plan[key]:g}" if isinstance(plan[key], float) else str(plan[key])]
    args += ["--out", "campaign-rerun"]
    return shlex.join(args)


def read_artifact(agg: Aggregate, exemplar: dict[str, Any] | None, name: str,
                  max_lines: int = 80) -> str | None:
    """The text of an exemplar's saved artifact (stderr.txt, backtrace.txt), last lines kept."""
    if not exemplar or not exemplar.get("artifacts") or agg.directory is None:
        return None
    path = agg.directory / str(exemplar["artifacts"]) / name
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = text.splitlines()
    if len(lines) > max_lines:
        if name.startswith("backtrace"):
            lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
        else:
            lines = [f"... ({len(lines) - max_lines} lines before)"] + lines[-max_lines:]
    return "\n".join(lines)


def artifact_dir(agg: Aggregate, exemplar: dict[str, Any] | None) -> Path | None:
    if not exemplar or not exemplar.get("artifacts") or agg.directory is None:
        return None
    path = agg.directory / str(exemplar["artifacts"])
    return path if path.is_dir() else None


def crashing_thread(backtrace: str) -> str | None:
    """The block of gdb's `thread apply all bt` for the thread that received the signal."""
    lines = backtrace.splitlines()
    current = None
    for line in lines:
        if line.startswith("[Current thread is "):
            current = line.split()[3]
            break
    if current is None:
        return None
    out: list[str] = []
    for line in lines:
        if out:
            if not line.strip() or line.startswith("Thread "):
                break
            if not line.startswith("warning:"):
                out.append(line)
        elif line.startswith(f"Thread {current} ("):
            out.append(line)
    return "\n".join(out) or None
