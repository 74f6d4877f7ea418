from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fixtures.releases import wheels
from shutdown_harness import bisection


def test_posterior_puts_the_change_where_the_counts_change() -> None:
    counts = [(10, 40), (9, 40), (11, 40), (0, 40), (0, 40)]
    p = bisection.posterior(counts)
    assert len(p) == 4 and sum(p) == pytest.approx(1.0)
    k, prob = bisection.best(counts)
    assert k == 3 and prob > 0.99  # releases 0-2 old side, 3-4 new side


def test_unmeasured_releases_keep_the_change_point_open() -> None:
    counts = [(10, 40), (0, 0), (0, 0), (0, 0), (0, 40)]
    p = bisection.posterior(counts)
    assert max(p) < 0.3  # four places equally possible
    gains = bisection.gains(counts, 10)
    # the middle of the unknown releases tells the most; the measured ends the least
    assert bisection.next_probe(counts, 10) == 2
    assert gains[2] > gains[1] > gains[0]
    assert bisection.information_gain(counts, 2, 10) == pytest.approx(gains[2])


def test_a_quiet_release_on_a_five_percent_side_is_not_taken_for_fixed() -> None:
    """0/20 at a release is little evidence against 5%: the posterior must not reach 99%."""
    counts = [(10, 200), (0, 20), (0, 200)]
    assert bisection.best(counts)[1] < bisection.CONFIDENCE


def test_a_release_that_fits_neither_side_is_named() -> None:
    counts = [(30, 100), (2, 100), (28, 100), (0, 100), (0, 100)]
    assert bisection.misfits(counts, 3) == [1]  # 2/100 among 30% releases
    assert bisection.misfits([(30, 100), (28, 100), (0, 100)], 2) == []


def test_ends_differ_is_fishers_p() -> None:
    assert bisection.ends_differ((12, 40), (0, 40)) < 0.001
    assert bisection.ends_differ((1, 10), (0, 10)) == pytest.approx(1.0)
    assert bisection.ends_differ((0, 0), (0, 10)) == 1.0


def test_deflaked_bisection_steps() -> None:
    counts = [(20, 100), (0, 0), (0, 0), (0, 100)]
    assert bisection.deflaked_next(counts, 0, 3, 0.01) == ("run", 1)
    counts[1] = (5, 10)
    assert bisection.deflaked_next(counts, 0, 3, 0.01) == ("old", 1)
    assert bisection.deflaked_next(counts, 2, 3, 0.01) == ("done", 3)


@pytest.mark.parametrize("method, at_least", [("bayes", 5), ("deflaked", 3)])
def test_simulated_search_finds_a_clear_change(method: str, at_least: int) -> None:
    rates = [0.3] * 5 + [0.0] * 11
    trials = [bisection.simulate(rates, method, batch=10, seed=seed) for seed in range(5)]
    assert all(t.truth == 5 and t.runs > 0 for t in trials)
    assert sum(t.answer == 5 for t in trials) >= at_least
    refused = bisection.simulate([0.1] * 4 + [0.09] * 4, method, end_cap=40, seed=1)
    assert refused.answer is None and refused.runs == 80  # the ends could not be told apart


# -- the command, on synthetic releases served from a local index ---------------------------------
@pytest.fixture
def releases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """shtest-releases (fixtures/releases): 0.2.0 and 0.3.0 abort at exit in every run,
    0.4.0 and 0.5.0 never, 0.6.0 needs Python >= 4 (not installable here)."""
    monkeypatch.setenv("UV_DEFAULT_INDEX", wheels.make_index(tmp_path / "index"))
    monkeypatch.setenv("SHUTDOWN_HARNESS_CACHE", str(tmp_path / "cache"))
    scenario = tmp_path / "call_work.py"
    scenario.write_text(wheels.SCENARIO)
    return scenario


def test_bisect_finds_the_fix_of_synthetic_releases(releases: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    out = tmp_path / "b"
    code = bisection.bisect_command("shtest-releases", str(releases), bad="0.2.0",
                                    good="0.5.0", out=out, batch=4, stream=stream)
    text = stream.getvalue()
    assert code == 0, text[-2000:]
    data = json.loads((out / "bisect.json").read_text())
    assert (data["last_bad"], data["first_good"]) == ("0.3.0", "0.4.0")
    assert data["looking_for"] == "fix" and data["confidence"] >= bisection.CONFIDENCE
    assert data["p_value"] < 0.05
    assert data["steps"][0]["version"] == "0.2.0" and data["steps"][1]["version"] == "0.5.0"
    assert all(set(s) >= {"version", "runs", "failures", "posterior"} for s in data["steps"])
    assert text.strip().splitlines()[-1].startswith("fixed in 0.4.0 (")


def test_bisect_refuses_ends_that_do_not_differ(releases: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    out = tmp_path / "b"
    code = bisection.bisect_command("shtest-releases", str(releases), bad="0.5.0",
                                    good="0.4.0", out=out, batch=4, end_cap=8, stream=stream)
    assert code == 1
    last = stream.getvalue().strip().splitlines()[-1]
    assert last.startswith("refused: 0.4.0 0/8") and "0.5.0 0/8" in last
    data = json.loads((out / "bisect.json").read_text())
    assert data["looking_for"] == "regression" and data["first_bad"] is None
