"""Bisecting a flaky crash: the harness's Bayesian search against deflaked bisection.

    python bench/bisection.py                  # simulated histories + the real bisect's wall time
    python bench/bisection.py --only sim       # simulation only (no etcd, no network)
    python bench/bisection.py --quick          # fewer simulated searches

Simulated histories, where the truth is known: 64 releases, the change at a random place
(uniform over the 63 gaps), every run of a release a draw that fails with that side's rate:
5% vs 0%, 20% vs 5%, 30% vs 10%. Both methods measure the two ends first, alike (batches of
10 until Fisher's p < 0.05), and then search with batches of 10 runs:

- ``bayes``: :mod:`shutdown_harness.bisection` itself (the same functions the ``bisect``
  command decides with): posterior over the change point, next release by expected
  information, stop at 99%;
- ``deflaked``: plain bisection where each probe is run until a sequential probability ratio
  test between the two ends' rates decides it, at an error of 1%/log2(64) per probe (so that
  six probes stay near 99% overall).

Each searches the same histories (same seeds). Printed: accuracy (answer == the true change)
and runs used per search, and their ratio. The real part times ``shutdown-harness bisect
etcd-client-py --scenario concurrent_ops --bad 0.3.0 --good 0.5.1`` (target: under 3 minutes
on 2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "simulated", "real_bisect"]

RELEASES = 64
SETTINGS = ((0.05, 0.0), (0.20, 0.05), (0.30, 0.10))
BATCH = 10
TARGET_S = 180.0


def simulated(trials: int, seed: int = 0, releases: int = RELEASES) -> list[dict[str, Any]]:
    from shutdown_harness.bisection import simulate

    rows = []
    for old, new in SETTINGS:
        per_method: dict[str, list[Any]] = {"bayes": [], "deflaked": []}
        for t in range(trials):
            rng = random.Random(seed * 100_003 + t)
            change = rng.randrange(1, releases)
            rates = [old if i < change else new for i in range(releases)]
            for method in per_method:
                per_method[method].append(simulate(rates, method, batch=BATCH, seed=t))
        for method, results in per_method.items():
            answered = [r for r in results if r.answer is not None]
            rows.append({
                "setting": f"{old:.0%} vs {new:.0%}", "method": method, "trials": trials,
                "refused": trials - len(answered),
                "correct": sum(r.answer == r.truth for r in answered),
                "answered": len(answered),
                "mean_runs": statistics.fmean(r.runs for r in answered) if answered else 0.0,
                "median_runs": statistics.median(r.runs for r in answered) if answered else 0,
            })
    return rows


def real_bisect(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of the README's bisect, from the command's start to its last line."""
    with tempfile.TemporaryDirectory(prefix="bench-bisect-") as tmp:
        argv = [sys.executable, "-m", "shutdown_harness", "bisect", "etcd-client-py",
                "--scenario", "concurrent_ops", "--bad", "0.3.0", "--good", "0.5.1",
                "--out", str(Path(tmp) / "bisect")]
        if args.etcd:
            argv += ["--etcd", args.etcd]
        load = os.getloadavg()[0]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - started
        result: dict[str, Any] = {"wall_s": wall, "returncode": done.returncode,
                                  "load_average": max(load, os.getloadavg()[0]),
                                  "last_line": (done.stdout.strip().splitlines() or [""])[-1]}
        report = Path(tmp) / "bisect" / "bisect.json"
        if report.exists():
            data = json.loads(report.read_text())
            result["runs"] = sum(s.get("runs", 0) for s in data.get("steps", []))
        else:
            result["error"] = (done.stderr.strip().splitlines() or ["no bisect.json"])[-1]
        return result


def _table(rows: list[dict[str, Any]], real: dict[str, Any] | None,
           releases: int = RELEASES) -> str:
    lines = [f"| histories ({releases} releases) | method | accuracy | runs per search "
             "(mean / median) | runs vs deflaked |", "|---|---|---|---|---|"] if rows else []
    by_setting: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], {})[row["method"]] = row
    for setting, methods in by_setting.items():
        base = methods["deflaked"]["mean_runs"] or 1.0
        for method, row in methods.items():
            share = row["correct"] / max(1, row["answered"])
            accuracy = f"{row['correct']}/{row['answered']} ({share:.0%})"
            if row["refused"]:
                accuracy += f", {row['refused']} refused"
            ratio = f"{row['mean_runs'] / base:.2f}x" if method != "deflaked" else "1"
            lines.append(f"| {setting} | {method} | {accuracy} | {row['mean_runs']:.0f} / "
                         f"{row['median_runs']:.0f} | {ratio} |")
    if real is not None:
        met = "yes" if real.get("returncode") == 0 and real["wall_s"] < TARGET_S else "no"
        what = real.get("last_line") or real.get("error", "")
        lines += [""] if lines else []
        lines += ["| measurement | result | target | met |", "|---|---|---|---|",
                  f"| wall time of `bisect etcd-client-py --scenario concurrent_ops --bad 0.3.0 "
                  f"--good 0.5.1` ({real.get('runs', '?')} runs, machine load average "
                  f"{real['load_average']:.1f}) | {real['wall_s']:.0f} s: "
                  f"{what} | < {TARGET_S:.0f} s on 2 CPUs | {met} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 searches per setting")
    parser.add_argument("--trials", type=int, help="searches per setting and method (100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--releases", type=int, default=RELEASES, help="per history (64)")
    parser.add_argument("--only", default="sim,real", help="sim, real, or both")
    parser.add_argument("--etcd", metavar="HOST:PORT", help="for the real bisect")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    try:
        import shutdown_harness  # noqa: F401
    except ImportError:
        print("bench/bisection.py needs the harness installed (nox -s bench)", file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.only.split(",")}
    trials = args.trials or (30 if args.quick else 100)
    started = time.monotonic()
    rows = simulated(trials, args.seed, args.releases) if "sim" in parts else []
    real = real_bisect(args) if "real" in parts else None
    print(_table(rows, real, args.releases))
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"simulated": rows, "real": real}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
