from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version
from shutdown_harness import releases as index
from shutdown_harness.errors import UsageError


def _index(root: Path) -> str:
    """A PEP 503 index in a folder, as pip's file:// extra-index-url serves one."""
    page = root / "demo-pkg"
    page.mkdir(parents=True)
    files = ["demo_pkg-0.1.0-py3-none-any.whl", "demo-pkg-0.2.0.tar.gz",
             "demo_pkg-0.3.0rc1-py3-none-any.whl", "demo_pkg-0.10.0-py3-none-any.whl"]
    links = [f'<a href="../../files/{f}">{f}</a>' for f in files]
    links.append('<a href="x/demo_pkg-0.4.0-py3-none-any.whl" data-yanked="broken">'
                 'demo_pkg-0.4.0-py3-none-any.whl</a>')
    (page / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")
    return root.as_uri() + "/"


def test_released_versions_from_a_local_index_and_selection(tmp_path: Path) -> None:
    url = _index(tmp_path / "simple")
    releases = index.released_versions("Demo_Pkg", [url])
    assert [str(r.version) for r in releases] == ["0.1.0", "0.2.0", "0.3.0rc1", "0.4.0",
                                                   "0.10.0"]
    assert releases[3].yanked == "broken"
    assert [str(v) for v in index.select("demo-pkg", None, releases)] == [
        "0.1.0", "0.2.0", "0.10.0"]
    assert [str(v) for v in index.select("demo-pkg", ">=0.2", releases, pre=True,
                                            yanked=True)] == ["0.2.0", "0.3.0rc1", "0.4.0",
                                                              "0.10.0"]
    assert index.select("demo-pkg", "0.10.0, 0.2.0", releases) == [Version("0.2.0"),
                                                                      Version("0.10.0")]
    # an explicit list works offline
    assert index.select("demo-pkg", "0.9,0.1", None) == [Version("0.1"), Version("0.9")]
    with pytest.raises(UsageError, match="no release 0.5.0"):
        index.select("demo-pkg", "0.5.0", releases)
    with pytest.raises(UsageError, match="no release matching '>=1'"):
        index.select("demo-pkg", ">=1", releases)
    with pytest.raises(UsageError, match="not a version"):
        index.select("demo-pkg", "0.1,banana", releases)
    with pytest.raises(UsageError, match="no package 'nope'"):
        index.released_versions("nope", [url])
