"""JSON report: the aggregate with its inputs (versions, Python, platform, load, runs), cells,
signatures, comparisons and gate results; stable keys for tools (`"format": 1`)."""

from __future__ import annotations

import json

from shutdown_harness.reports._common import ReportData

__all__ = ["render"]


def render(data: ReportData) -> str:
    doc = data.agg.to_dict()
    doc["gates"] = [g.to_dict() for g in data.gates]
    doc["unmatched_gates"] = [g.name for g in data.unmatched_gates]
    doc["passed"] = data.passed
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
