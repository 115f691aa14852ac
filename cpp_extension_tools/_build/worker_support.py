"""Helpers of the build worker that the library uses too: standard library only, and nothing of this package.

The build worker runs as a script (``python -S _build/worker.py``) and imports
this module from beside it, whatever the parent's sys.path; the library
imports it as ``cpp_extension_tools._build.worker_support``. Here: the build's
session (kill it, stop what ninja left running, claim and release the build
folder), the stand-ins that give sources unique object names, gcc's depfiles,
and the escaping of torch's build.ninja.
"""

from __future__ import annotations

import contextlib
import json
import os
import re  # loaded anyway: json uses it
import signal

__all__ = ["SESSION_FILE", "UNIQUE_SOURCES_FOLDER", "claim_build_folder", "escape_ninja_text", "kill_session",
           "parse_depfile", "release_build_folder", "stop_stragglers", "version_line", "with_unique_object_names"]


def kill_session(session: int) -> None:
    """SIGKILL every process of ``session`` but the caller: the build worker, ninja and the compilers.

    Not a process group: ninja starts each command in a group of its own, so killpg() of the
    worker's group left compilers running, which could then overwrite an object file of the next
    build with one compiled from the old source (found by tests/test_reliability_processes.py).
    They all stay in the worker's session, which the library starts for it.
    """
    me = os.getpid()
    if os.path.isdir("/proc"):
        for _ in range(50):  # a process may fork while we look: look again until none is left
            members = [pid for pid in _live_session_members(session) if pid != me]
            if not members:
                break
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    if os.getpgid(0) != session:  # without /proc, the worker's own group is all we can reach
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)


def _live_session_members(session: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _proc_stat(int(name))
        if stat is not None and stat[1] == session and stat[0] not in (b"Z", b"X"):  # zombies are dead
            members.append(int(name))
    return members


def _proc_stat(pid: int) -> tuple[bytes, int, int] | None:
    """(state, session, start time in clock ticks) of ``pid`` from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces
        return fields[0], int(fields[3]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def stop_stragglers() -> list[int]:
    """Kill every other process of this worker's session (what ninja left running); their pids.

    Only when this process leads its session (the library starts it so): otherwise the session is
    someone else's, a terminal's or a test runner's.
    """
    me = os.getpid()
    if not os.path.isdir("/proc") or os.getsid(0) != me:
        return []
    stragglers = [pid for pid in _live_session_members(me) if pid != me]
    if stragglers:
        kill_session(me)
    return stragglers


SESSION_FILE = "cpp_extension_tools_session.json"


def _machine_identity() -> dict[str, str]:
    """Where a session id means something: this host, boot and pid namespace."""
    identity = {"host": os.uname().nodename}
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            identity["boot"] = f.read().strip()
        identity["pid_namespace"] = os.readlink("/proc/self/ns/pid")
    return identity


def claim_build_folder(build_directory: str) -> list[int]:
    """Kill what is left of an earlier worker's session in ``build_directory``, then record ours.

    Returns the pids killed. An earlier worker that was SIGKILLed or stopped together with its
    requester could not kill its ninja and compilers; they would write old objects into this build.
    A process is killed only if it is in that session, works in this folder, and the session is
    the recorded one (same machine, and its leader is the recorded process or gone).
    """
    path = os.path.join(build_directory, SESSION_FILE)
    killed = _stop_recorded_session(path, build_directory)
    release_build_folder(build_directory)
    me = os.getpid()
    stat = _proc_stat(me)
    if stat is not None and stat[1] == me:
        record = {"session": me, "start": stat[2], **_machine_identity()}
        temporary = f"{path}.tmp-{me}"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(temporary, path)
    return killed


def _stop_recorded_session(path: str, build_directory: str) -> list[int]:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        session, start = int(record["session"]), int(record["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if any(record.get(key) != value for key, value in _machine_identity().items()):
        return []
    leader = _proc_stat(session)
    if leader is not None and leader[2] != start:  # the pid was reused: that session ended
        return []
    folder = os.path.realpath(build_directory)
    killed = []
    for _ in range(50):  # a process may fork while we look: look again until none is left
        members = [pid for pid in _live_session_members(session) if pid != os.getpid() and _works_in(pid, folder)]
        if not members:
            break
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed += [pid for pid in members if pid not in killed]
    return killed


def _works_in(pid: int, folder: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == folder or cwd.startswith(folder + os.sep)


def release_build_folder(build_directory: str) -> None:
    """Forget our session record: nothing of this build is left running."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(build_directory, SESSION_FILE))


UNIQUE_SOURCES_FOLDER = "renamed_sources"


def _object_name(source: str) -> str:
    """The object file torch's load() gives a source: its base name, so a/util.c and b/util.c collide."""
    stem, extension = os.path.splitext(os.path.basename(source))
    return stem + (".cuda.o" if extension == ".cu" else ".o")


def with_unique_object_names(sources: list[str], build_directory: str) -> list[str]:
    """Sources whose object names would collide are compiled through a one-line stand-in.

    The stand-in (renamed_sources/util-2.c) #includes the real file by its absolute path, so the
    compiler still reports errors at the real file and line, and its own folder comes first for
    #include "..." lookups. Stand-ins are rewritten only when their text changes, so ninja's
    timestamps stay meaningful.
    """
    seen: dict[str, int] = {}
    result = []
    for source in sources:
        name = _object_name(source)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            result.append(source)
            continue
        stem, extension = os.path.splitext(os.path.basename(source))
        folder = os.path.join(build_directory, UNIQUE_SOURCES_FOLDER)
        os.makedirs(folder, exist_ok=True)
        number = seen[name]
        while _object_name(f"{stem}-{number}{extension}") in seen:  # e.g. a real util-2.c among the sources
            number += 1
        stand_in = os.path.join(folder, f"{stem}-{number}{extension}")
        seen[_object_name(stand_in)] = 1
        quoted = os.path.abspath(source).replace("\\", "\\\\").replace('"', '\\"')
        text = f'#include "{quoted}"\n'
        try:
            with open(stand_in, encoding="utf-8") as f:
                unchanged = f.read() == text
        except OSError:
            unchanged = False
        if not unchanged:
            with open(stand_in, "w", encoding="utf-8") as f:
                f.write(text)
        result.append(stand_in)
    return result


def parse_depfile(text: str) -> list[str]:
    """The prerequisites in a make-style depfile as gcc writes it (``\\ `` a space, ``\\#`` a hash, ``$$`` a dollar)."""
    text = text.replace("\\\n", " ").replace("\\\r\n", " ")
    _, _, prerequisites = text.partition(": ")
    # A word: escapes and other characters up to a blank; one regular expression instead of a loop
    # over the characters, which took ~15 ms per depfile of a torch extension (300 headers).
    words = [_ESCAPE.sub(_unescaped, word) if "\\" in word or "$" in word else word
             for word in _DEPFILE_WORD.findall(prerequisites)]
    return [w for w in words if not w.endswith(":")]


_DEPFILE_WORD = re.compile(r"(?:\\[ #\\]|\$\$|[^ \t\n])+")
_ESCAPE = re.compile(r"\\([ #\\])|\$\$")


def _unescaped(match: re.Match[str]) -> str:
    return match.group(1) or "$"


# Variables torch writes whose values are flags and paths, never references to ninja variables.
_NINJA_VALUE_LINES = ("cxx = ", "nvcc = ", "sycl = ", "cflags = ", "post_cflags = ", "cuda_cflags = ",
                      "cuda_post_cflags = ", "cuda_dlink_post_cflags = ", "sycl_cflags = ", "sycl_post_cflags = ",
                      "sycl_dlink_post_cflags = ", "ldflags = ")


def escape_ninja_text(text: str) -> str:
    """torch's build.ninja with the characters ninja would misread escaped.

    torch escapes only spaces in paths: a "$" in a source path or flag made ninja expand a variable
    (silently compiling another file), and a ":" in a path ended the list of outputs. Here every
    "$" that is not torch's own "$ " becomes "$$", and ":" in build statements' paths "$:".
    """

    unescaped_dollar = re.compile(r"\$(?! )")
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith(_NINJA_VALUE_LINES):
            name, value = line.split(" = ", 1)
            line = f"{name} = {value.replace('$', '$$')}"
        elif line.startswith("build ") and ": " in line:
            outputs, rest = line[len("build "):].split(": ", 1)
            rule, _, inputs = rest.partition(" ")
            outputs, inputs = (unescaped_dollar.sub("$$", part).replace(":", "$:") for part in (outputs, inputs))
            line = f"build {outputs}: {rule} {inputs}" if inputs else f"build {outputs}: {rule}"
        lines.append(line)
    return "".join(lines)


def version_line(command: list[str], output: str | None) -> str:
    """The line that names the version in what ``command --version`` printed ("unknown" without one)."""
    lines = [line for line in (output or "").splitlines() if line.strip()]
    if not lines:
        return "unknown"
    # nvcc prints its release on the last lines, gcc and clang on the first.
    return lines[-2] if "nvcc" in command[0] and len(lines) > 1 else lines[0]
