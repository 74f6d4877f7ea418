from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fixtures.campaigns import synth
from shutdown_harness.aggregate import load_campaign
from shutdown_harness.errors import UsageError
from shutdown_harness.reports import FORMATS, compare_command, render, write_all

GATES = {"etcd-0.5.1": {"max_upper": 0.001}, "etcd-0.4.1": {"min_lower": 0.1}}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.two_version_campaign(tmp_path_factory.mktemp("c"))


def test_write_all_writes_every_format(campaign: Path, tmp_path: Path) -> None:
    written = write_all(campaign, tmp_path, gates=GATES)
    assert set(written) == set(FORMATS)
    assert all(p.stat().st_size > 200 for p in written.values())


def test_json_carries_inputs_numbers_and_gates(campaign: Path) -> None:
    doc = json.loads(render(campaign, "json", gates=GATES))
    old, new = doc["cells"]
    assert (old["failures"], old["runs"], old["infra"]) == (412, 2000, 3)
    assert old["interval"] == pytest.approx([0.1883, 0.2245], abs=1e-3)
    assert new["rate"] == 0 and new["interval"][1] == pytest.approx(0.00192, abs=1e-4)
    assert doc["inputs"]["environment"]["kernel"] == "6.1.0-18-amd64"
    assert doc["inputs"]["client_versions"] == {"etcd-0.4.1": ["0.4.1"], "etcd-0.5.1": ["0.5.1"]}
    assert doc["inputs"]["load_labels"] == ["2 jobs/CPU"]
    assert doc["comparisons"][0]["p_value"] < 1e-100
    assert doc["passed"] is False
    assert [(g["strategy"], g["passed"]) for g in doc["gates"]] == [
        ("etcd-0.5.1", False), ("etcd-0.4.1", True)]


def test_markdown_reads_as_a_verdict(campaign: Path) -> None:
    md = render(campaign, "markdown", gates=GATES)
    assert ("- etcd-0.5.1 removes the failures: 0/2000 (< 0.20%) vs 412/2000 "
            "(20.6% [18.8–22.5%]) on etcd-0.4.1, Fisher p < 1e-100.") in md
    assert "| concurrent-puts | `etcd-0.4.1` | 2000 | 412 | 20.6% [18.8–22.5%] |" in md
    assert "### Gates: ❌ failed" in md
    assert "shutdown-harness run --scenario concurrent-puts --strategy etcd-0.4.1" in md
    # every table row has the header's number of cells
    for block in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.M):
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in block.splitlines()}
        assert len(widths) == 1, block


def test_junit_fails_the_gated_cell_only(campaign: Path) -> None:
    root = ET.fromstring(render(campaign, "junit", gates=GATES))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"etcd-0.4.1", "etcd-0.5.1"}
    assert cases["etcd-0.4.1"].find("failure") is None
    failure = cases["etcd-0.5.1"].find("failure")
    assert failure is not None and "must stay below 0.10%" in failure.get("message", "")
    assert root.get("tests") == "2" and root.get("failures") == "1"


def test_html_is_self_contained_with_a_chart(campaign: Path) -> None:
    html = render(campaign, "html", gates=GATES)
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"(src|href)=\"?https?:", html)
    svg = re.search(r"<svg.*?</svg>", html, flags=re.S).group(0)  # type: ignore[union-attr]
    # one stacked segment per signature of 0.4.1, widths proportional to the rates
    segments = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)"[^>]*fill="(#\w+)">'
                          r"<title>([^<]+)</title>", svg)
    assert [s[2] for s in segments] == ["pthread-exit-unwind-abort: 400/2000",
                                        "gilstate-release-not-current: 12/2000"]
    assert float(segments[0][0]) / float(segments[1][0]) == pytest.approx(400 / 12, rel=0.01)
    assert "20.6% [18.8–22.5%]" in svg and "&lt; 0.20%" in svg
    assert "take_gil" in html  # the exemplar's native backtrace
    assert "Current thread is 1" in html


def test_terminal_and_compare(campaign: Path) -> None:
    text = render(campaign, "terminal", gates={})
    assert "20.6% [18.8–22.5%]" in text and "< 0.20%" in text
    assert "etcd-0.5.1 removes the failures" in text
    assert "\x1b[" not in text
    out = io.StringIO()
    assert compare_command(campaign, config={}, stream=out) == 0
    assert "Fisher p < 1e-100" in out.getvalue() and "pthread-exit-unwind-abort" in out.getvalue()


def test_mixed_load_is_labelled_in_every_format(tmp_path: Path) -> None:
    busy = {"jobs": 8, "cpus": 2, "jobs_per_cpu": 4.0, "pin": None, "exit_delay": 0.0}
    synth.make_campaign(tmp_path, [
        synth.CellSpec("s", "old", 50, {"native-crash": 5}),
        synth.CellSpec("s", "old", 50, {"native-crash": 20}, load=busy, first_index=50)])
    for fmt in FORMATS:
        text = render(tmp_path, fmt, gates={})
        assert "4 jobs/CPU" in text and "2 jobs/CPU" in text, fmt


def test_a_python_column_when_the_cells_ran_on_different_pythons(tmp_path: Path) -> None:
    synth.make_campaign(tmp_path, [synth.CellSpec("s", "old", 20, {"native-crash": 2}),
                                   synth.CellSpec("s", "new", 20, {})])
    for fmt in ("terminal", "markdown", "html"):
        assert "Python" not in render(tmp_path, fmt, gates={}).split("Signatures")[0], fmt
    recs = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    for rec in recs:
        rec["python"] = "3.12.1" if rec["strategy"] == "new" else "3.11.7"
    (tmp_path / "results.jsonl").unlink()
    synth.write_records(tmp_path, recs)
    md = render(tmp_path, "markdown", gates={})
    assert "| Top signatures | Python |" in md
    assert re.search(r"^\| s \| `new` \| 20 \| 0 \| .* \| 3\.12\.1 \|$", md, flags=re.M), md
    for fmt in ("terminal", "html"):
        text = render(tmp_path, fmt, gates={})
        assert "Python" in text and "3.12.1" in text and "3.11.7" in text, fmt


def test_unknown_format(campaign: Path) -> None:
    with pytest.raises(UsageError, match="unknown report format"):
        render(campaign, "pdf", gates={})


def test_fidelity_is_in_every_format_and_loud_when_warm_differs(tmp_path: Path) -> None:
    from shutdown_harness.reports._common import command_line

    synth.make_campaign(tmp_path, [synth.CellSpec("s", "old", 200, {"native-crash": 20})],
                        plan={"warm": True})
    lines = []
    for line in (tmp_path / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec["start"] = "cold" if rec["index"] % 10 == 0 else "warm"  # the crashes: cold 2/20
        lines.append(json.dumps(rec))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    for fmt in ("terminal", "markdown", "html", "junit"):
        text = render(tmp_path, fmt, gates={})
        shown = r"warm 18/180.*cold 2/20|18/180 \| 2/20|warm_failures\" value=\"18/180"
        assert re.search(shown, text, re.S), fmt
        assert "DIFFER" not in text, fmt
    doc = json.loads(render(tmp_path, "json", gates={}))
    (f,) = doc["fidelity"]
    assert (f["scenario"], f["strategy"], f["warm"], f["cold"]) == ("s", "old", [18, 180], [2, 20])
    assert 0.5 < f["p_value"] <= 1.0
    # now warm is clean and cold crashes: every format says it loudly, gates refuse to pass
    lines = []
    for line in (tmp_path / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["start"] == "cold":
            rec.update(category="crash", signature="native-crash", returncode=-6)
        elif rec["category"] == "crash":
            rec.update(category="clean", signature=None, returncode=0)
        lines.append(json.dumps(rec))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    for fmt in ("terminal", "markdown", "html", "junit"):
        assert "WARM AND COLD DIFFER for s / old" in render(tmp_path, fmt, gates={}), fmt
    doc = json.loads(render(tmp_path, "json", gates={"old": {"max_failures": 1000}}))
    assert doc["fidelity"][0]["differs"] and not doc["passed"]
    shown = io.StringIO()
    assert compare_command(tmp_path, config={}, stream=shown) == 0
    assert "WARM AND COLD DIFFER for s / old" in shown.getvalue()
    # evidence and reruns reproduce cold: the command never carries --warm
    assert "--warm" not in command_line(load_campaign(tmp_path))
