"""Sessions: ``nox -s tests`` (the test suite), ``nox -s stress`` (the main job), lint, typecheck.

Both main commands do all their own set-up: a fresh machine needs only Python and nox.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
#: uv installs without compiling bytecode, and where PYTHONDONTWRITEBYTECODE is set (as on this
#: project's machines) every harness process would then compile rich and the harness again.
COMPILED = {"UV_COMPILE_BYTECODE": "1"}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, in parallel (pytest-xdist) with per-test timeouts."""
    session.install(".[test]", env=COMPILED)
    args = session.posargs or ["-n", "auto", "--dist", "loadgroup"]
    session.run("pytest", *args, env={"PYTHONFAULTHANDLER": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """The performance benchmark (bench/run.py): the README's table. Arguments go to it."""
    session.install(".", env=COMPILED)
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """The main job: default scenarios x default strategies on the embedded etcd.

    Writes every report format under reports/<timestamp>/, prints the terminal table, appends
    the Markdown report to $GITHUB_STEP_SUMMARY when set, and fails when a gate fails.
    Arguments after ``--`` go to ``shutdown-harness run``.
    """
    session.install(".", env=COMPILED)
    out = ROOT / "reports" / datetime.now().strftime("%Y%m%d-%H%M%S")
    if "--out" in session.posargs:
        out = Path(session.posargs[session.posargs.index("--out") + 1])
        extra = list(session.posargs)
    else:
        extra = ["--out", str(out), *session.posargs]
    try:
        session.run("shutdown-harness", "run", "--preset", "stress", *extra)
    finally:
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        markdown = out / "report.md"
        if summary and markdown.exists():
            with open(summary, "a", encoding="utf-8") as f:
                f.write(markdown.read_text(encoding="utf-8") + "\n")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "harness", "scenarios", "tests", "bench", "examples",
                "noxfile.py", "conftest.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the installed package: harness/ and scenarios/ are ``shutdown_harness`` only once
    installed (pyproject.toml maps the folders)."""
    session.install(".[test]", "mypy")
    session.run("mypy", "-p", "shutdown_harness", "--config-file", str(ROOT / "pyproject.toml"),
                "--cache-dir", str(ROOT / ".mypy_cache"))
