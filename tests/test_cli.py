"""The command line end to end, as a user runs it: real harness processes, real children."""

from __future__ import annotations

import builtins
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from shutdown_harness import __main__ as entry
from shutdown_harness import workflow
from shutdown_harness.cli import build_parser
from shutdown_harness.stats import wilson_interval

BEHAVE = Path(__file__).parent / "children" / "behave.py"
HARNESS = [sys.executable, "-m", "shutdown_harness"]


def _harness(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HARNESS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--runs", "-1", "--command", "true"], "--runs"),
        (["run", "--jobs", "0", "--command", "true"], "--jobs"),
        (["run", "--timeout", "abc", "--command", "true"], "--timeout"),
        (["run", "--etcd", "nowhere", "--command", "true"], "--etcd"),
        (["run", "--jobs", "0x", "--command", "true"], "--jobs"),
        (["run", "--exit-delay", "soon", "--command", "true"], "--exit-delay"),
        (["run", "--cores", "maybe", "--command", "true"], "--cores"),
        (["run", "--until-halfwidth", "0.7", "--command", "true"], "--until-halfwidth"),
        (["run", "--shard", "3/2", "--command", "true"], "--shard"),
        (["run", "--command", "true", "--scenario", "sanity"], "exclude each other"),
        (["run", "--command", "true", "--warm"], "--warm"),
        (["run", "--scenario", "no_such_scenario"], "no_such_scenario"),
        (["run", "--strategy", "no-such-strategy", "--scenario", "sanity"], "no-such-strategy"),
        (["report", "/nonexistent/campaign"], "campaign"),
        (["classify", "/nonexistent/run.json"], "run.json"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = _harness(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_unwritable_out_is_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _harness("run", "--command", "true", "--runs", "1", "--out", str(blocker / "out"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--out" in result.stderr


def test_flaky_abort_rate_and_records(tmp_path: Path) -> None:
    out = tmp_path / "x"
    result = _harness(
        "run", "--command", f"{sys.executable} {BEHAVE} flaky 0.2", "--runs", "300",
        "--out", str(out), "--cores", "off",
    )
    assert result.returncode == 0, result.stderr
    records = _records(out)
    assert len(records) == 300
    assert len({r["run_id"] for r in records}) == 300
    crashed = [r for r in records if r["category"] == "crash"]
    assert {r["signal"] for r in crashed} == {"SIGABRT"}
    assert all(r["returncode"] == -6 and r["phase"] == "finalization" for r in crashed)
    assert all(r["work_done"] for r in records)
    low, high = wilson_interval(len(crashed), len(records), confidence=0.999)
    assert low <= 0.2 <= high  # the true rate is 20%
    assert f"{len(crashed)}/300 failed" in result.stdout  # final summary
    for key in ("run_id", "scenario", "strategy", "index", "returncode", "signal", "timed_out",
                "work_done", "duration_s", "category", "outcome", "signature", "phase",
                "stderr_tail", "load", "started_at"):
        assert key in records[0]
    assert (out / "report.html").exists() and (out / "junit.xml").exists()


def test_every_kind_of_exit_is_classified(tmp_path: Path) -> None:
    cases = {
        "ok": ("clean", "clean"),
        "exit 3": ("error", "exit:3"),
        "raise": ("error", "exception:ValueError"),
        "abort": ("crash", "signal:SIGABRT"),
        "segv": ("crash", "signal:SIGSEGV"),
        "hang-before": ("hang", "timeout"),
        "hang-after": ("hang", "timeout"),
    }
    seen = {}
    for action, expected in cases.items():
        out = tmp_path / action.replace(" ", "_")
        result = _harness(
            "run", "--command", f"{sys.executable} {BEHAVE} {action}", "--runs", "1",
            "--timeout", "2", "--out", str(out), "--cores", "off",
        )
        assert result.returncode == 0, result.stderr
        (record,) = _records(out)
        seen[action] = record
        assert (record["category"], record["outcome"]) == expected, record
    assert seen["raise"]["signature"] == "python-exception:ValueError"
    assert seen["raise"]["phase"] == "unknown"  # no marker before the exception
    assert seen["hang-before"]["signature"] == "hang-during-work"
    assert seen["hang-after"]["signature"] == "hang-at-exit"
    assert seen["hang-after"]["timed_out"] is True


def _wait_for_records(folder: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    results = folder / "results.jsonl"
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} records after {timeout} s")


def test_sigkill_then_resume_gives_exactly_the_plan(tmp_path: Path) -> None:
    out = tmp_path / "c"
    command = f"{sys.executable} -c 'import time; time.sleep(0.05)'"
    proc = subprocess.Popen(
        [*HARNESS, "run", "--command", command, "--runs", "60", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_for_records(out, 10)
    proc.kill()
    proc.wait()
    before = len(_records(out))
    assert 10 <= before < 60
    result = _harness("run", "--resume", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "already recorded" in result.stdout
    ids = [r["run_id"] for r in _records(out)]
    assert len(ids) == 60
    assert sorted(ids) == sorted(f"command/host/{i}" for i in range(60))


def test_sigterm_stops_children_keeps_records_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "t"
    command = f"{sys.executable} -c 'import time; time.sleep(0.3)  # sigterm-probe'"
    proc = subprocess.Popen(
        [*HARNESS, "run", "--command", command, "--runs", "40", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_records(out, 4)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in stdout and "--resume" in stdout
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sigterm-probe" not in ps
    kept = len(_records(out))
    assert 4 <= kept < 40
    result = _harness("run", "--resume", "--out", str(out), "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert len({r["run_id"] for r in _records(out)}) == len(_records(out)) == 40


def test_resume_refuses_a_different_plan(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert _harness("run", "--command", "true", "--runs", "2", "--out", str(out)).returncode == 0
    result = _harness("run", "--resume", "--runs", "5", "--out", str(out))
    assert result.returncode == 2
    assert "runs" in result.stderr
    again = _harness("run", "--command", "true", "--runs", "2", "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_plain_status_lines_when_not_a_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "SHUTDOWN_HARNESS_STATUS_INTERVAL": "0.2"}
    result = subprocess.run(
        [*HARNESS, "run", "--command", f"{sys.executable} {BEHAVE} flaky 0.5",
         "--runs", "40", "--out", str(tmp_path / "p"), "--cores", "off"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0
    status = [line for line in result.stdout.splitlines() if "/40 runs" in line]
    assert status, result.stdout
    assert "/s" in status[0] and "failed" in status[0]
    assert "\x1b[" not in "\n".join(status)  # no terminal control codes in CI logs


def test_oversubscription_and_exit_delay_are_kept_in_every_record(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    result = _harness(
        "run", "--command", "true", "--runs", str(2 * cpus), "--jobs", "2x",
        "--exit-delay", "50ms",
        "--out", str(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stderr
    for record in _records(tmp_path / "o"):
        assert record["load"]["jobs"] == 2 * cpus
        assert record["load"]["jobs_per_cpu"] == 2.0
        assert record["load"]["exit_delay"] == 0.05


def test_list_shows_every_scenario_and_strategy_one_line_each(tmp_path: Path) -> None:
    from shutdown_harness import config, discovery

    done = _harness("list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for info in discovery.builtin():  # piped: whole, on the scenario's own line
        (line,) = [x for x in lines if x.split()[:1] == [info.name]]
        assert line.endswith(info.summary) and f"{info.timeout:g}s" in line
    for name in config.load(None)["strategies"]:
        assert any(x.split()[:1] == [name] for x in lines), name


def test_list_wraps_the_last_column_on_a_terminal() -> None:
    from shutdown_harness.cli import _table

    text = _table("t", ("name", "what"), [("a", "one two three four five six seven")], 31)
    assert text.splitlines() == ["t", "  name  what", "  a     one two three four five",
                                 "        six seven"]
    whole = _table("t", ("name", "what"), [("a", "one two three four five six seven")], None)
    assert whole.splitlines()[-1] == "  a     one two three four five six seven"


# -- services a project declares -----------------------------------------------------------
def _project(tmp_path: Path, web: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        f"[tool.shutdown-harness.strategies.here]\npython = {json.dumps(sys.executable)}\n"
        f"[tool.shutdown-harness.services.web]\n{web}\n"
    )
    (tmp_path / "get_web.py").write_text(
        '"""GETs / from the web service."""\n'
        "import os, urllib.request\nSERVICES = ('web',)\n"
        "def main():\n"
        "    urllib.request.urlopen(f\"http://{os.environ['SHUTDOWN_HARNESS_WEB']}/\").read()\n"
    )
    return tmp_path


WEB = f'command = "{sys.executable} -m http.server {{port}} --bind 127.0.0.1"\nready = "http"'


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ('ready = "http"', "missing command"),
        ('command = "srv --port {port} --log {logdir}"', "unknown placeholder {logdir}"),
        ('command = "srv {port}"\ntimeout = "soon"', "timeout must be a positive number"),
    ],
)
def test_a_bad_declaration_is_exit_2_in_one_line_before_any_run(
    tmp_path: Path, web: str, message: str
) -> None:
    folder = _project(tmp_path, web)
    result = _harness("run", "--scenario", "get_web.py", "--strategy", "here", cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not list(folder.glob("reports/*/results.jsonl"))


def test_a_declared_service_is_listed_started_or_taken_from_its_option(tmp_path: Path) -> None:
    folder = _project(tmp_path, WEB)
    listed = _harness("list", cwd=folder)
    assert listed.returncode == 0 and "SHUTDOWN_HARNESS_WEB" in listed.stdout
    run = ("run", "--scenario", "get_web.py", "--strategy", "here", "--runs", "2", "--cores", "off")
    started = _harness(*run, "--out", "a", cwd=folder)
    assert started.returncode == 0, started.stderr
    assert "web SimpleHTTP" in started.stdout and "ready at 127.0.0.1:" in started.stdout
    assert [r["category"] for r in _records(folder / "a")] == ["clean", "clean"]
    closed = _harness(*run, "--out", "b", "--web", "127.0.0.1:1", cwd=folder)
    assert closed.returncode == 2 and "--web 127.0.0.1:1: not usable" in closed.stderr
    wrong = _harness(*run, "--out", "c", "--web", "container", cwd=folder)
    assert wrong.returncode == 2 and "no container image" in wrong.stderr
# -- issue 14: bad values, one harness per folder, merging shards, a full disk -------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--timeout", "nan"], "finite"),
        (["--timeout", "inf"], "finite"),
        (["--timeout", "-1"], "more than 0"),
        (["--command", "'unbalanced"], "No closing quotation"),
        (["--command", "no_such_program --flag"], "no program 'no_such_program'"),
        (["--command", "./not/here.py"], "no program './not/here.py'"),
    ],
)
def test_bad_run_values_are_refused_before_any_run(
    tmp_path: Path, args: list[str], message: str
) -> None:
    if "--command" not in args:
        args = [*args, "--command", "true"]
    result = _harness("run", *args, "--runs", "2", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists()  # nothing ran, no folder


@pytest.mark.parametrize(
    "table, args, message",
    [
        ("strategies = 5", [], "strategies must be a table"),
        ("default-scenarios = 7", ["--strategy", "etcd-0.5.1"], "default-scenarios = 7"),
        ('[presets.x]\nruns = "abc"', ["--preset", "x", "--command", "true"],
         "runs = 'abc': not a whole number"),
        ("[presets.x]\ntimeout = nan", ["--preset", "x", "--command", "true"], "finite"),
        ("[gates]\n'*' = { max_upper = 2 }", ["--command", "true"], "is a fraction"),
        ("[gates]\n'*' = { maximum = 0.1 }", ["--command", "true"], "unknown key"),
    ],
)
def test_bad_configuration_is_refused_before_any_run(
    tmp_path: Path, table: str, args: list[str], message: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.shutdown-harness]\n{table}\n".replace(
        "[presets", "[tool.shutdown-harness.presets").replace(
        "[gates", "[tool.shutdown-harness.gates"))
    result = _harness("run", *args, "--runs", "2", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.stderr
    assert not (tmp_path / "c" / "results.jsonl").exists()


def test_a_campaign_file_without_a_plan_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "campaign.json").write_text('{"format": 1}')
    (tmp_path / "c" / "results.jsonl").write_text("")
    folder = str(tmp_path / "c")
    for args in (["report", folder], ["run", "--resume", "--out", folder]):
        result = _harness(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "has no plan" in line


def test_a_second_harness_on_a_folder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    first = subprocess.Popen(
        [*HARNESS, "run", "--command", "sleep 2", "--runs", "8", "--jobs", "1", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "campaign.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = _harness("run", "--resume", "--out", str(out))
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert second.returncode == 2, second.stdout
    (line,) = second.stderr.strip().splitlines()
    assert f"in use by another shutdown-harness (pid {first.pid})" in line
    records = _records(out) if (out / "results.jsonl").exists() else []
    assert len(records) == len({r["run_id"] for r in records}) < 8


def test_shards_started_with_the_same_arguments_merge(tmp_path: Path) -> None:
    command = f"{sys.executable} -c pass"
    seeds = []
    for i in (1, 2, 3):
        out = tmp_path / f"s{i}"
        result = _harness("run", "--command", command, "--runs", "6", "--shard", f"{i}/3",
                          "--out", str(out), "--cores", "off")
        assert result.returncode == 0, result.stderr
        seeds.append(json.loads((out / "campaign.json").read_text())["plan"]["seed"])
    assert len(set(seeds)) == 1
    merged = _harness("merge", *(str(tmp_path / f"s{i}") for i in (1, 2, 3)),
                      "--out", str(tmp_path / "all"))
    assert merged.returncode == 0, merged.stderr
    assert len({r["run_id"] for r in _records(tmp_path / "all")}) == 6
    other = _harness("run", "--command", command, "--runs", "7", "--out", str(tmp_path / "o"),
                     "--cores", "off")
    assert json.loads((tmp_path / "o" / "campaign.json").read_text())["plan"]["seed"] != seeds[0]
    assert other.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 256 KiB tmpfs (needs root, or a user namespace that allows mounting)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_one_line_and_the_folder_stays_readable(
    tmp_path: Path, tiny_disk: Path
) -> None:
    out = tiny_disk / "c"
    # Each run fails with 2000 characters of stderr: its record is ~3 KB, 256 KiB fill up.
    child = f"{sys.executable} -c \"import sys; sys.stderr.write('x' * 2000); sys.exit(3)\""
    args = ["--command", child, "--runs", "400", "--jobs", "2", "--cores", "off",
            "--keep-artifacts", "0"]
    result = _harness("run", *args, "--out", str(out))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "no space left" in line and "Traceback" not in result.stderr
    kept = len([r for r in iter_records_of(out)])
    assert 0 < kept < 400
    again = _harness("run", "--resume", "--out", str(out))
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    (line,) = again.stderr.strip().splitlines()
    assert "no space left" in line
    report = _harness("report", str(out), "--format", "json")
    assert report.returncode in (0, 1), report.stderr
    merged = _harness("merge", str(out), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    # With room again, --resume finishes the plan: every run once.
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)
    done = _harness("run", "--resume", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    ids = [r["run_id"] for r in _records(out)]
    assert len(ids) == len(set(ids)) == 400


def iter_records_of(folder: Path) -> list[dict]:
    from shutdown_harness.store import iter_records

    return list(iter_records(folder))


def test_list_never_cuts_a_name_however_narrow() -> None:
    from shutdown_harness.cli import _table

    name = "lease_keepalive_at_exit_with_a_long_name"
    text = _table("t", ("name", "what"), [(name, "one two three four")], 12)
    assert any(line.split()[:1] == [name] for line in text.splitlines())


def test_a_gate_that_cannot_pass_is_said_before_any_run(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.shutdown-harness.gates]\nhost = { max_upper = 0.05 }\n")
    result = _harness("run", "--command", "true", "--runs", "5", "--out", str(tmp_path / "g"),
                      cwd=tmp_path)
    warning = ("warning: gate max_upper = 0.05 (strategy host) cannot pass for command / host"
               " with 5 runs: it needs 73 runs without a failure")
    assert warning in result.stdout, result.stdout
    assert result.stdout.index(warning) < result.stdout.index("runs to do")
    assert result.returncode == 1  # and indeed it did not pass


def test_warm_from_a_preset(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.shutdown-harness.strategies.host]\n"
        f"python = {json.dumps(sys.executable)}\n"
        "[tool.shutdown-harness.presets.quick]\n"
        "warm = true\nruns = 24\n"
    )
    scenario = Path(__file__).parent / "children" / "warm_behave.py"
    out = tmp_path / "w"
    result = _harness("run", "--preset", "quick", "--scenario", str(scenario), "--strategy",
                      "host", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warm start: 1 fork servers ready" in result.stdout
    records = _records(out)
    assert sorted(r["start"] for r in records) == ["cold"] * 20 + ["warm"] * 4
    assert json.loads((out / "campaign.json").read_text())["plan"]["warm"] is True
    assert "Fidelity" in result.stdout and "warm 0/4" in result.stdout


def test_list_into_a_closed_pipe_ends_quietly() -> None:
    """`shutdown-harness list | head -1`: the reader leaves early; no traceback, exit 141."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE
    done = subprocess.run([*HARNESS, "list"], stdout=writer, stderr=subprocess.PIPE, text=True,
                          timeout=60)
    os.close(writer)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_bad_strategy_is_refused_before_any_service_starts(tmp_path: Path) -> None:
    # Nothing listens on port 1: had the etcd service been set up first, the error would be
    # that etcd is unreachable.
    done = _harness("run", "--scenario", "sanity", "--strategy", "no-such-strategy",
                    "--etcd", "127.0.0.1:1", "--runs", "2", "--out", str(tmp_path / "c"),
                    cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "unknown strategy 'no-such-strategy'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [
    ["run", "--command", "true", "--runs", "3", "--jobs", "2", "--exit-delay", "200ms",
     "--cores", "off", "--out", "x"],
    ["run", "--scenario", "a", "--scenario", "b", "--strategy", "s", "--etcd", "embedded"],
    ["report", "dir", "--format", "json", "-o", "f"],
    ["evidence", "dir", "--out", "o", "--strategy", "s"],
    ["merge", "a", "b", "--out", "o"],
    ["sweep", "pkg", "--scenario", "s", "--versions", "0.3.0,0.4.1", "--runs", "5"],
    ["bisect", "pkg", "--scenario", "s", "--bad", "1", "--good", "2", "--batch", "4"],
    ["list"], ["doctor"], ["classify", "f.json"], ["compare", "dir"],
])
def test_a_parser_of_one_subcommand_parses_as_the_whole_one(argv: list[str]) -> None:
    whole = build_parser().parse_args(argv)
    assert build_parser(only=argv[0]).parse_args(argv) == whole
    assert whole.command_name == argv[0]


@pytest.mark.parametrize("argv", [["list"], ["run", "--command", "true", "--runs", "1"]])
def test_the_collector_is_off_while_modules_load_and_on_for_the_work(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    if argv[0] == "run":
        def fake_run(plan: object, options: object) -> SimpleNamespace:
            seen.append(gc.isenabled())
            return SimpleNamespace(code=0)

        monkeypatch.setattr(workflow, "run", fake_run)
    real_import = builtins.__import__

    def watching_import(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("shutdown_harness"):
            seen.append(gc.isenabled())
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(sys, "argv", ["shutdown-harness", *argv, "--out", str(tmp_path / "c")]
                        if argv[0] == "run" else ["shutdown-harness", *argv])
    monkeypatch.setattr(builtins, "__import__", watching_import)
    try:
        assert entry.main() == 0
        on = gc.isenabled()
    finally:
        monkeypatch.setattr(builtins, "__import__", real_import)
        gc.enable()
        gc.unfreeze()  # `run` froze this test process's objects
    assert seen and seen[0] is False  # the first import, of the cli, with the collector off
    assert on
    if argv[0] == "run":
        assert seen[-1] is True  # the campaign itself runs with it on
