"""examples/github-actions.yml: valid YAML, the structure CI needs, and only real commands.

Every ``shutdown-harness ...`` command of the workflow is parsed by the real argument parser
(after ``${{ ... }}`` expressions are filled in for each shard), and every ``nox -s NAME``
names a session of the noxfile; ``nox -s stress -- ARGS`` is parsed as the stress session runs
it (``shutdown-harness run --preset stress ARGS``).
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from shutdown_harness import config as config_module
from shutdown_harness.cli import build_parser
from shutdown_harness.plan import parse_shard

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "github-actions.yml"
_OPERATORS = {"||", "&&", ";", "|", "&"}
_REDIRECTS = {">", ">>", "<", "2>", "2>&1"}


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def _sessions() -> set[str]:
    """Names of the functions decorated with @nox.session in noxfile.py."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if ast.unparse(target) == "nox.session":
                    names.add(node.name)
    return names


def _fill(text: str, env: dict[str, str], shard: int | None) -> str:
    def value(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr == "matrix.shard":
            assert shard is not None, f"matrix.shard outside the matrix job: {text}"
            return str(shard)
        if expr.startswith("env."):
            return env[expr.removeprefix("env.")]
        return f"EXPR_{re.sub(r'[^A-Za-z0-9]+', '_', expr)}"

    return re.sub(r"\$\{\{(.*?)\}\}", value, text)


def _commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell script (operators split, redirections dropped)."""
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        tokens = list(lexer)
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in _OPERATORS:
                if command:
                    yield command
                command = []
            elif token in _REDIRECTS:
                i += 1  # skip the target
            else:
                command.append(token)
            i += 1
        if command:
            yield command


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def _uses(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).split("@")[0] == action


def _shard_job(workflow: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [
        (name, job) for name, job in workflow["jobs"].items()
        if "shard" in ((job.get("strategy") or {}).get("matrix") or {})
    ]
    assert len(found) == 1, "one job with a shard matrix"
    return found[0]


def _shards(workflow: dict[str, Any]) -> list[int]:
    return list(_shard_job(workflow)[1]["strategy"]["matrix"]["shard"])


def _all_commands(workflow: dict[str, Any]) -> Iterator[tuple[str, int | None, list[str]]]:
    """(job, shard, argv) of every command, once per shard in the matrix job."""
    env = {k: str(v) for k, v in (workflow.get("env") or {}).items()}
    for name, job in workflow["jobs"].items():
        shards: list[int | None] = list(((job.get("strategy") or {}).get("matrix") or {})
                                        .get("shard") or [None])
        job_env = {**env, **{k: str(v) for k, v in (job.get("env") or {}).items()}}
        for step in _steps(job):
            if "run" not in step:
                continue
            for shard in shards:
                for argv in _commands(_fill(step["run"], job_env, shard)):
                    yield name, shard, argv


def test_workflow_is_yaml_with_triggers_and_pinned_actions(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert triggers and "workflow_dispatch" in triggers
    for job in workflow["jobs"].values():
        assert job.get("runs-on")
        for step in _steps(job):
            assert ("uses" in step) != ("run" in step), step
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+", step["uses"]), step["uses"]


def test_shards_run_nox_stress_and_upload_their_folder(workflow: dict[str, Any]) -> None:
    name, job = _shard_job(workflow)
    shards = _shards(workflow)
    assert shards == list(range(1, len(shards) + 1)) and len(shards) >= 2
    assert str(workflow["env"]["SHARDS"]) == str(len(shards))
    assert job["strategy"].get("fail-fast") is False
    stress = [s for s in _steps(job) if "nox -s stress --" in s.get("run", "")]
    assert len(stress) == 1
    uploads = [s for s in _steps(job) if _uses(s, "actions/upload-artifact")]
    assert len(uploads) == 1
    upload = uploads[0]
    assert "!cancelled()" in upload.get("if", "") or "always()" in upload.get("if", "")
    env = {k: str(v) for k, v in workflow["env"].items()}
    names, seeds = set(), set()
    for shard in shards:
        [nox] = [a for j, s, a in _all_commands(workflow) if s == shard and a[:2] == ["nox", "-s"]]
        posargs = nox[nox.index("--") + 1:]
        args = build_parser().parse_args(["run", "--preset", "stress", *posargs])
        assert parse_shard(args.shard) == (shard, len(shards))
        seeds.add(args.seed)
        assert str(args.out) == _fill(upload["with"]["path"], env, shard)
        names.add(_fill(upload["with"]["name"], env, shard))
    assert len(seeds) == 1 and None not in seeds  # merge refuses shards of different seeds
    assert len(names) == len(shards)


def test_merge_job_publishes_summary_junit_and_html(workflow: dict[str, Any]) -> None:
    shard_job, _ = _shard_job(workflow)
    merges = [
        (name, job) for name, job in workflow["jobs"].items()
        if any(a[:2] == ["shutdown-harness", "merge"] for j, _, a in _all_commands(workflow)
               if j == name)
    ]
    assert len(merges) == 1
    name, job = merges[0]
    needs = job.get("needs")
    assert shard_job in ([needs] if isinstance(needs, str) else needs)
    assert "!cancelled()" in job.get("if", "") or "always()" in job.get("if", "")
    steps = _steps(job)
    [download] = [s for s in steps if _uses(s, "actions/download-artifact")]
    assert download["with"]["pattern"] == "shard-*"
    commands = [a for j, _, a in _all_commands(workflow) if j == name]
    parser = build_parser()
    [merge] = [parser.parse_args(a[1:]) for a in commands if a[1:2] == ["merge"]]
    root = download["with"]["path"]
    assert [str(d) for d in merge.dirs] == [f"{root}/shard-*"]
    outputs = {}
    for argv in commands:
        if argv[1:2] == ["report"]:
            args = parser.parse_args(argv[1:])
            assert args.dir == merge.out
            outputs[args.format] = str(args.output)
    assert set(outputs) >= {"markdown", "junit", "html"}
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert f'cat {outputs["markdown"]} >> "$GITHUB_STEP_SUMMARY"' in scripts
    [junit] = [s for s in steps if _uses(s, "EnricoMi/publish-unit-test-result-action")]
    assert outputs["junit"] in junit["with"]["files"]
    uploads = [s for s in steps if _uses(s, "actions/upload-artifact")]
    assert any(outputs["html"] in str(s["with"]["path"]).split() for s in uploads)
    gate = steps[-1]
    assert gate["run"].split()[:2] in (["shutdown-harness", "compare"], ["shutdown-harness",
                                                                          "report"])


def test_every_command_exists(workflow: dict[str, Any]) -> None:
    parser = build_parser()
    sessions = _sessions()
    presets = config_module.load(ROOT / "pyproject.toml").get("presets", {})
    seen = set()
    for _job, _shard, argv in _all_commands(workflow):
        if argv[0] == "shutdown-harness":
            parser.parse_args(argv[1:])  # SystemExit(2) on an unknown subcommand or option
            seen.add(argv[1])
        elif argv[0] == "nox":
            assert argv[1] == "-s"
            posargs = argv[argv.index("--") + 1:] if "--" in argv else []
            for session in argv[2:argv.index("--") if "--" in argv else None]:
                assert session in sessions, f"no nox session {session!r}"
                seen.add(f"nox:{session}")
            if "stress" in argv:  # the stress session runs `run --preset stress POSARGS`
                assert "stress" in presets
                parser.parse_args(["run", "--preset", "stress", *posargs])
    assert seen >= {"merge", "report", "nox:stress"}


def test_command_parser_helpers_catch_mistakes() -> None:
    """The checks above can fail: a bad option or session is caught."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "x", "--format", "pdf"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["merge", "a", "--output", "b"])
    assert "stress" in _sessions() and "nonexistent" not in _sessions()
    assert list(_commands('a --x 1 || [ $? -eq 1 ]\ncat f >> "$OUT"; b \\\n  c')) == [
        ["a", "--x", "1"], ["[", "$?", "-eq", "1", "]"], ["cat", "f"], ["b", "c"]]
