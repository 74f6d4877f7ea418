"""JUnit XML report: one test case per (scenario, strategy[, load]) cell, failing when one of
its gates is exceeded; the cell's counts go to <system-out> and <properties> for CI systems."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from shutdown_harness.reports._common import ReportData, cell_label, top_signatures_text

__all__ = ["render"]


def render(data: ReportData) -> str:
    agg = data.agg
    root = ET.Element("testsuites", name="shutdown-harness")
    total_tests = total_failures = 0
    for scenario in agg.scenarios:
        cells = [c for c in agg.cells if c.scenario == scenario]
        suite = ET.SubElement(root, "testsuite", name=scenario)
        failures = 0
        time = 0.0
        for cell in cells:
            case = ET.SubElement(suite, "testcase", classname=f"shutdown-harness.{scenario}",
                                 name=cell_label(cell, agg), time=f"{cell.duration_s:.3f}")
            props = ET.SubElement(case, "properties")
            for name, value in (("runs", cell.runs), ("failures", cell.failures),
                                ("infra", cell.infra), ("rate", cell.rate_text()),
                                ("load", cell.load_label)):
                ET.SubElement(props, "property", name=name, value=str(value))
            fidelity = agg.fidelity_of(cell)
            if fidelity is not None:
                for start, (k, n) in (("warm", fidelity.warm), ("cold", fidelity.cold)):
                    ET.SubElement(props, "property", name=f"{start}_failures", value=f"{k}/{n}")
                ET.SubElement(props, "property", name="fidelity_p_value",
                              value="" if fidelity.p_value is None else f"{fidelity.p_value:.3g}")
            failed = [g for g in data.gates_of(cell) if not g.passed]
            if cell.not_runnable is not None:
                ET.SubElement(case, "skipped", message=cell.rate_text())
            elif failed:
                failures += 1
                failure = ET.SubElement(case, "failure", type="gate",
                                        message="; ".join(g.message for g in failed))
                failure.text = "\n".join(f"{g.threshold}: {g.message}" for g in failed)
            out = ET.SubElement(case, "system-out")
            out.text = (f"{cell.failures}/{cell.runs} failures ({cell.rate_text()}), "
                        f"{cell.infra} infra; {top_signatures_text(cell, 5) or 'no failures'}")
            if fidelity is not None:
                out.text += f"\nfidelity: {fidelity.sentence()}"
            time += cell.duration_s
        suite.set("tests", str(len(cells)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("time", f"{time:.3f}")
        total_tests += len(cells)
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
