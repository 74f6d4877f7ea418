"""Merge: combine the folders of a sharded (or split) campaign into one campaign folder.

Folders are compatible when their plans are equal except for what may differ between machines
running shards of one campaign (`plan.PER_MACHINE`: the shard itself, jobs, pinned CPU ids,
service endpoints, core and artifact policies) and their strategies name the same packages and
cleanup modes. Anything else (scenarios, strategies, runs, seed, timeout, exit delay, ...) makes
them different experiments: `merge` refuses with a UsageError naming the key.

The merged folder holds campaign.json (the first folder's, with `shard` null, plus
`merged_from` and `merge`: which shards were found and which are missing), results.jsonl (every
record once: the first record of a run_id wins), artifacts/ from every folder, and the reports.
Records keep their `load`, so runs made under different load stay apart in the reports.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shutdown_harness.errors import UsageError
from shutdown_harness.plan import PER_MACHINE
from shutdown_harness.reports import write_all
from shutdown_harness.store import CAMPAIGN, RESULTS, Distinct, iter_records, read_campaign

__all__ = ["merge", "check_compatible", "plan_key"]

#: Strategy fields that define the experiment (the Python path differs between machines).
_STRATEGY_KEYS = ("requirements", "mode", "cleanup", "sleep_s")
_ARTIFACTS = "artifacts"
_LABELS = {"plan": "plan", "strategies": "strategy"}


def plan_key(campaign: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two folders to be parts of one campaign."""
    plan = {k: v for k, v in (campaign.get("plan") or {}).items() if k not in PER_MACHINE}
    strategies = {
        name: {k: spec.get(k) for k in _STRATEGY_KEYS if spec.get(k) is not None}
        for name, spec in (campaign.get("strategies") or {}).items()
        if isinstance(spec, dict)
    }
    return {"plan": plan, "strategies": strategies}


def check_compatible(campaigns: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """UsageError unless every campaign is a part of the first one's campaign."""
    first_dir, first = campaigns[0]
    reference = plan_key(first)
    shard_counts = set()
    for directory, campaign in campaigns:
        shard = (campaign.get("plan") or {}).get("shard")
        if shard:
            shard_counts.add(int(shard[1]))
        if directory == first_dir:
            continue
        key = plan_key(campaign)
        for section in ("plan", "strategies"):
            a, b = reference[section], key[section]
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    hint = " (run every shard with the same --seed)" if name == "seed" else ""
                    raise UsageError(
                        f"cannot merge {directory} into {first_dir}: different {_LABELS[section]} "
                        f"{name!r} ({b.get(name)!r} vs {a.get(name)!r}){hint}"
                    )
    if len(shard_counts) > 1:
        raise UsageError(f"cannot merge shards of different counts: "
                         f"{', '.join(f'/{n}' for n in sorted(shard_counts))}")


def _copy_artifacts(source: Path, out: Path) -> None:
    folder = source / _ARTIFACTS
    if not folder.is_dir():
        return
    target = out / _ARTIFACTS
    target.mkdir(exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not (target / entry.name).exists():
            shutil.copytree(entry, target / entry.name)


def merge(dirs: list[Path], out: Path) -> None:
    """Combine campaign folders `dirs` (shards of one campaign) into the new folder `out`."""
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    if not dirs:
        raise UsageError("merge needs at least one campaign folder")
    resolved = {d.resolve() for d in dirs}
    if len(resolved) != len(dirs):
        raise UsageError("the same folder is given twice")
    if out.resolve() in resolved:
        raise UsageError("--out must be a new folder, not one of the inputs")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not empty: choose another --out")
    campaigns = []
    for d in dirs:
        if not (d / RESULTS).is_file() and not (d / CAMPAIGN).is_file():
            raise UsageError(f"not a campaign folder: {d}")
        campaign = read_campaign(d, missing_ok=True)
        if not campaign:
            raise UsageError(f"{d} has no {CAMPAIGN}: cannot tell which campaign it belongs to")
        campaigns.append((d, campaign))
    check_compatible(campaigns)

    out.mkdir(parents=True, exist_ok=True)
    distinct = Distinct()  # across all folders: a run recorded twice is kept once
    sources: list[dict[str, Any]] = []
    total = 0
    with (out / RESULTS).open("w", encoding="utf-8") as f:
        for d, campaign in campaigns:
            notes: list[str] = []
            count = 0
            dropped_before = distinct.dropped
            for record in distinct(iter_records(d, notes)):
                f.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
                count += 1
            duplicates = distinct.dropped - dropped_before
            total += count
            _copy_artifacts(d, out)
            sources.append({
                "dir": str(d), "shard": (campaign.get("plan") or {}).get("shard"),
                "created_at": campaign.get("created_at"), "argv": campaign.get("argv"),
                "environment": campaign.get("environment"), "load": campaign.get("load"),
                "records": count, "duplicates": duplicates, "notes": notes,
            })
    merged = json.loads(json.dumps(campaigns[0][1]))
    merged.setdefault("plan", {})["shard"] = None
    shards = sorted({tuple(s["shard"]) for s in sources if s["shard"]})
    n = shards[0][1] if shards else None
    missing = [[i, n] for i in range(1, n + 1) if (i, n) not in shards] if n else []
    whole = any(not s["shard"] for s in sources)
    merged["merged_from"] = sources
    merged["merge"] = {"shards": [list(s) for s in shards],
                       "missing_shards": [] if whole else missing,
                       "records": total}
    (out / CAMPAIGN).write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n",
                                encoding="utf-8")
    write_all(out, out)
