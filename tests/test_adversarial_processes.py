"""Adversarial process events: ninja killed alone, stragglers, stopped and silent workers, fork().

A build's processes (the build worker, ninja, the compilers) must never outlive the build: one left
running could write an object compiled from an old source into a later build. Each test here breaks
one process in one way and checks that the build fails or recovers, that nothing of it is left
running, and that a later load returns the current source's value.

fork(): a process forked while another thread builds, loads, or waits for the build lock must be able
to load the module itself (no in-process lock inherited in the locked state).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cpp_extension_tools._build import worker as _build_worker
from cpp_extension_tools._build import worker_support as _worker_support
from tests.conftest import CompilerLog, last_json, write_module
from tests.test_reliability_processes import Proc, _alive, _command_name, _kill_tree, _stat, _tree

NAME = "adv_ext"
LOAD = """
import json, sys
import cpp_extension_tools as c
try:
    m = c.cached_load_torch_cpp_extension("NAME", json.loads(sys.argv[1]))
    print(json.dumps({"value": m.answer()}))
except c.BuildError as e:
    print(json.dumps({"error": str(e)}))
""".replace("NAME", NAME)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _named(root: int, name: str) -> list[Proc]:
    return [proc for proc in _tree(root) if _command_name(proc[0]) == name]


def _worker_of(requester: int) -> Proc | None:
    """The build worker: the requester's child that leads a session of its own."""
    for pid, start in _tree(requester):
        stat = _stat(pid)
        if stat is not None and stat[0] == requester and os.getsid(pid) == pid:
            return pid, start
    return None


class Requester:
    """A process that loads NAME from ``sources``; its report is {"value": ...} or {"error": ...}."""

    def __init__(self, tmp_path: Path, sources: list[str], env: dict[str, str] | None = None) -> None:
        script = tmp_path / "load.py"
        script.write_text(LOAD)
        self.process = subprocess.Popen([sys.executable, str(script), json.dumps(sources)], text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**os.environ, **(env or {})})

    def report(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(self.process.pid)
            self.process.communicate()
            raise AssertionError(f"the requester did not finish within {timeout} s") from None
        report = last_json(out)
        assert isinstance(report, dict), err
        return report


def _load(tmp_path: Path, sources: list[str], timeout: float = 120) -> dict[str, Any]:
    return Requester(tmp_path, sources).report(timeout)


def _all_dead(procs: set[Proc], grace: float = 5.0) -> list[str]:
    """The processes of ``procs`` still alive after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(proc) for proc in procs):
        time.sleep(0.05)
    return [f"{pid} {_command_name(pid)}" for pid, start in procs if _alive((pid, start))]


def _compiling(compilers: CompilerLog, before: int) -> Callable[[], bool]:
    return lambda: len(compilers.compiles()) > before


# -- ninja killed alone ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ninja_killed_alone_fails_the_build_and_takes_its_compilers(tmp_path: Path, cache_root: Path,
                                                                     compilers: CompilerLog) -> None:
    src = tmp_path / "src"
    assert _load(tmp_path, write_module(src, functions={"answer": 1, "other": 5})) == {"value": 1}
    sources = write_module(src, functions={"answer": 2, "other": 6})  # the build folder holds the old .so
    before = len(compilers.compiles())
    requester = Requester(tmp_path, sources, {"COMPILE_DELAY": "30"})
    _wait(_compiling(compilers, before), 60, "the compiles")
    _wait(lambda: bool(_named(requester.process.pid, "ninja")), 30, "ninja")
    doomed = _tree(requester.process.pid) - {(requester.process.pid, _stat(requester.process.pid)[2])}  # type: ignore[index]
    for proc in _named(requester.process.pid, "ninja"):
        os.kill(proc[0], signal.SIGKILL)
    # The compiles (30 s each) die with ninja, at once; then the build fails naming the kill, or is
    # built again from scratch: never the old binary.
    assert _all_dead(doomed) == []
    report = requester.report(timeout=120)
    assert report == {"value": 2} or "ninja was killed by signal 9" in report.get("error", ""), report
    assert _load(tmp_path, sources) == {"value": 2}


def _ninja_spec(build_directory: Path, name: str = "fake") -> Path:
    spec = build_directory / "spec.json"
    spec.write_text(json.dumps({"name": name, "build_directory": str(build_directory), "compilers": {},
                                "ninja_only": True}))
    return spec


def _run_worker(build_directory: Path, timeout: float = 60,
                during: Callable[[subprocess.Popen[bytes]], None] | None = None) -> tuple[dict[str, Any], str]:
    """Run the build worker as the library does (a session of its own); its result and output."""
    result_path = build_directory / "result.json"
    worker = subprocess.Popen([sys.executable, "-S", _build_worker.__file__, str(_ninja_spec(build_directory)),
                               str(result_path), str(os.getpid())], cwd=build_directory, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if during is not None:
            during(worker)
        out, _ = worker.communicate(timeout=timeout)
    finally:
        _kill_tree(worker.pid)
        worker.wait()
    return json.loads(result_path.read_text()), out.decode(errors="replace")


def _write_ninja_file(folder: Path, command: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build.ninja").write_text(f"rule step\n  command = {command}\nbuild out.o: step\ndefault out.o\n")


def test_worker_reports_ninja_killed_by_a_signal_and_kills_its_commands(tmp_path: Path) -> None:
    folder = tmp_path / "build"
    _write_ninja_file(folder, "sleep 60 && touch out.o")
    (folder / "fake.so").write_text("a stale binary of an earlier build")
    commands: set[Proc] = set()

    def kill_ninja(worker: subprocess.Popen[bytes]) -> None:
        _wait(lambda: bool(_named(worker.pid, "sleep")), 30, "the command")
        commands.update(_named(worker.pid, "sleep"))
        for proc in _named(worker.pid, "ninja"):
            os.kill(proc[0], signal.SIGKILL)

    started = time.monotonic()
    result, output = _run_worker(folder, during=kill_ninja)
    assert result["ok"] is False
    assert "ninja was killed by signal 9 (SIGKILL)" in result["error"], result
    assert time.monotonic() - started < 30  # the worker did not wait for the orphaned command
    assert _all_dead(commands) == [], output
    assert not (folder / "out.o").exists()
    assert not (folder / _worker_support.SESSION_FILE).exists()


def test_a_command_left_running_after_ninja_exits_is_killed(tmp_path: Path) -> None:
    """A compiler that forks a helper and exits: ninja succeeds, the helper must not write later."""
    folder = tmp_path / "build"
    _write_ninja_file(folder, "(sleep 3 && echo stale > out.o) > /dev/null 2>&1 & echo fresh > out.o")
    result, output = _run_worker(folder)
    assert result["ok"] is True, result
    assert "still running after ninja ended" in output
    time.sleep(4)
    assert (folder / "out.o").read_text() == "fresh\n"


# -- leftovers of an earlier worker's session --------------------------------------------------------------


def _foreign_session(cwd: Path) -> subprocess.Popen[bytes]:
    """A session of its own (as a worker's), working in ``cwd``, with a child (as ninja's compilers)."""
    process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], cwd=cwd, start_new_session=True)
    _wait(lambda: len(_tree(process.pid)) == 3, 10, "the session's processes")
    return process


def _record(folder: Path, process: subprocess.Popen[bytes], **changes: Any) -> None:
    stat = _stat(process.pid)
    assert stat is not None
    record = {"session": process.pid, "start": stat[2], **_worker_support._machine_identity(), **changes}
    (folder / _worker_support.SESSION_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("case", ["recorded", "leader_gone", "pid_reused", "other_boot", "elsewhere"])
def test_next_worker_kills_what_an_earlier_session_left_in_its_folder(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "build"
    folder.mkdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    process = _foreign_session(other if case == "elsewhere" else folder)
    members = _tree(process.pid)
    try:
        changes = {"pid_reused": {"start": 1}, "other_boot": {"boot": "another-boot"}}.get(case, {})
        _record(folder, process, **changes)
        if case == "leader_gone":  # the worker was SIGKILLed: its compilers live on in its session
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        killed = _worker_support.claim_build_folder(str(folder))
        survivors = [proc for proc in members if _alive(proc)]
        if case in ("recorded", "leader_gone"):
            assert _all_dead(members) == []
            assert len(killed) == len(members) - (case == "leader_gone")
        else:
            assert killed == [] and len(survivors) == len(members)
        assert not (folder / _worker_support.SESSION_FILE).exists()  # read once; this process leads no session
    finally:
        _kill_tree(process.pid)
        process.wait()


# -- stopped, killed and silent workers ---------------------------------------------------------------------


@pytest.mark.slow
def test_stopped_worker_resumed_finishes_the_build(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 3})
    requester = Requester(tmp_path, sources, {"COMPILE_DELAY": "1"})
    _wait(lambda: _worker_of(requester.process.pid) is not None, 60, "the build worker")
    worker = _worker_of(requester.process.pid)
    assert worker is not None
    os.kill(worker[0], signal.SIGSTOP)
    time.sleep(3)
    os.kill(worker[0], signal.SIGCONT)
    assert requester.report(timeout=120) == {"value": 3}


@pytest.mark.slow
def test_stopped_build_with_its_requester_killed_is_cleared_by_the_next_build(
        tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    """Nothing of a stopped build dies with its requester (PR_SET_PDEATHSIG's SIGTERM waits for SIGCONT)."""
    src = tmp_path / "src"
    requester = Requester(tmp_path, write_module(src, functions={"answer": 4}), {"COMPILE_DELAY": "30"})
    _wait(_compiling(compilers, 0), 60, "the compiles")
    worker = _worker_of(requester.process.pid)
    assert worker is not None
    stopped = _tree(worker[0])
    for proc in stopped:
        os.kill(proc[0], signal.SIGSTOP)
    requester.process.kill()
    requester.process.communicate()
    sources = write_module(src, functions={"answer": 5})
    try:
        assert _load(tmp_path, sources) == {"value": 5}
        assert _all_dead(stopped) == []
    finally:
        for proc in stopped:
            if _alive(proc):
                os.kill(proc[0], signal.SIGKILL)


@pytest.mark.slow
def test_worker_killed_alone_fails_the_build_and_leaves_nothing_running(
        tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    src = tmp_path / "src"
    requester = Requester(tmp_path, write_module(src, functions={"answer": 6}), {"COMPILE_DELAY": "3"})
    _wait(_compiling(compilers, 0), 60, "the compiles")
    worker = _worker_of(requester.process.pid)
    assert worker is not None
    session = _tree(worker[0])
    os.kill(worker[0], signal.SIGKILL)
    report = requester.report(timeout=60)
    assert "the build worker ended without a result (killed by signal 9)" in report.get("error", ""), report
    assert _all_dead(session, grace=1.0) == []  # all gone once the requester returned
    assert _load(tmp_path, write_module(src, functions={"answer": 7})) == {"value": 7}


FAKE_WORKER = """
import os, sys
from cpp_extension_tools._build import run as _builder
_builder._WORKER = sys.argv.pop(2)  # a worker that exits 0 without writing its result
exec(open(sys.argv.pop(1)).read())
"""


@pytest.mark.slow
def test_worker_exiting_0_without_a_result_is_a_failure_not_the_old_binary(
        tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    src = tmp_path / "src"
    assert _load(tmp_path, write_module(src, functions={"answer": 8})) == {"value": 8}
    result_files = list((cache_root / NAME / "builds").glob("*/cpp_extension_tools_result.json"))
    assert result_files  # an earlier build's result ({"ok": true}), with its .so beside it
    sources = write_module(src, functions={"answer": 9})
    fake = tmp_path / "fake_worker.py"
    fake.write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "load.py").write_text(LOAD)
    (tmp_path / "with_fake.py").write_text(FAKE_WORKER)
    out = subprocess.run([sys.executable, str(tmp_path / "with_fake.py"), str(tmp_path / "load.py"), str(fake),
                          json.dumps(sources)], capture_output=True, text=True, timeout=120)
    report = last_json(out.stdout)
    assert isinstance(report, dict), out.stderr
    assert "the build worker ended without a result (exit status 0)" in report.get("error", ""), report
    assert _load(tmp_path, sources) == {"value": 9}


# -- fork() while another thread is in the library -------------------------------------------------------------

FORK_TIMEOUT = 60.0

# The other thread builds (COMPILE_DELAY), loads in a loop (warm), or waits for the build lock that the
# test holds (lock_wait), while the main thread forks; each child loads the module itself, bounded by
# FORK_TIMEOUT. The parent prints the children's reports and the other thread's values.
FORK_SCRIPT = """
import json, logging, os, sys, threading, time, traceback, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running: on purpose
import torch
import cpp_extension_tools as c

name, sources, mode, calls_log, marker = sys.argv[1], json.loads(sys.argv[2]), *sys.argv[3:6]
forks, timeout = int(sys.argv[6]), float(sys.argv[7])
waiting = threading.Event()
stop = threading.Event()
values = []


class Waiting(logging.Handler):
    def emit(self, record):
        if "waiting for the build lock" in record.getMessage():
            waiting.set()


logging.getLogger("cpp_extension_tools").addHandler(Waiting())
logging.getLogger("cpp_extension_tools").setLevel(logging.INFO)


def load():
    return c.cached_load_torch_cpp_extension(name, sources).answer()


def other():
    try:
        values.append(load())
        while mode == "warm" and not stop.is_set():
            values.append(load())
    except BaseException as e:
        values.append(repr(e))


def compiling():
    return os.path.exists(calls_log) and " -c " in open(calls_log).read()


def child():
    status = 1
    try:
        print(json.dumps({"child": os.getpid(), "value": load()}), flush=True)
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(status)


def wait_child(pid):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hang"


if mode == "warm":
    load()
thread = threading.Thread(target=other, daemon=True)
thread.start()
condition = {"build": compiling, "lock_wait": waiting.is_set, "warm": lambda: len(values) > 10}[mode]
while not condition():
    time.sleep(0.01)
statuses = []
for i in range(forks):
    pid = os.fork()
    if pid == 0:
        child()
    open(marker, "a").write("forked\\n")
    statuses.append(wait_child(pid))
    time.sleep(0.01)
stop.set()
thread.join(timeout)
print(json.dumps({"statuses": statuses, "thread": sorted(set(map(str, values))), "alive": thread.is_alive()}))
"""


def _fork_run(tmp_path: Path, compilers: CompilerLog, mode: str, forks: int,
              during: Callable[[Path], None] | None = None) -> tuple[dict[str, Any], list[Any]]:
    sources = write_module(tmp_path / "src", functions={"answer": 11})
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    marker = tmp_path / "forked"
    process = subprocess.Popen([sys.executable, str(script), NAME, json.dumps(sources), mode, str(compilers.log),
                                str(marker), str(forks), str(FORK_TIMEOUT)], text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "COMPILE_DELAY": "2",
                                                            "CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL": "0.2"})
    try:
        if during is not None:
            during(marker)
        out, err = process.communicate(timeout=FORK_TIMEOUT * forks + 120)
    finally:
        if process.poll() is None:
            _kill_tree(process.pid)
            process.communicate()
    assert process.returncode == 0, err[-3000:]
    children = [json.loads(line) for line in out.splitlines() if line.startswith('{"child"')]
    summary = last_json(out)
    assert isinstance(summary, dict), err[-3000:]
    return summary, [child["value"] for child in children]


@pytest.mark.slow
def test_fork_while_another_thread_builds(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    summary, values = _fork_run(tmp_path, compilers, "build", forks=1)
    assert summary == {"statuses": [0], "thread": ["11"], "alive": False}
    assert values == [11]
    assert len(compilers.links()) == 1  # the child waited for the thread's build and loaded it


@pytest.mark.slow
def test_fork_while_another_thread_loads_warm(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    summary, values = _fork_run(tmp_path, compilers, "warm", forks=20)
    assert summary == {"statuses": [0] * 20, "thread": ["11"], "alive": False}
    assert values == [11] * 20


@pytest.mark.slow
def test_fork_while_another_thread_waits_for_the_build_lock(tmp_path: Path, cache_root: Path,
                                                            compilers: CompilerLog) -> None:
    import filelock

    module_folder = cache_root / NAME
    for private in (cache_root, module_folder):  # as the library makes them (it refuses shared folders)
        private.mkdir(mode=0o700, exist_ok=True)
    holder = filelock.FileLock(str(module_folder / ".lock"))
    holder.acquire()

    def release_once_forked(marker: Path) -> None:
        try:
            _wait(marker.exists, 120, "the fork")
            time.sleep(1)  # the child is now waiting too
        finally:
            holder.release()

    summary, values = _fork_run(tmp_path, compilers, "lock_wait", forks=1, during=release_once_forked)
    assert summary == {"statuses": [0], "thread": ["11"], "alive": False}
    assert values == [11]
