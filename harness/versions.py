"""Versions: ordering labels that carry versions.

Strategy labels such as ``etcd-client-py==0.12.1`` or ``etcd-0.4.1`` sort as versions, not as
text (``0.2.0`` before ``0.12.1``): :func:`label_key` splits a label into text and version
tokens (compared with ``packaging.version``), and :func:`sort_labels` orders labels that differ
only in their versions while keeping the given order between different kinds of label
(``etcd-0.5.1-explicit`` stays after ``etcd-0.5.1-atexit`` when given so).

Every run and every report sorts labels, so this module stays light: what a package index has
(``packaging.specifiers``, ``html.parser``, ``urllib``: about 20 ms of imports that only
``sweep`` and ``bisect`` need) is in releases.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from packaging.version import InvalidVersion, Version

__all__ = ["label_key", "sort_labels"]

_VERSION_TOKEN = re.compile(r"(?<![A-Za-z0-9])v?(\d+(?:\.\d+)*(?:(?:a|b|rc|\.post|\.dev)\d+)*)"
                            r"(?![A-Za-z0-9])")


def _tokens(label: str) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    position = 0
    for m in _VERSION_TOKEN.finditer(label):
        if m.start() > position:
            out.append((0, label[position:m.start()]))
        try:
            out.append((1, Version(m.group(1))))
        except InvalidVersion:  # pragma: no cover - the pattern only matches valid versions
            out.append((0, m.group(0)))
        position = m.end()
    if position < len(label):
        out.append((0, label[position:]))
    return out


def label_key(label: str) -> tuple[tuple[int, Any], ...]:
    """A sort key where version numbers inside a label compare as versions."""
    return tuple(_tokens(label))


def _skeleton(label: str) -> str:
    return "".join("#" if kind else str(value) for kind, value in _tokens(label))


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Labels in the given order, except that labels differing only in their version numbers
    are ordered by version (at the place of the first of them)."""
    labels = list(dict.fromkeys(labels))
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(_skeleton(label), i)
    return sorted(labels, key=lambda s: (first[_skeleton(s)], label_key(s)))
