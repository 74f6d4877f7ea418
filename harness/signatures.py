"""Crash-family rules: loaded from `harness/data/signatures.toml`, applied in order.

A rule recognizes one crash family from the child's stderr (a regex) or from the function
names of the crashing thread's native backtrace (an ordered subsequence of regexes). The
first matching rule gives the signature; its template may pull in named groups of the
pattern (the failing C function, the exception type, the panic location), normalized so
that nothing run-specific (addresses, thread ids, paths, line numbers) reaches a signature.
Adding a family is a data change plus a test case, not a code change.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from shutdown_harness.errors import UsageError
from shutdown_harness.schema import CATEGORIES, PHASES

__all__ = [
    "RULES_PATH",
    "Match",
    "Rule",
    "load_rules",
    "first_match",
    "fingerprint",
    "rule_by_id",
    "rules",
    "scrub",
]

RULES_PATH = Path(__file__).parent / "data" / "signatures.toml"

_VARIABLE = re.compile(r"0x[0-9a-fA-F]+|\d+")
_VERSIONED_CRATE = re.compile(r"^(?P<name>[A-Za-z][\w-]*?)-\d+\.\d+\.\d+\S*$")


@dataclass(frozen=True)
class Rule:
    """One crash family: how to recognize it and how to name it."""

    id: str
    explanation: str
    pattern: re.Pattern[str] | None = None
    frames: tuple[re.Pattern[str], ...] = ()
    signature: str = ""
    normalize: tuple[tuple[str, str], ...] = ()
    categories: frozenset[str] | None = None
    phases: frozenset[str] | None = None
    category: str | None = None
    occurrence: str = "first"
    upstream: tuple[str, ...] = ()

    def applies_to(self, category: str, phase: str | None = None) -> bool:
        if self.categories is not None and category not in self.categories:
            return False
        return self.phases is None or phase is None or phase in self.phases


@dataclass(frozen=True)
class Match:
    """A rule that matched: the signature it gives, where it was found, its groups."""

    rule: Rule
    signature: str
    source: str  # "stderr" or "backtrace"
    groups: dict[str, str]


# --------------------------------------------------------------------------------------------
# Normalizers for captured groups


#: What stderr tells of where a run died: faulthandler's fatal-error line and Python frames,
#: a Rust panic's thread and location (the lines of `fingerprint`).
_FINGERPRINT_LINE = re.compile(
    r"^(?:Fatal Python error: .*|  File \".*\", line \d+,? in .*|  <no Python frame>"
    r"|thread '[^'\n]*'.* panicked at .*)$", re.M)
_FINGERPRINT_TAIL = 20_000


def fingerprint(stderr: str) -> str:
    """A short digest of what ``stderr`` says of where the run died, without run-specific
    parts (addresses, thread ids, numbers): runs with equal fingerprints died alike as far as
    stderr tells, so one's native signature may be inferred from another's core."""
    # Imported here: hashlib (OpenSSL) is ~11 M instructions (~5 ms) of every campaign's
    # start, and only a crash with a core to read is fingerprinted.
    import hashlib

    lines = [scrub(m.group()) for m in _FINGERPRINT_LINE.finditer(stderr[-_FINGERPRINT_TAIL:])]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:10]


def scrub(text: str) -> str:
    """Remove run-specific parts from free text: hex addresses, then any other number."""
    return _VARIABLE.sub(lambda m: "0x?" if m.group().startswith("0x") else "N", text).strip()


def _rust_location(path: str) -> str:
    """``/home/u/.cargo/registry/src/index-xxx/pyo3-0.26.0/src/x.rs`` -> ``pyo3/src/x.rs``.

    Keeps the crate (without its version, so the family compares across client versions)
    and the path inside it; drops the machine-specific prefix and any line/column numbers.
    """
    path = re.sub(r"(?::\d+)+:?$", "", path.strip())
    parts = [p for p in re.split(r"[/\\]", path) if p]
    for i in range(len(parts) - 1, -1, -1):
        m = _VERSIONED_CRATE.match(parts[i])
        if m and i < len(parts) - 1:
            return "/".join([m.group("name"), *parts[i + 1:]])
    if "src" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("src")
        return "/".join(parts[max(i - 1, 0):])
    return parts[-1] if parts else path


_NORMALIZERS: dict[str, Callable[[str], str]] = {
    "rust-location": _rust_location,
    "scrub": scrub,
}


# --------------------------------------------------------------------------------------------
# Loading


def _compile(rule_id: str, field: str, regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as e:
        raise UsageError(f"signature rule {rule_id!r}: bad {field} regex: {e}") from None


def _rule(raw: dict[str, Any], index: int) -> Rule:
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise UsageError(f"signature rule #{index + 1} has no id")
    if "pattern" not in raw and "frames" not in raw:
        raise UsageError(f"signature rule {rule_id!r} has neither pattern nor frames")
    pattern = _compile(rule_id, "pattern", raw["pattern"]) if "pattern" in raw else None
    frames = tuple(_compile(rule_id, "frames", f) for f in raw.get("frames", ()))
    template = raw.get("signature", rule_id)
    groups = set(pattern.groupindex) if pattern else set()
    for name in re.findall(r"{(\w+)}", template):
        if name not in groups:
            raise UsageError(f"signature rule {rule_id!r}: template names unknown group {name}")
    normalize = raw.get("normalize", {})
    for how in normalize.values():
        if how not in _NORMALIZERS:
            raise UsageError(f"signature rule {rule_id!r}: unknown normalizer {how!r}")
    categories = raw.get("categories")
    if categories is not None and not set(categories) <= set(CATEGORIES):
        raise UsageError(f"signature rule {rule_id!r}: unknown category in {categories}")
    phases = raw.get("phases")
    if phases is not None and not set(phases) <= set(PHASES):
        raise UsageError(f"signature rule {rule_id!r}: unknown phase in {phases}")
    recategorize = raw.get("category")
    if recategorize not in (None, "infra"):
        raise UsageError(f"signature rule {rule_id!r}: category may only be 'infra'")
    occurrence = raw.get("occurrence", "first")
    if occurrence not in ("first", "last"):
        raise UsageError(f"signature rule {rule_id!r}: occurrence must be first or last")
    return Rule(
        id=rule_id,
        explanation=" ".join(str(raw.get("explanation", "")).split()),
        pattern=pattern,
        frames=frames,
        signature=template,
        normalize=tuple(sorted(normalize.items())),
        categories=frozenset(categories) if categories is not None else None,
        phases=frozenset(phases) if phases is not None else None,
        category=recategorize,
        occurrence=occurrence,
        upstream=tuple(raw.get("upstream", ())),
    )


def load_rules(path: Path = RULES_PATH) -> tuple[Rule, ...]:
    """Parse and compile a rules file; bad rules raise UsageError with one line."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read signature rules {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"signature rules {path} are not valid TOML: {e}") from None
    loaded = tuple(_rule(raw, i) for i, raw in enumerate(data.get("rule", [])))
    ids = [r.id for r in loaded]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"signature rules {path}: duplicate ids {', '.join(duplicates)}")
    return loaded


@cache
def rules() -> tuple[Rule, ...]:
    """The built-in rules, compiled once per process."""
    return load_rules(RULES_PATH)


def rule_by_id(rule_id: str) -> Rule:
    """A built-in rule by its id (KeyError if there is none)."""
    for rule in rules():
        if rule.id == rule_id:
            return rule
    raise KeyError(rule_id)


# --------------------------------------------------------------------------------------------
# Matching


def _signature(rule: Rule, groups: dict[str, str]) -> str:
    values = dict(groups)
    for group, how in rule.normalize:
        if values.get(group):
            values[group] = _NORMALIZERS[how](values[group])
    names = re.findall(r"{(\w+)}", rule.signature)
    if not names or any(not values.get(name) for name in names):
        return rule.id  # a template whose parts are missing falls back to the bare id
    return rule.signature.format_map(values)


def _search(rule: Rule, stderr: str) -> dict[str, str] | None:
    assert rule.pattern is not None
    if rule.occurrence == "last":
        found: re.Match[str] | None = None
        for found in rule.pattern.finditer(stderr):  # noqa: B007 - keep the last one
            pass
    else:
        found = rule.pattern.search(stderr)
    if found is None:
        return None
    return {k: v for k, v in found.groupdict().items() if v is not None}


def _subsequence(patterns: Sequence[re.Pattern[str]], names: Iterable[str]) -> bool:
    wanted = iter(patterns)
    current = next(wanted, None)
    for name in names:
        if current is None:
            break
        if current.fullmatch(name):
            current = next(wanted, None)
    return current is None


@cache
def _empty_rules() -> tuple[Rule, ...]:
    """The built-in rules that can match an empty stderr (a pattern that matches no text)."""
    return tuple(r for r in rules() if r.pattern is not None and _search(r, "") is not None)


def first_match(stderr: str, category: str, functions: Sequence[str] = (),
                rule_list: Sequence[Rule] | None = None, phase: str | None = None) -> Match | None:
    """The first rule, in file order, that applies to ``category`` (and ``phase``) and matches.

    A rule matches on its stderr ``pattern``, else on its ``frames``: regexes that must match
    (in full, in order) a subsequence of ``functions``, the crashing thread's function names
    innermost first, with Rust hashes stripped but nothing skipped (the machinery frames are
    what some families are made of).
    """
    if rule_list is None:
        # Most runs print nothing and have no backtrace: only a rule that matches an empty
        # stderr can match them, and the built-in rules have none (a clean run's classify:
        # 9.3 -> 4 us, of which these regex searches were the most).
        rule_list = rules() if stderr or functions else _empty_rules()
    for rule in rule_list:
        if not rule.applies_to(category, phase):
            continue
        if rule.pattern is not None:
            groups = _search(rule, stderr)
            if groups is not None:
                return Match(rule, _signature(rule, groups), "stderr", groups)
        if rule.frames and functions and _subsequence(rule.frames, functions):
            return Match(rule, rule.id, "backtrace", {})
    return None
