"""HTML report: one self-contained file (no scripts, no network) with an inline SVG chart of
failure rates and their 95% intervals per scenario and strategy, bars split by signature, the
verdicts, the signature breakdown and exemplar stderr / native backtraces."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from html import escape
from typing import Any

from shutdown_harness import stats
from shutdown_harness.aggregate import Aggregate, Cell
from shutdown_harness.reports._common import (
    ReportData,
    cell_label,
    command_line,
    crashing_thread,
    env_rows,
    gate_status,
    read_artifact,
    title,
    varying_pythons,
    verdicts,
)

__all__ = ["render", "chart_svg", "sweep_chart_svg", "PALETTE"]

#: Signature colors, in order of overall frequency (Okabe-Ito, then a few more).
PALETTE = ("#D55E00", "#0072B2", "#CC79A7", "#E69F00", "#009E73", "#56B4E9", "#8C564B",
           "#7F7F7F", "#BCBD22", "#17BECF")
_OTHER = "#B0B0B0"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  margin:24px auto;max-width:1180px;padding:0 16px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;
  border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin:0 0 12px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums;
  white-space:nowrap} td code{word-break:break-all}
.fail{color:#b3261e;font-weight:600} .pass{color:#1a7f37}
ul.verdicts li{margin:3px 0} .lower{color:#1a7f37} .higher{color:#b3261e}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow:auto;font-size:12px;
  max-height:420px;white-space:pre}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
code{background:#f6f8fa;padding:0 3px;border-radius:3px}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
"""


def _nice_max(x: float) -> tuple[float, float]:
    """An axis maximum >= x and a tick step: 0.23 -> (0.25, 0.05)."""
    x = max(x, 0.001)
    magnitude = 10 ** math.floor(math.log10(x))
    for step_factor in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0):
        step = step_factor * magnitude
        top = math.ceil(x / step - 1e-9) * step
        if top / step <= 6:
            return min(top, 1.0), step
    return 1.0, 0.2


def _colors(agg: Aggregate) -> dict[str, str]:
    ranked = [s.signature for s, _ in agg.signatures()]
    return {sig: PALETTE[i] if i < len(PALETTE) else _OTHER for i, sig in enumerate(ranked)}


def chart_svg(agg: Aggregate) -> str:
    """Horizontal bars: one row per cell, grouped by scenario; bar = failure rate split by
    signature, whisker = 95% Wilson interval; zero failures show the upper bound only."""
    cells = agg.cells
    if not cells:
        return "<p>No runs.</p>"
    colors = _colors(agg)
    label_w, plot_w, text_w = 300, 520, 250
    row_h, group_h, top, bottom = 30, 26, 14, 56
    scenarios = agg.scenarios
    height = top + len(scenarios) * group_h + len(cells) * row_h + bottom
    width = label_w + plot_w + text_w
    xmax, step = _nice_max(max((c.interval()[1] for c in agg.measured), default=0.0))

    def x(v: float) -> float:
        return label_w + plot_w * min(v, xmax) / xmax

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="failure rates">',
             f'<rect width="{width}" height="{height}" fill="#fff"/>']
    plot_top, plot_bottom = top, height - bottom
    ticks = [i * step for i in range(int(round(xmax / step)) + 1)]
    for t in ticks:
        parts.append(f'<line x1="{x(t):.1f}" y1="{plot_top}" x2="{x(t):.1f}" '
                     f'y2="{plot_bottom}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{x(t):.1f}" y="{plot_bottom + 16}" font-size="11" '
                     f'text-anchor="middle" fill="#57606a">{t * 100:.4g}%</text>')
    parts.append(f'<text x="{label_w + plot_w / 2}" y="{plot_bottom + 36}" font-size="12" '
                 'text-anchor="middle" fill="#1f2328">failure rate (crash + error + hang), '
                 'bars split by signature, whiskers: 95% Wilson interval</text>')
    y = top
    for scenario in scenarios:
        parts.append(f'<text x="6" y="{y + 18}" font-size="13" font-weight="700">'
                     f'{escape(scenario)}</text>')
        y += group_h
        for cell in (c for c in cells if c.scenario == scenario):
            parts.append(_bar(agg, cell, y, row_h, x, label_w, plot_w, colors))
            y += row_h
    parts.append(f'<line x1="{label_w}" y1="{plot_top}" x2="{label_w}" y2="{plot_bottom}" '
                 'stroke="#57606a"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _bar(agg: Aggregate, cell: Cell, y: float, row_h: float, x: Callable[[float], float],
         label_w: float, plot_w: float, colors: dict[str, str]) -> str:
    label = cell_label(cell, agg)
    short = label if len(label) <= 40 else label[:38] + "…"
    mid = y + row_h / 2
    out = [f'<g><title>{escape(label)}: {cell.failures}/{cell.runs} '
           f'({escape(cell.rate_text())})</title>',
           f'<text x="{label_w - 8}" y="{mid + 4}" font-size="12" text-anchor="end">'
           f'{escape(short)}</text>']
    bar_h = row_h * 0.56
    left = x(0)
    if cell.runs and cell.not_runnable is None:
        for sig in cell.top_signatures():
            w = x(sig.count / cell.runs) - x(0)
            out.append(f'<rect x="{left:.2f}" y="{mid - bar_h / 2:.2f}" width="{w:.2f}" '
                       f'height="{bar_h:.2f}" fill="{colors.get(sig.signature, _OTHER)}">'
                       f'<title>{escape(sig.signature)}: {sig.count}/{cell.runs}</title></rect>')
            left += w
        lo, hi = cell.interval()
        x_lo, x_hi = x(lo), x(hi)
        cap = bar_h * 0.45
        out.append(f'<line x1="{x_lo:.2f}" y1="{mid}" x2="{x_hi:.2f}" y2="{mid}" '
                   'stroke="#111" stroke-width="1.5"/>')
        for xx in ((x_lo, x_hi) if cell.failures else (x_hi,)):
            out.append(f'<line x1="{xx:.2f}" y1="{mid - cap:.2f}" x2="{xx:.2f}" '
                       f'y2="{mid + cap:.2f}" stroke="#111" stroke-width="1.5"/>')
        if cell.failures:
            out.append(f'<circle cx="{x(cell.rate):.2f}" cy="{mid}" r="2.6" fill="#111"/>')
    color = "#9a6700" if cell.not_runnable else ("#b3261e" if cell.failures else "#1a7f37")
    out.append(f'<text x="{label_w + plot_w + 10}" y="{mid + 4}" font-size="12" '
               f'fill="{color}">{escape(cell.rate_text())}  '
               f'<tspan fill="#57606a">{cell.failures}/{cell.runs}</tspan></text>')
    out.append("</g>")
    return "".join(out)


def sweep_chart_svg(sweep: dict[str, Any], colors: dict[str, str]) -> str:
    """``sweep`` (sweep.json): the failure rate against the release, in version order. Bars
    stacked by signature (each signature's share of the runs), whiskers: 95% Wilson interval
    (zero failures: the upper bound only); releases without a rate are named, not drawn;
    change points are dashed lines marked "fixed in" / "broken in"."""
    versions = sweep.get("versions") or []
    if not versions:
        return "<p>No releases.</p>"
    left, right, top, bottom = 64, 24, 34, 96
    slot = max(34, min(90, 900 // len(versions)))
    plot_w, plot_h = slot * len(versions), 260
    width, height = max(left + plot_w + right, 560), top + plot_h + bottom
    highs = [v["interval"][1] for v in versions if v.get("interval")]
    ymax, step = _nice_max(max(highs, default=0.0))

    def y(v: float) -> float:
        return top + plot_h * (1 - min(v, ymax) / ymax)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="failure rate by release">',
             f'<rect width="{width}" height="{height}" fill="#fff"/>']
    for i in range(int(round(ymax / step)) + 1):
        t = i * step
        parts.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + plot_w}" y2="{y(t):.1f}" '
                     'stroke="#e5e7eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#57606a">{t * 100:.4g}%</text>')
    index = {v["version"]: i for i, v in enumerate(versions)}
    for i, v in enumerate(versions):
        cx = left + slot * (i + 0.5)
        bar_w = slot * 0.56
        label = escape(str(v["version"]))
        parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 16}" font-size="12" '
                     f'text-anchor="middle">{label}</text>')
        runs = v.get("runs") or 0
        if v.get("status") != "measured" or not runs:
            why = escape(str(v.get("status")))
            parts.append(f'<text x="{cx:.1f}" y="{top + plot_h - 8}" font-size="10" '
                         f'fill="#9a6700" text-anchor="start" transform="rotate(-90 {cx:.1f} '
                         f'{top + plot_h - 8})"><title>{escape(str(v.get("reason") or ""))}'
                         f'</title>{why}</text>')
            continue
        base = top + plot_h
        for sig, count in sorted(v["signatures"].items(), key=lambda kv: (-kv[1], kv[0])):
            h = plot_h * min(count / runs, ymax) / ymax
            parts.append(f'<rect x="{cx - bar_w / 2:.2f}" y="{base - h:.2f}" width="{bar_w:.2f}"'
                         f' height="{h:.2f}" fill="{colors.get(sig, _OTHER)}"><title>'
                         f'{label}: {escape(sig)} {count}/{runs}</title></rect>')
            base -= h
        lo, hi = v["interval"]
        cap = bar_w * 0.3
        parts.append(f'<line x1="{cx:.2f}" y1="{y(lo):.2f}" x2="{cx:.2f}" y2="{y(hi):.2f}" '
                     'stroke="#111" stroke-width="1.5"/>')
        for yy in ((y(lo), y(hi)) if v["failures"] else (y(hi),)):
            parts.append(f'<line x1="{cx - cap:.2f}" y1="{yy:.2f}" x2="{cx + cap:.2f}" '
                         f'y2="{yy:.2f}" stroke="#111" stroke-width="1.5"/>')
        if v["failures"]:
            parts.append(f'<circle cx="{cx:.2f}" cy="{y(v["rate"]):.2f}" r="2.6" fill="#111">'
                         f'<title>{label}: {v["failures"]}/{runs}</title></circle>')
        parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 30}" font-size="10" '
                     f'text-anchor="middle" fill="#57606a">{v["failures"]}/{runs}</text>')
    for point in sweep.get("change_points") or []:
        at = index.get(point["version"])
        if at is None:
            continue
        xx = left + slot * at
        color = "#1a7f37" if point["kind"] == "fixed in" else "#b3261e"
        parts.append(f'<line x1="{xx:.1f}" y1="{top - 4}" x2="{xx:.1f}" y2="{top + plot_h}" '
                     f'stroke="{color}" stroke-width="1.5" stroke-dasharray="5 4"/>')
        parts.append(f'<text x="{xx + 4:.1f}" y="{top - 8}" font-size="12" fill="{color}" '
                     f'font-weight="600">{escape(point["kind"])} {escape(point["version"])}'
                     f'<title>{escape(point["sentence"])}</title></text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                 f'y2="{top + plot_h}" stroke="#57606a"/>')
    parts.append(f'<text x="{left}" y="{top + plot_h + 54}" font-size="12">failure rate of '
                 f'{escape(str(sweep.get("package")))} by release '
                 f'({escape(str(sweep.get("scenario")))})</text>')
    parts.append(f'<text x="{left}" y="{top + plot_h + 70}" font-size="12" fill="#57606a">'
                 'bars split by signature · whiskers: 95% Wilson interval (zero failures: the '
                 'upper bound)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _sweep_section(agg: Aggregate) -> list[str]:
    """The release chart when the campaign is a sweep (sweep.json next to the results)."""
    if agg.directory is None or not (agg.directory / "sweep.json").is_file():
        return []

    try:
        sweep = json.loads((agg.directory / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    points = "".join(f"<li>{escape(p['sentence'])}</li>" for p in sweep.get("change_points", []))
    return ["<h2>Failure rate by release</h2>", sweep_chart_svg(sweep, _colors(agg)),
            _legend(agg), f"<ul>{points}</ul>" if points else
            "<p>No significant change between adjacent measured releases.</p>"]


def _legend(agg: Aggregate) -> str:
    colors = _colors(agg)
    if not colors:
        return ""
    items = "".join(
        f'<span style="display:inline-block;margin:2px 14px 2px 0">'
        f'<span style="display:inline-block;width:12px;height:12px;background:{c};'
        f'vertical-align:-1px;margin-right:5px"></span><code>{escape(s)}</code></span>'
        for s, c in colors.items()
    )
    return f"<div>{items}</div>"


def _cells_table(data: ReportData) -> str:
    agg = data.agg
    head = ["Scenario", "Strategy", "Runs", "Failures", "Failure rate [95% CI]", "Categories"]
    pythons = varying_pythons(agg)
    if pythons:
        head.append("Python")
    if data.gates:
        head.append("Gates")
    rows = []
    for cell in agg.cells:
        cats = ", ".join(f"{k} {v}" for k, v in cell.categories.items())
        tds = [escape(cell.scenario), f"<code>{escape(cell_label(cell, agg))}</code>",
               f'<td class="num">{cell.runs}', f'<td class="num">{cell.failures}',
               f'<td class="num {"fail" if cell.failures else "pass"}">'
               f"{escape(cell.rate_text())}", escape(cats)]
        if pythons:
            tds.append(escape(", ".join(sorted(cell.pythons))))
        if data.gates:
            status = gate_status(data, cell)
            klass = "fail" if status.startswith("FAIL") else "pass"
            tds.append(f'<td class="{klass}">{escape(status)}')
        rows.append("<tr>" + "".join(t if t.startswith("<td") else f"<td>{t}" for t in tds)
                    + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _signatures(agg: Aggregate) -> str:
    colors = _colors(agg)
    rows = []
    exemplars = []
    for i, (sig, cells) in enumerate(agg.signatures()):
        where = "<br>".join(
            f"{escape(c.scenario)} / <code>{escape(cell_label(c, agg))}</code>: "
            f"{c.signatures[sig.signature].count}/{c.runs} "
            f"({escape(stats.format_rate(c.signatures[sig.signature].count, c.runs))})"
            for c in cells
        )
        swatch = (f'<span style="display:inline-block;width:10px;height:10px;'
                  f'background:{colors.get(sig.signature, _OTHER)};margin-right:6px"></span>')
        rows.append(f"<tr><td>{swatch}<code>{escape(sig.signature)}</code></td>"
                    f"<td>{escape(sig.category)}</td><td>{escape(sig.phase)}</td>"
                    f'<td class="num">{sig.count}</td><td>{where}</td></tr>')
        ex = sig.exemplar or {}
        stderr = read_artifact(agg, ex, "stderr.txt") or ex.get("stderr_tail") or ""
        backtrace = read_artifact(agg, ex, "backtrace.txt", max_lines=400)
        body = [f"<p>run <code>{escape(str(ex.get('run_id')))}</code>, outcome "
                f"<code>{escape(str(ex.get('outcome')))}</code>, phase "
                f"<code>{escape(str(ex.get('phase')))}</code></p>"]
        if ex.get("frames"):
            frames = ex["frames"]
            frames_text = " | ".join(frames) if isinstance(frames, list) else str(frames)
            body.append(f"<p>top frames: <code>{escape(frames_text)}</code></p>")
        body.append(f"<p>stderr</p><pre>{escape(stderr) or '(empty)'}</pre>")
        if backtrace:
            thread = crashing_thread(backtrace)
            if thread:
                body.append("<p>native backtrace of the thread that received the signal</p>"
                            f"<pre>{escape(thread)}</pre>")
            body.append(f"<details><summary>all threads (gdb)</summary><pre>{escape(backtrace)}"
                        "</pre></details>")
        exemplars.append(f"<details{' open' if i == 0 else ''}><summary><code>"
                         f"{escape(sig.signature)}</code> ({sig.count} runs)</summary>"
                         + "".join(body) + "</details>")
    if not rows:
        return "<p>No failures.</p>"
    return ("<table><tr><th>Signature</th><th>Category</th><th>Phase</th><th>Count</th>"
            "<th>Where (count/runs, rate)</th></tr>" + "".join(rows) + "</table>"
            "<h2>Exemplars</h2>" + "".join(exemplars))


def render(data: ReportData) -> str:
    agg = data.agg
    created = agg.campaign.get("created_at") or ""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{escape(title(agg))}</title><style>{_CSS}</style></head><body>",
           f"<h1>{escape(title(agg))}</h1>",
           f'<p class="meta">{agg.runs} runs, {agg.failures} failures, {agg.infra} infra'
           f"{' · ' + escape(str(created)) if created else ''} · 95% Wilson intervals · "
           "Fisher's exact test (two-sided)</p>"]
    lines = verdicts(agg)
    if lines:
        out.append('<h2>Verdict</h2><ul class="verdicts">')
        for cc, sentence in lines:
            out.append(f'<li class="{cc.comparison.direction}">{escape(sentence)}</li>')
        out.append("</ul>")
    out += _sweep_section(agg)
    out += ["<h2>Failure rates</h2>", chart_svg(agg), _legend(agg), _cells_table(data)]
    if data.gates or data.unmatched_gates:
        failed = [g for g in data.gates if not g.passed]
        out.append(f"<h2>Gates: <span class=\"{'fail' if failed else 'pass'}\">"
                   f"{'failed' if failed else 'passed'}</span></h2><table>"
                   "<tr><th>Cell</th><th>Check</th><th>Result</th></tr>")
        for g in data.gates:
            out.append(f"<tr><td>{escape(g.cell.scenario)} / <code>"
                       f"{escape(cell_label(g.cell, agg))}</code></td><td>{g.threshold}</td>"
                       f"<td class=\"{'pass' if g.passed else 'fail'}\">"
                       f"{escape(g.message)}</td></tr>")
        out.append("</table>")
        for gate in data.unmatched_gates:
            out.append(f"<p>gate {escape(gate.name)} matches no cell of this campaign</p>")
    if agg.fidelity:
        out.append("<h2>Fidelity of warm start</h2><ul>")
        for f in agg.fidelity:
            css = ' class="fail"' if f.differs else ""
            out.append(f"<li{css}>{'<strong>' if f.differs else ''}{escape(f.sentence())}"
                       f"{'</strong>' if f.differs else ''}</li>")
        out.append("</ul>")
    out += ["<h2>Signatures</h2>", _signatures(agg)]
    if agg.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in agg.notes)
                   + "</ul>")
    command = command_line(agg)
    rows = env_rows(agg)
    out.append("<h2>Environment</h2>")
    if command:
        out.append(f"<pre>{escape(command)}</pre>")
    out.append("<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                   for k, v in rows) + "</table>")
    out.append("</body></html>\n")
    return "\n".join(out)
