"""Reliability in real subprocesses: builds killed at random moments, and crowds of concurrent loaders.

Killed builds: one cache root for all trials, each trial a new constant in the module's source, so
leftovers of earlier (killed) trials accumulate as they would in real life and a stale or foreign
binary shows up as a wrong value. The building process is SIGKILLed before compiling (start-up,
waiting for the lock, holding it), while compiling, while linking and while publishing, either alone
(the build worker, ninja and the compilers must then die by themselves) or together with all its
descendants. A fresh process must then load the trial's module, within a bounded time.

Crowds: many processes with several threads each load on a cold cache at once; each configuration
is built exactly once and every caller gets its own configuration's module.

Compile counts come from the logging compiler wrappers (conftest.CompilerLog), never from the
library's log. Phases are detected from the CompilerLog and from markers written by this file's own
instrumentation (a link-delaying CXX wrapper, and wrappers around the store's publication functions
installed inside the killed process only).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CompilerLog, last_json, write_module

# -- process trees -------------------------------------------------------------------------------------

Proc = tuple[int, int]  # (pid, start time in clock ticks): a pid alone may be reused


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "?"


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _tree(root: int) -> set[Proc]:
    """``root`` and all its living descendants."""
    children: dict[int, list[Proc]] = {}
    root_stat = None
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is None:
            continue
        children.setdefault(stat[0], []).append((pid, stat[2]))
        if pid == root:
            root_stat = stat
    if root_stat is None:
        return set()
    found: set[Proc] = set()
    pending = [(root, root_stat[2])]
    while pending:
        proc = pending.pop()
        found.add(proc)
        pending.extend(children.get(proc[0], []))
    return found


def _alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1] and stat[1] not in ("Z", "X")


def _signal(proc: Proc, signum: int) -> None:
    if _alive(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc[0], signum)


def _kill_tree(root: int) -> set[Proc]:
    """SIGKILL ``root`` and all its descendants; stopped first, so none can fork away meanwhile."""
    stopped: set[Proc] = set()
    while True:
        new = _tree(root) - stopped
        if not new:
            break
        for proc in new:
            _signal(proc, signal.SIGSTOP)
        stopped |= new
    for proc in stopped:
        _signal(proc, signal.SIGKILL)
    return stopped


def _processes_under(folder: str) -> list[str]:
    """Living processes whose command line or working directory mentions ``folder``."""
    found = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        stat = _stat(pid)
        if stat is None or stat[1] in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if folder in cmdline or cwd.startswith(folder):
            found.append(f"{pid} (cwd {cwd}): {cmdline[:200]}")
    return found


# -- killed builds ---------------------------------------------------------------------------------------

KILL_NAME = "kill_ext"
SEED = 20240611
MODES = ("requester", "tree")
# Trials per phase, half of them per kill mode. Publication, where a torn write would be loaded, gets
# the most: one trial per kill point in PUBLISH_TARGETS.
PHASE_TRIALS = {"startup": 2, "lock_wait": 2, "lock_held": 2, "compiling": 4, "linking": 4, "publishing": 10}
RECOVERY_TIMEOUT = 180.0
TREE_GRACE = 5.0  # seconds after the kill by which every process of the killed tree must be gone
PHASE_TIMEOUT = 90.0
COMPILE_TARGETS = ("compile:delay", "compile:cc1")  # in the wrapper's COMPILE_DELAY sleep, or gcc's cc1 running
LINK_TARGETS = ("link:before", "link:running", "link:after")
# Publication stages the binary (copy) and manifest in a temporary folder, renames it into place
# (install), then updates the latest-* hint. "fsynced": the temporary file is complete, not yet renamed.
PUBLISH_TARGETS = ("copy:before", "copy:fsynced", "copy:after", "manifest:before", "manifest:fsynced",
                   "install:before", "install:after", "latest:before", "latest:fsynced", "latest:after")

# The killed process and the recovering one run this. With PHASE_MARKERS set, the store's publication
# functions (in this process only) append a marker to that file and sleep PUBLISH_DELAY seconds before
# each step, after its fsync (the temporary file is complete, not yet renamed) and after it.
KILL_SCRIPT = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
import cpp_extension_tools as c
from cpp_extension_tools._cache import fs as _fs, store as _store

MARKERS = os.environ.get("PHASE_MARKERS")
DELAY = float(os.environ.get("PUBLISH_DELAY") or 0)


def mark(what):
    with open(MARKERS, "a") as f:
        f.write(what + "\\n")
    time.sleep(DELAY)


def instrumented(label, call):
    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        mark(label + ":fsynced")

    mark(label + ":before")
    os.fsync = fsync
    try:
        call()
    finally:
        os.fsync = real_fsync
    mark(label + ":after")


if MARKERS:
    # The store imports these from _cache.fs where it writes (not at its import): patched there, and
    # instrumented only when the store calls them.
    real_copy, real_write = _fs.atomic_copy, _fs.atomic_write_bytes

    def atomic_copy(source, destination, *args, **kwargs):
        instrumented("copy", lambda: real_copy(source, destination, *args, **kwargs))

    def atomic_write_bytes(path, data, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") != _store.__name__:
            return real_write(path, data, *args, **kwargs)
        base = os.path.basename(path)
        label = "manifest" if base == "manifest.json" else base.split("-")[0]
        instrumented(label, lambda: real_write(path, data, *args, **kwargs))

    _fs.atomic_copy, _fs.atomic_write_bytes = atomic_copy, atomic_write_bytes
    if hasattr(_store, "_install_folder"):  # renames the staged artifact folder into place
        real_install = _store._install_folder

        def install_folder(*args, **kwargs):
            instrumented("install", lambda: real_install(*args, **kwargs))

        _store._install_folder = install_folder

started = time.monotonic()
m = c.cached_load_torch_cpp_extension("NAME", json.loads(sys.argv[1]))
print(json.dumps({"value": m.answer(), "file": m.__file__, "seconds": time.monotonic() - started}))
""".replace("NAME", KILL_NAME)


def _slow_link_wrapper(compilers: CompilerLog) -> str:
    """A CXX that, with LINK_DELAY set, marks and sleeps before and after each link (through the logger)."""
    path = compilers.folder / "cxx-slow-link"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case " $* " in
        *" -shared "*)
            if [ -n "$LINK_DELAY" ]; then
                echo link:before >> "$PHASE_MARKERS"
                sleep "$LINK_DELAY"
                "{compilers.cxx}" "$@"
                status=$?
                echo link:after >> "$PHASE_MARKERS"
                sleep "$LINK_DELAY"
                exit $status
            fi ;;
        esac
        exec "{compilers.cxx}" "$@"
        """))
    path.chmod(0o755)
    return str(path)


@dataclass
class Trial:
    number: int
    phase: str
    mode: str
    target: str = ""
    offset_s: float = 0.0
    expected: int = 0
    reached: bool = False
    killed_while_running: bool = False
    observed: str = ""
    killed_processes: list[str] = field(default_factory=list)  # command names of the killed tree
    tree_gone_s: float | None = None  # seconds from the kill until no process of the tree was alive
    recovery_s: float = 0.0
    hang: bool = False
    value: Any = None
    recovery_error: str = ""
    survivors: list[str] = field(default_factory=list)  # processes of the killed tree still alive
    strays: list[str] = field(default_factory=list)  # any process then running in this test's folders


class _Victim:
    """The process that is killed, and what can be seen of its progress."""

    def __init__(self, folder: Path, script: Path, sources: list[str], env: dict[str, str],
                 compilers: CompilerLog, owner_path: Path) -> None:
        self.markers = folder / "markers"
        self.stderr_path = folder / "victim.stderr"
        self.compilers = compilers
        self.owner_path = owner_path
        self.first_call = len(compilers.calls())
        self.started = time.monotonic()
        with open(folder / "victim.stdout", "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, str(script), json.dumps(sources)], stdout=out,
                                            stderr=err, env={**os.environ, **env})

    def calls(self) -> list[str]:
        return self.compilers.calls()[self.first_call:]

    def compiled(self) -> bool:
        return any(" -c " in f" {line} " for line in self.calls())

    def linked(self) -> bool:
        return any(" -shared" in line and " -c " not in line for line in self.calls())

    def marks(self) -> list[str]:
        return self.markers.read_text().split() if self.markers.exists() else []

    def holds_lock(self) -> bool:
        try:
            return int(json.loads(self.owner_path.read_text())["pid"]) == self.process.pid
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def waits_for_lock(self) -> bool:
        return "waiting for the build lock" in self.stderr_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + PHASE_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if condition():
                return True
            time.sleep(0.02)
        return False

    def observe(self) -> str:
        """Where the build is, from the compiler log and the markers."""
        marks = self.marks()
        publishing = [m for m in marks if not m.startswith("link:")]
        if publishing:
            return "publishing:" + publishing[-1]
        links = [m for m in marks if m.startswith("link:")]
        if "link:after" in links:
            return "linking:link:after"
        if self.linked():
            return "linking:link:running"
        if links:
            return "linking:" + links[-1]
        if self.compiled():
            return "compiling"
        if self.holds_lock():
            return "lock_held"
        if self.waits_for_lock():
            return "lock_wait"
        return "startup"


def _reach(victim: _Victim, phase: str, target: str, offset: float) -> bool:
    """Wait until ``victim`` is in ``phase`` (at ``target``), then ``offset`` seconds more."""
    if phase == "startup":
        reached = victim.wait_for(lambda: time.monotonic() - victim.started >= offset)
        return reached and not victim.compiled()
    if phase == "lock_wait":
        reached = victim.wait_for(victim.waits_for_lock)
    elif phase == "lock_held":
        reached = victim.wait_for(victim.holds_lock)
    elif target == "compile:cc1":  # the compiler proper runs for a fraction of a second: at once
        return victim.wait_for(lambda: "cc1" in {_command_name(pid) for pid, _ in _tree(victim.process.pid)})
    elif phase == "compiling":
        reached = victim.wait_for(victim.compiled)
    elif target == "link:running":
        return victim.wait_for(victim.linked)  # the linker runs for a fraction of a second: at once
    else:
        reached = victim.wait_for(lambda: target in victim.marks())
    time.sleep(offset)
    return reached


def _schedule(rng: random.Random) -> list[tuple[str, str, str, float]]:
    """(phase, kill mode, target, offset) per trial, in a random order; the same for the same seed."""
    targets = {"compiling": list(COMPILE_TARGETS), "linking": list(LINK_TARGETS),
               "publishing": list(PUBLISH_TARGETS)}
    for choices in targets.values():
        rng.shuffle(choices)  # cycled, so few trials still reach different kill points
    # Seconds to wait once the phase (target) is reached; unused for compile:cc1 and link:running.
    # Each is below the delay that holds the victim there: COMPILE_DELAY 2, LINK_DELAY 1, PUBLISH_DELAY.
    offsets = {"startup": (0.05, 2.0), "lock_wait": (0.0, 1.0), "lock_held": (0.0, 1.5),
               "compiling": (0.0, 1.8), "linking": (0.0, 0.8), "publishing": (0.0, 0.3)}
    schedule = []
    for phase, count in PHASE_TRIALS.items():
        for i in range(count):
            choices = targets.get(phase, [""])
            schedule.append((phase, MODES[i % len(MODES)], choices[i % len(choices)], rng.uniform(*offsets[phase])))
    rng.shuffle(schedule)
    return schedule


def _run_trial(number: int, phase: str, mode: str, target: str, offset: float, tmp_path: Path, script: Path,
               src: Path, cache_root: Path, compilers: CompilerLog) -> Trial:
    import filelock

    trial = Trial(number, phase, mode, target, round(offset, 3), expected=1000 + number)
    sources = write_module(src, functions={"answer": trial.expected})
    folder = tmp_path / f"trial-{number:02d}"
    folder.mkdir()
    env = {"PHASE_MARKERS": str(folder / "markers"), "CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL": "0.3"}
    # Long delays where the victim is killed during them: a compiler or linker that outlived its
    # build (no PR_SET_PDEATHSIG) would then still be alive when the survivors are counted.
    env.update({"compile:delay": {"COMPILE_DELAY": "30"}, "link:before": {"LINK_DELAY": "30"},
                "link:after": {"LINK_DELAY": "30"}}.get(target, {}))
    if phase == "publishing":
        env["PUBLISH_DELAY"] = "0.4"
    if phase == "lock_held":  # the build after the lock is otherwise over in a fraction of a second
        env["COMPILE_DELAY"] = "2"
    module_folder = cache_root / KILL_NAME
    holder = None
    if phase == "lock_wait":  # another process holds the lock (this one)
        for private in (cache_root, module_folder):  # as the library makes them (it refuses shared folders)
            private.mkdir(mode=0o700, exist_ok=True)
        holder = filelock.FileLock(str(module_folder / ".lock"))
        holder.acquire()
    try:
        victim = _Victim(folder, script, sources, env, compilers, module_folder / ".lock.owner")
        trial.reached = _reach(victim, phase, target, offset)
        trial.observed = victim.observe()
        trial.killed_while_running = victim.process.poll() is None
        if mode == "requester":
            killed = _tree(victim.process.pid)  # who must die with it
            os.kill(victim.process.pid, signal.SIGKILL)
        else:
            killed = _kill_tree(victim.process.pid)
        killed_at = time.monotonic()
        trial.killed_processes = sorted(_command_name(pid) for pid, _ in killed)
        victim.process.wait(timeout=30)
    finally:
        if holder is not None:
            holder.release()

    # The recovery starts at once, as a restarted job would, racing whatever of the killed tree still dies.
    with open(folder / "recovery.stdout", "w") as out, open(folder / "recovery.stderr", "w") as err:
        recovery = subprocess.Popen([sys.executable, str(script), json.dumps(sources)], stdout=out, stderr=err)
    started = time.monotonic()
    recovered = tree_gone = None
    while True:
        now = time.monotonic()
        if tree_gone is None and not any(_alive(proc) for proc in killed):
            tree_gone = now
        if recovered is None and recovery.poll() is not None:
            recovered = now
        if recovered is None and now - started > RECOVERY_TIMEOUT:
            trial.hang = True
            _kill_tree(recovery.pid)
            recovery.wait()
            recovered = now
        if recovered is not None and (tree_gone is not None or now >= killed_at + TREE_GRACE):
            break
        time.sleep(0.02)
    trial.recovery_s = round(recovered - started, 2)
    try:
        report = last_json((folder / "recovery.stdout").read_text())
        trial.value = report.get("value") if isinstance(report, dict) else report
    except AssertionError:
        trial.recovery_error = f"exit status {recovery.returncode}: {(folder / 'recovery.stderr').read_text()[-2000:]}"
    trial.tree_gone_s = None if tree_gone is None else round(max(0.0, tree_gone - killed_at), 2)
    trial.survivors = [f"{pid} {_command_name(pid)}" for pid, start in killed if _alive((pid, start))]
    trial.strays = _processes_under(str(tmp_path))  # also catches what the killed tree started after its snapshot
    return trial


def _summary(trials: list[Trial]) -> dict[str, Any]:
    times = [t.recovery_s for t in trials if not t.hang]
    return {
        "seed": SEED, "trials": len(trials),
        "killed_while_running": sum(t.killed_while_running for t in trials),
        "phase_reached": sum(t.reached for t in trials),
        "by_phase": dict(Counter(t.phase for t in trials)), "by_mode": dict(Counter(t.mode for t in trials)),
        "by_observed": dict(sorted(Counter(t.observed for t in trials).items())),
        "killed_a_compiler": sum("cc1" in t.killed_processes for t in trials),
        "killed_a_linker": sum(any(n == "collect2" or n.startswith("ld") for n in t.killed_processes) for t in trials),
        "killed_a_build_worker_tree": sum(len(t.killed_processes) > 1 for t in trials),
        "hangs": sum(t.hang for t in trials),
        "wrong": sum(not t.hang and t.value != t.expected for t in trials),
        "with_survivors": sum(bool(t.survivors) for t in trials),
        "with_strays": sum(bool(t.strays) for t in trials),
        # How long the killed tree took to die, per kill mode (trials with survivors left out: they never did).
        "killed_tree_gone_max_s": {mode: max((t.tree_gone_s for t in trials if t.mode == mode and t.tree_gone_s
                                              is not None), default=None) for mode in MODES},
        "recovery_median_s": round(statistics.median(times), 2) if times else None,
        "recovery_max_s": max(times) if times else None,
    }


@pytest.mark.slow
def test_builds_killed_at_random_moments_leave_a_usable_cache(tmp_path: Path, cache_root: Path,
                                                             compilers: CompilerLog,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", _slow_link_wrapper(compilers))  # for every process, so every key is the same
    script = tmp_path / "load.py"
    script.write_text(KILL_SCRIPT)
    src = tmp_path / "src"
    rng = random.Random(SEED)
    trials = [_run_trial(number, *planned, tmp_path, script, src, cache_root, compilers)
              for number, planned in enumerate(_schedule(rng))]

    # The last recovery published its binary: a fresh process loads it without compiling anything.
    compilers.reset()
    final = subprocess.run([sys.executable, str(script), json.dumps(write_module(src, functions={
        "answer": trials[-1].expected}))], capture_output=True, text=True, timeout=RECOVERY_TIMEOUT)

    summary = _summary(trials)
    summary["temporary_leftovers_at_end"] = sorted(str(p.relative_to(cache_root)) for p in cache_root.rglob("*.tmp-*"))
    report = tmp_path / "kill_trials.json"
    report.write_text(json.dumps({"summary": summary, "trials": [asdict(t) for t in trials]}, indent=1))
    print(f"\nkilled builds: {json.dumps(summary)} (details: {report})")
    assert summary["trials"] >= 20
    bad = [asdict(t) for t in trials if t.hang or t.value != t.expected or t.recovery_error]
    assert summary["hangs"] == 0 and summary["wrong"] == 0 and not bad, bad
    # Every kill hit a live build at its planned point (else the trial tested less than it claims).
    missed = [asdict(t) for t in trials if not t.reached or not t.killed_while_running]
    assert summary["phase_reached"] == summary["killed_while_running"] == summary["trials"], missed
    # No process of a killed build outlived it by TREE_GRACE seconds: compilers left running keep
    # writing into the build folder that the next build uses.
    survivors = [(t.number, t.mode, t.target or t.phase, t.survivors) for t in trials if t.survivors]
    assert summary["with_survivors"] == 0, survivors
    assert summary["with_strays"] == 0, [(t.number, t.strays) for t in trials if t.strays]
    assert last_json(final.stdout)["value"] == trials[-1].expected, final.stderr  # type: ignore[index]
    assert compilers.calls() == []


# -- crowds ---------------------------------------------------------------------------------------------------

PROCESSES = 16
THREADS = 4

# Each process imports everything, says it is ready, waits for the go file; then its threads pass a
# barrier together and load. It writes its pid and, per thread, [value or error, start, end] (wall-clock
# seconds) to its result file. "own": this interpreter is the one process; "fork": it imports torch
# once and forks one process per spec (a crowd costs one torch import instead of one per process).
CROWD_SCRIPT = """
import json, os, sys, threading, time, traceback
import torch
import cpp_extension_tools as c


def run(spec):
    open(spec["ready"], "w").close()
    while not os.path.exists(spec["go"]):
        time.sleep(0.01)
    barrier = threading.Barrier(spec["threads"])
    results = [None] * spec["threads"]

    def load(i):
        barrier.wait()
        start = time.time()
        try:
            m = c.cached_load_torch_cpp_extension(spec["name"], spec["sources"], extra_cflags=spec["cflags"])
            value = getattr(m, spec["function"])()
        except Exception as e:
            value = f"{type(e).__name__}: {e}"
        results[i] = [value, start, time.time()]

    threads = [threading.Thread(target=load, args=(i,)) for i in range(spec["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(spec["result"], "w") as f:
        json.dump({"pid": os.getpid(), "threads": results}, f)


specs, how = json.loads(sys.argv[1]), sys.argv[2]
if how == "own":
    run(specs[0])
else:
    children = []
    for spec in specs:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                run(spec)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        children.append(pid)
    sys.exit(max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children))
"""


@dataclass(frozen=True)
class Load:
    """What one crowd process loads, and the value its function must return."""

    name: str
    sources: list[str]
    cflags: list[str] | None
    function: str
    expected: int


def _crowd(tmp_path: Path, loads: list[Load], how: str) -> list[list[list[Any]]]:
    """One process per entry of ``loads``, all released at once; per process, its threads' [value, start, end].

    ``how``: "own" starts one interpreter per process, "fork" forks them from one that imported torch.
    """
    folder = tmp_path / "crowd"
    folder.mkdir()
    script = folder / "crowd.py"
    script.write_text(CROWD_SCRIPT)
    go = folder / "go"
    specs = [{"name": load.name, "sources": load.sources, "cflags": load.cflags, "function": load.function,
              "threads": THREADS, "ready": str(folder / f"ready-{i}"), "go": str(go),
              "result": str(folder / f"result-{i}.json")} for i, load in enumerate(loads)]
    processes = []
    for i, group in enumerate([[spec] for spec in specs] if how == "own" else [specs]):
        with open(folder / f"{i}.stderr", "w") as err:
            processes.append(subprocess.Popen([sys.executable, str(script), json.dumps(group), how],
                                              stdout=err, stderr=err, env={**os.environ, "COMPILE_DELAY": "1"}))
    try:
        deadline = time.monotonic() + 300
        while sum((folder / f"ready-{i}").exists() for i in range(len(specs))) < len(specs):
            assert time.monotonic() < deadline, "the crowd never got ready"
            assert all(p.poll() is None for p in processes), "a crowd process died before the start"
            time.sleep(0.05)
        go.touch()
        for p in processes:
            p.wait(timeout=300)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = [(folder / f"{i}.stderr").read_text()[-3000:] for i, p in enumerate(processes) if p.returncode]
    assert not errors, errors
    reports = [json.loads((folder / f"result-{i}.json").read_text()) for i in range(len(specs))]
    assert len({report["pid"] for report in reports}) == len(loads)  # one process each
    return [report["threads"] for report in reports]


def _check_crowd(loads: list[Load], results: list[list[list[Any]]]) -> None:
    values = [[thread[0] for thread in threads] for threads in results]
    assert values == [[load.expected] * THREADS for load in loads]
    starts = [thread[1] for threads in results for thread in threads]
    ends = [thread[2] for threads in results for thread in threads]
    # All callers were in the library at once: the last one started before the first one was done.
    assert max(starts) < min(ends), (max(starts) - min(starts), min(ends) - min(starts))


def _assert_no_repeated_invocations(compilers: CompilerLog, builds: int) -> None:
    """Each distinct compiler invocation at most once per build.

    Compile counts alone cannot tell one build from sixteen: a second build worker in the same build
    folder waits for torch's own baton and then finds ninja's work done. But every build worker probes
    the compilers (-v, --version, ...) once; a crowd that ran one worker per process repeats them.
    """
    repeated = {line: n for line, n in Counter(compilers.calls()).items() if n > builds}
    assert not repeated, repeated


def _links(compilers: CompilerLog, name: str) -> list[str]:
    return [line for line in compilers.links() if f"-o {name}.so" in line]


def _compiles_under(compilers: CompilerLog, folder: Path) -> list[str]:
    return [line for line in compilers.compiles() if f" -c {folder}{os.sep}" in line]


@pytest.mark.slow
def test_crowd_of_processes_and_threads_builds_once(tmp_path: Path, cache_root: Path,
                                                    compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    loads = [Load("crowd_ext", sources, None, "answer", 42)] * PROCESSES
    _check_crowd(loads, _crowd(tmp_path, loads, "own"))
    assert compilers.compiled_sources() == sorted(os.path.basename(s) for s in sources)  # each once
    assert len(compilers.links()) == 1
    _assert_no_repeated_invocations(compilers, builds=1)


@pytest.mark.slow
def test_crowd_loading_two_modules_builds_each_once(tmp_path: Path, cache_root: Path,
                                                     compilers: CompilerLog) -> None:
    a = Load("crowd_a", write_module(tmp_path / "src_a", functions={"answer": 1}), None, "answer", 1)
    b = Load("crowd_b", write_module(tmp_path / "src_b", functions={"answer": 2}), None, "answer", 2)
    loads = [a, b] * (PROCESSES // 2)
    _check_crowd(loads, _crowd(tmp_path, loads, "fork"))
    for load, folder in ((a, tmp_path / "src_a"), (b, tmp_path / "src_b")):
        assert len(_compiles_under(compilers, folder)) == len(load.sources), compilers.calls()
        assert len(_links(compilers, load.name)) == 1, compilers.calls()
    assert len(compilers.compiles()) == len(a.sources) + len(b.sources)
    _assert_no_repeated_invocations(compilers, builds=2)


VARIANT_SOURCES = {
    "variant.c": """\
        #include <Python.h>
        #ifndef VARIANT
        #error "VARIANT is set by extra_cflags"
        #endif
        PyObject *variant(PyObject *self, PyObject *unused) {
            (void)self; (void)unused; return PyLong_FromLong(VARIANT);
        }
        """,
    "module.c": """\
        #include <Python.h>
        #define CONCAT_(a, b) a##b
        #define CONCAT(a, b) CONCAT_(a, b)
        #define STR_(x) #x
        #define STR(x) STR_(x)
        PyObject *variant(PyObject *, PyObject *);
        static PyMethodDef methods[] = {{"variant", variant, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
        static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = STR(TORCH_EXTENSION_NAME),
                                         .m_size = -1, .m_methods = methods};
        PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }
        """,
}


@pytest.mark.slow
def test_crowd_loading_two_configurations_builds_each_once(tmp_path: Path, cache_root: Path,
                                                            compilers: CompilerLog) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for file_name, text in VARIANT_SOURCES.items():
        (src / file_name).write_text(textwrap.dedent(text))
    sources = sorted(str(src / file_name) for file_name in VARIANT_SOURCES)
    loads = [Load("crowd_variant", sources, ["-O2", f"-DVARIANT={variant}"], "variant", variant)
             for variant in (1, 2)] * (PROCESSES // 2)
    _check_crowd(loads, _crowd(tmp_path, loads, "fork"))
    for variant in (1, 2):
        compiled = [line for line in compilers.compiles() if f" -DVARIANT={variant} " in f"{line} "]
        assert len(compiled) == len(sources), compilers.calls()
    assert len(compilers.compiles()) == 2 * len(sources)
    assert len(_links(compilers, "crowd_variant")) == 2  # one per configuration (the link line has no cflags)
    assert len(list((cache_root / "crowd_variant" / "builds").iterdir())) == 2
    _assert_no_repeated_invocations(compilers, builds=2)


def test_process_tree_helpers_see_and_kill_a_whole_tree(tmp_path: Path) -> None:
    """The kill trials' own tools: a child that left for a session of its own is still found and killed."""
    script = "import subprocess, sys, time; subprocess.Popen(['sleep', '60'], start_new_session=True); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while len(_tree(parent.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(_processes_under(str(tmp_path))) == 2
        killed = _kill_tree(parent.pid)
        assert len(killed) == 2
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(proc) for proc in killed):  # the orphaned sleep is reaped by init
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _processes_under(str(tmp_path)) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()

