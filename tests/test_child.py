"""harness/child.py: a scenario copied out of the package still imports ``_clients``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shutdown_harness import MARKER, discovery

_SCENARIO = '''
import json
import _clients


def main():
    print(json.dumps({"clients": _clients.__file__, "key": _clients.key("k").decode()}))
'''


def _run(scenario: Path) -> dict[str, str]:
    proc = subprocess.run([sys.executable, str(discovery.CHILD), str(scenario)],
                          capture_output=True, text=True, timeout=60, cwd=scenario.parent,
                          env={"PATH": "/usr/bin:/bin", "SHUTDOWN_HARNESS_RUN_ID": "s/t/3"})
    assert proc.returncode == 0, proc.stderr
    first, marker = proc.stdout.splitlines()[:2]
    assert marker == MARKER
    return dict(json.loads(first))


def test_a_copied_scenario_finds_the_builtin_clients(tmp_path: Path) -> None:
    scenario = tmp_path / "elsewhere" / "my_scenario.py"
    scenario.parent.mkdir()
    scenario.write_text(_SCENARIO)
    seen = _run(scenario)
    assert Path(seen["clients"]).resolve() == (discovery.BUILTIN_DIR / "_clients.py").resolve()
    assert seen["key"].startswith("shutdown-harness/s/t/3/")


def test_a_clients_module_beside_the_scenario_comes_first(tmp_path: Path) -> None:
    scenario = tmp_path / "my_scenario.py"
    scenario.write_text(_SCENARIO)
    (tmp_path / "_clients.py").write_text("def key(*parts):\n    return b'mine'\n")
    seen = _run(scenario)
    assert Path(seen["clients"]) == tmp_path / "_clients.py"
    assert seen["key"] == "mine"


def test_a_child_whose_parent_is_not_the_harness_after_its_prctl_exits_at_once() -> None:
    # A warm run names the harness (fork_server.py's request): any other parent after the
    # PR_SET_PDEATHSIG means the harness died before it, and the run must not start.
    harness = Path(__file__).parent.parent / "harness"
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import child\n"
            "child._die_with_parent(int(sys.argv[2]) or os.getppid()); print('ran')\n")
    for parent, returncode, said in ((0, 0, "ran\n"), (1, 1, ""), (2**22 + 1, 1, "")):
        result = subprocess.run([sys.executable, "-c", code, str(harness), str(parent)],
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout) == (returncode, said), (parent, result)
