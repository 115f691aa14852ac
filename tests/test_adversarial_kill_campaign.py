"""A kill campaign: random SIGKILLs at the requester, the build worker, ninja and single compilers.

Each trial edits the module's source (a new constant), starts a build, waits for a randomly chosen
target process to appear, sleeps a random moment and SIGKILLs it. A fresh process must then load the
module within RECOVERY_TIMEOUT (no hang) and return the current constant (no stale or wrong load),
and after that call nothing of the killed build may be left: no temporary files or folders in the
cache, no process of its tree or session still running.

Processes come from a zygote that imported torch once and forks one child per load, so a trial costs
the build, not two torch imports; each child is a fresh process to the library (nothing loaded yet).
Set KILL_CAMPAIGN_SEED to replay a campaign; the seed is in every failure message.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CompilerLog, write_module
from tests.test_reliability_processes import Proc, _alive, _command_name, _kill_tree, _processes_under, _stat, _tree

NAME = "campaign_ext"
TARGETS = ("requester", "worker", "ninja", "compiler")
TRIALS_PER_TARGET = 15
SEED = int(os.environ.get("KILL_CAMPAIGN_SEED") or 20260511)
RECOVERY_TIMEOUT = 60.0
VICTIM_TIMEOUT = 60.0
COMPILE_DELAY = "0.4"
# What runs a compile: the driver, the logging wrapper (and its COMPILE_DELAY sleep), gcc and its passes.
COMPILER_NAMES = frozenset({"cxx-driver.sh", "cc-logged", "cxx-logged", "sleep", "gcc", "cc", "cc1", "as",
                            "collect2", "ld"})

# Reads one JSON request per line ({"sources", "result", "env"}), forks a child that loads the module
# and writes {"value"} or {"error"} to "result", prints the child's pid, then its exit status.
ZYGOTE = """
import json, os, sys, traceback
import torch
import cpp_extension_tools as c

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.environ.update(request["env"])
            try:
                report = {"value": c.cached_load_torch_cpp_extension(NAME, request["sources"]).answer()}
            except c.BuildError as e:
                report = {"error": str(e)[:2000]}
            with open(request["result"], "w") as f:
                json.dump(report, f)
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
""".replace("NAME", repr(NAME))


class Zygote:
    def __init__(self, folder: Path) -> None:
        script = folder / "zygote.py"
        script.write_text(ZYGOTE)
        self.stderr = open(folder / "zygote.stderr", "w")  # closed in close()
        self.process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True, bufsize=1)

    def start(self, sources: list[str], result: Path, env: dict[str, str]) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"sources": sources, "result": str(result), "env": env}) + "\n")
        self.process.stdin.flush()
        line = self._line(120)
        assert line is not None, "the zygote did not fork"
        return int(line)

    def wait(self, timeout: float) -> int | None:
        """The child's exit status, or None when it is still running after ``timeout`` seconds."""
        line = self._line(timeout)
        return None if line is None else int(line)

    def _line(self, timeout: float) -> str | None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        assert line, f"the zygote died: {(Path(self.stderr.name)).read_text()[-2000:]}"
        return line.strip()

    def close(self) -> None:
        _kill_tree(self.process.pid)
        self.process.wait()
        self.stderr.close()


@dataclass
class Trial:
    number: int
    target: str
    delay_s: float
    expected: int
    killed: str = ""  # the command name of the process killed; "" when the build was over first
    victim: str = ""  # the victim's outcome: value, error or killed
    hang: bool = False
    value: Any = None
    recovery_s: float = 0.0
    leftovers_before: list[str] = field(default_factory=list)  # after the kill, before the next load
    leftovers_after: list[str] = field(default_factory=list)  # after the next load: must be empty


def _find(requester: int, target: str, rng: random.Random) -> Proc | None:
    tree = sorted(_tree(requester))
    if target == "requester":
        return next((proc for proc in tree if proc[0] == requester), None)
    if target == "worker":
        return next((proc for proc in tree if proc[0] != requester and os.getsid(proc[0]) == proc[0]
                     and _command_name(proc[0]).startswith("python")), None)
    names = {"ninja"} if target == "ninja" else COMPILER_NAMES
    found = [proc for proc in tree if _command_name(proc[0]) in names]
    return rng.choice(found) if found else None


def _aim(requester: int, target: str, delay: float, rng: random.Random) -> tuple[str, set[Proc]]:
    """Wait for ``target`` to appear, ``delay`` seconds more, then SIGKILL it.

    Returns its command name ("" when the build was over first) and the requester's tree just before.
    """
    deadline = time.monotonic() + VICTIM_TIMEOUT
    seen: set[Proc] = set()
    # The requester is aimed at once the build has started (its worker exists), the others when they exist.
    while _find(requester, "worker" if target == "requester" else target, rng) is None:
        seen |= _tree(requester)
        if time.monotonic() > deadline or not seen or not _alive(min(seen)):
            return "", seen
        time.sleep(0.005)
    time.sleep(delay)
    seen |= _tree(requester)
    proc = _find(requester, target, rng)
    if proc is None or not _alive(proc):
        return "", seen
    name = _command_name(proc[0])
    os.kill(proc[0], signal.SIGKILL)
    return name, seen


def _session_members(sessions: set[int]) -> set[Proc]:
    found = set()
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        stat = _stat(pid)
        try:
            if stat is not None and os.getsid(pid) in sessions:
                found.add((pid, stat[2]))
        except OSError:
            continue
    return found


def _leads_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:  # gone: then its session can only be found through the processes seen
        return False


def _leftovers(cache_root: Path, procs: set[Proc], sessions: set[int]) -> list[str]:
    temporary = [f"file {p.relative_to(cache_root)}" for p in cache_root.rglob("*.tmp-*")]
    alive = {proc for proc in procs | _session_members(sessions) if _alive(proc)}
    running = [f"process {pid} {_command_name(pid)}" for pid, _ in sorted(alive)]
    return temporary + running + [f"under the cache: {p}" for p in _processes_under(str(cache_root))]


def _trial(number: int, target: str, delay: float, zygote: Zygote, src: Path, folder: Path, cache_root: Path,
           rng: random.Random) -> Trial:
    trial = Trial(number, target, round(delay, 3), expected=1000 + number)
    sources = write_module(src, functions={"answer": trial.expected})
    victim_result = folder / f"victim-{number}.json"
    victim = zygote.start(sources, victim_result, {"COMPILE_DELAY": COMPILE_DELAY})
    trial.killed, seen = _aim(victim, target, delay, rng)
    sessions = {pid for pid, _ in seen if pid != victim and _leads_session(pid)}
    status = zygote.wait(VICTIM_TIMEOUT)
    if status is None:
        trial.victim = "hang"
        _kill_tree(victim)
        status = zygote.wait(30)
    trial.victim = (victim_result.read_text()[:200] if victim_result.exists() else f"exit {status}")
    trial.leftovers_before = _leftovers(cache_root, seen, sessions)

    started = time.monotonic()
    recovery_result = folder / f"recovery-{number}.json"
    recovery = zygote.start(sources, recovery_result, {})
    if zygote.wait(RECOVERY_TIMEOUT) is None:
        trial.hang = True
        _kill_tree(recovery)
        zygote.wait(30)
    trial.recovery_s = round(time.monotonic() - started, 2)
    if recovery_result.exists():
        report = json.loads(recovery_result.read_text())
        trial.value = report.get("value", report.get("error"))
    trial.leftovers_after = _leftovers(cache_root, seen, sessions)
    return trial


def _summary(trials: list[Trial], seconds: float) -> dict[str, Any]:
    return {
        "seed": SEED, "trials": len(trials), "seconds": round(seconds, 1),
        "by_target": dict(Counter(t.target for t in trials)),
        "kills_landed": dict(Counter(t.target for t in trials if t.killed)),
        "killed_names": dict(Counter(t.killed for t in trials if t.killed)),
        "victim_failed": sum('"error"' in t.victim or t.victim.startswith("exit") for t in trials),
        "hangs": sum(t.hang for t in trials),
        "wrong": sum(not t.hang and t.value != t.expected for t in trials),
        "leftovers_before_next_load": sum(bool(t.leftovers_before) for t in trials),
        "leftovers_repaired": sum(bool(t.leftovers_before) and not t.leftovers_after for t in trials),
        "leftovers_after_next_load": sum(bool(t.leftovers_after) for t in trials),
        "recovery_max_s": max((t.recovery_s for t in trials), default=None),
    }


@pytest.mark.slow
def test_kill_campaign(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    rng = random.Random(SEED)
    plan = [target for target in TARGETS for _ in range(TRIALS_PER_TARGET)]
    rng.shuffle(plan)
    delays = {"requester": (0.0, 0.5), "worker": (0.0, 0.5), "ninja": (0.0, 0.5), "compiler": (0.0, 0.4)}
    folder = tmp_path / "campaign"
    folder.mkdir()
    src = tmp_path / "src"
    zygote = Zygote(folder)
    started = time.monotonic()
    try:
        trials = [_trial(number, target, rng.uniform(*delays[target]), zygote, src, folder, cache_root, rng)
                  for number, target in enumerate(plan)]
    finally:
        zygote.close()
    summary = _summary(trials, time.monotonic() - started)
    report = tmp_path / "campaign.json"
    report.write_text(json.dumps({"summary": summary, "trials": [asdict(t) for t in trials]}, indent=1))
    print(f"\nkill campaign: {json.dumps(summary)} (details: {report})")
    bad = [asdict(t) for t in trials if t.hang or t.value != t.expected or t.leftovers_after]
    assert summary["hangs"] == summary["wrong"] == summary["leftovers_after_next_load"] == 0, (
        f"seed {SEED} (KILL_CAMPAIGN_SEED to replay): {summary}\n{bad}")
    assert len(trials) >= 50
    # The campaign aimed at running builds: most kills landed on a living target (else it tested less).
    assert sum(bool(t.killed) for t in trials) >= 0.8 * len(trials), f"seed {SEED}: {summary}"
