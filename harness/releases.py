"""Releases: what versions of a package the configured package index has.

:func:`released_versions` asks the package index this machine is configured for (pip's
``index-url``/``extra-index-url``, from ``pip config``, ``PIP_INDEX_URL``, uv's
``UV_INDEX_URL``/``UV_DEFAULT_INDEX``) through the PEP 691 JSON simple API, with the PEP 503
HTML page as the fallback; :func:`select` narrows them with a list or a specifier. Used by
``sweep`` and ``bisect`` (ordering labels, which every run does, is versions.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from shutdown_harness.errors import UsageError

__all__ = [
    "PYPI",
    "Release",
    "index_urls",
    "released_versions",
    "select",
    "is_specifier",
    "parse_version",
    "IndexUnreachable",
]

PYPI = "https://pypi.org/simple/"
_TIMEOUT_S = 30.0


class IndexUnreachable(UsageError):
    """The package index did not answer (offline): an explicit version list still works."""


def _pip_config() -> dict[str, str]:
    """pip's configuration (``pip config list``: files and PIP_* variables), as key -> value."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in done.stdout.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip().split(".", 1)[-1]] = value.strip().strip("'\"")
    return out


def index_urls() -> list[str]:
    """The simple-API roots this machine installs from: uv's settings first, then pip's."""
    env = os.environ
    primary = env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL")
    extra = (env.get("UV_INDEX") or env.get("UV_EXTRA_INDEX_URL") or "").split()
    if primary is None:
        config = _pip_config()
        primary = env.get("PIP_INDEX_URL") or config.get("index-url")
        extra += (env.get("PIP_EXTRA_INDEX_URL") or config.get("extra-index-url") or "").split()
    urls = [primary or PYPI, *extra]
    return [u if u.endswith("/") else u + "/" for u in dict.fromkeys(urls)]


@dataclass(frozen=True)
class Release:
    """One version of a package on the index."""

    version: Version
    yanked: str | None = None  # the reason (or "yanked") when every file is yanked
    requires_python: str | None = None


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        a = dict(attrs)
        self.files.append({"filename": None, "url": a.get("href") or "",
                           "yanked": a.get("data-yanked", False) if "data-yanked" in a else False,
                           "requires-python": a.get("data-requires-python")})

    def handle_data(self, data: str) -> None:
        if self.files and self.files[-1]["filename"] is None and data.strip():
            self.files[-1]["filename"] = data.strip()


def _fetch(url: str) -> tuple[str, bytes]:
    # Imported here: urllib.request pulls http.client, email and ssl (~18 ms, -X importtime),
    # needed only when an index is asked, not for a version list given offline.
    import urllib.request

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":  # a local index (pip's file:// extra-index-url): a folder
        path = urllib.request.url2pathname(parsed.path)
        page = os.path.join(path, "index.html") if os.path.isdir(path) else path
        try:
            with open(page, "rb") as f:
                return "text/html", f.read()
        except FileNotFoundError:
            raise urllib.error.HTTPError(url, 404, "not found", None, None) from None  # type: ignore[arg-type]
    request = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        return response.headers.get("Content-Type", ""), response.read()


def _files(root: str, package: str) -> list[dict[str, Any]] | None:
    """The index's files of a package (None when the index does not know it)."""
    url = urllib.parse.urljoin(root, f"{canonicalize_name(package)}/")
    try:
        kind, body = _fetch(url)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise UsageError(f"the package index {root} answered {e.code} for {package}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise IndexUnreachable(f"cannot reach the package index {root}: {reason}"
                               " (list the versions to work offline)") from None
    if "json" in kind:
        files = json.loads(body).get("files", [])
        return [f for f in files if isinstance(f, dict)]
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    return parser.files


def _version_of(filename: str, package: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        for suffix in (".tar.gz", ".zip", ".tar.bz2", ".tgz"):
            if filename.endswith(suffix):
                stem = filename[: -len(suffix)]
                name, _, version = stem.rpartition("-")
                if canonicalize_name(name) == canonicalize_name(package):
                    return Version(version)
    except (InvalidVersion, ValueError):
        return None
    return None


def released_versions(package: str, urls: list[str] | None = None) -> list[Release]:
    """Every version of ``package`` on the configured indexes, oldest first (yanked ones
    carry their reason). UsageError when no index knows the package."""
    found: dict[Version, list[dict[str, Any]]] = {}
    known = False
    for root in urls or index_urls():
        files = _files(root, package)
        if files is None:
            continue
        known = True
        for f in files:
            name = f.get("filename") or urllib.parse.unquote(
                urllib.parse.urlparse(f.get("url", "")).path.rsplit("/", 1)[-1])
            version = _version_of(name, package)
            if version is not None:
                found.setdefault(version, []).append(f)
    if not known:
        where = ", ".join(urls or index_urls())
        raise UsageError(f"no package {package!r} on the package index ({where})")
    releases = []
    for version in sorted(found):
        files = found[version]
        yanked = [f.get("yanked") for f in files]
        all_yanked = all(y not in (None, False) for y in yanked)
        reason = next((str(y) for y in yanked if isinstance(y, str) and y), "yanked")
        requires = next((f.get("requires-python") for f in files if f.get("requires-python")), None)
        releases.append(Release(version, reason if all_yanked else None, requires))
    return releases


def parse_version(text: str, what: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise UsageError(f"{what}: {text!r} is not a version") from None


def is_specifier(spec: str) -> bool:
    """Whether ``--versions`` is a specifier (``>=0.3``) rather than a list of versions."""
    return bool(re.match(r"^\s*(===|==|!=|~=|>=|<=|<|>)", spec))


def select(package: str, spec: str | None, releases: list[Release] | None,
           pre: bool = False, yanked: bool = False) -> list[Version]:
    """The versions to measure, oldest first.

    ``spec`` is None (every release), a comma-separated list of versions (``0.3.0,0.4.1``;
    without ``releases`` it is taken as it is, offline) or a specifier (``>=0.3,<0.6``).
    Pre-releases and yanked releases only with ``pre`` / ``yanked`` (or when named exactly).
    """
    text = (spec or "").strip()
    listed = bool(text) and not is_specifier(text)
    if listed:
        wanted = [parse_version(v.strip(), "--versions") for v in text.split(",") if v.strip()]
        if not wanted:
            raise UsageError(f"--versions {spec!r} names no version")
        if releases is not None:
            known = {r.version for r in releases}
            missing = [str(v) for v in wanted if v not in known]
            if missing:
                raise UsageError(f"{package} has no release {', '.join(missing)} on the index")
        return sorted(set(wanted))
    try:
        specifier = SpecifierSet(text)
    except InvalidSpecifier:
        raise UsageError(f"--versions {spec!r} is neither a list of versions nor a specifier"
                         " such as '>=0.3,<0.6'") from None
    if releases is None:
        raise UsageError("a version specifier needs the package index (or list the versions)")
    out = [r.version for r in releases
           if (yanked or r.yanked is None)
           and (pre or not r.version.is_prerelease)
           and specifier.contains(r.version, prereleases=True)]
    if not out:
        what = f" matching {text!r}" if text else ""
        raise UsageError(f"{package} has no release{what} on the index"
                         + ("" if pre else " (pre-releases need --pre)"))
    return out
