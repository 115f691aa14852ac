"""Build worker: runs ninja, or torch.utils.cpp_extension.load, in a process of its own.

Run as ``python _build_worker.py SPEC.json RESULT.json PARENT_PID`` by the
library: it depends on nothing but the standard library (and torch, in the
second mode), so it works whatever the parent's sys.path.

- ``ninja_only``: the library wrote build.ninja already (CPU builds, see
  _ninja_file.py); this process runs ``ninja`` and imports nothing of torch, so
  a build costs the compilers' time and ~30 ms more.
- otherwise (CUDA builds, or a torch whose ninja file generator is not as
  expected) it calls torch's load(). Then it is this process, not the
  caller, that initializes CUDA (to learn the GPUs' architectures) and has the
  build folder's copy of the binary loaded.

Either way the worker dies with its parent: a build whose requester was killed
stops, together with ninja and the compilers (they share this process's session).
Once ninja has returned, however it ended (a crash, killed alone), every other
process of the session is killed before the result is written, so no compiler
of this build outlives it. A worker that could not do so (killed, stopped) left
its session in SESSION_FILE: the next worker in the build folder kills what is
left of it before building.
"""

from __future__ import annotations

# Only what the ninja-only mode needs is imported here: the others (logging, re, traceback) would add
# ~10 ms to every rebuild on a small machine, and are imported where the torch mode or an error needs them.
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


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


def _die_with_parent(parent_pid: int) -> None:
    def stop_group(signum: int, frame: object) -> None:
        # The parent starts us in a session of our own; never signal a session we do not lead.
        if os.getsid(0) == os.getpid():
            kill_session(os.getpid())
        os._exit(1)

    signal.signal(signal.SIGTERM, stop_group)
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch() -> None:  # also covers platforms without PR_SET_PDEATHSIG
        while True:
            if os.getppid() != parent_pid:
                stop_group(signal.SIGTERM, None)
            time.sleep(0.5)

    if os.getppid() != parent_pid:
        stop_group(signal.SIGTERM, None)
    threading.Thread(target=watch, daemon=True).start()


def torch_arch_list(torch: Any) -> list[str]:
    """The GPU architectures ``torch`` was built for ("7.5", "8.0", ...), the newest as "+PTX"; [] if none.

    Read from torch's build flags, so it needs no GPU (torch.cuda.get_arch_list() is empty without one
    in some versions). Shared by builds without a visible GPU, prebuilt wheels and the ``info`` command.
    """
    import re

    flags = torch._C._cuda_getArchFlags() if hasattr(torch._C, "_cuda_getArchFlags") else ""
    archs: list[str] = []
    for flag in (flags or "").split():
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)a?", flag)
        arch = f"{match.group(2)}.{match.group(3)}" if match and match.group(1) == "sm" else None
        if arch is not None and arch not in archs:
            archs.append(arch)
    if archs:
        archs[-1] += "+PTX"  # PTX for the newest, so GPUs newer than torch's list still run it
    return archs


def _resolve_cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST, else the visible GPUs' capabilities, else the archs torch was built for."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in capabilities)
    archs = torch_arch_list(torch)
    if not archs:
        raise RuntimeError("no GPU is visible and TORCH_CUDA_ARCH_LIST is not set; set it to the "
                           "architectures to build for, e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0'")
    print(f"cpp_extension_tools: no GPU visible; building for torch's own architectures {archs}",
          flush=True)
    return ";".join(archs)


_DEVICE_ARCH_FLAGS = ("-gencode", "--generate-code", "-arch", "--gpu-architecture", "-code", "--gpu-code")


def _device_arch_flags(cuda_cflags: list[str], arch_list: str) -> list[str]:
    """-gencode flags for the arch list, unless the user's flags choose architectures themselves.

    torch adds these only when no CUDA flag contains "arch", so a host flag
    such as ``-Xcompiler -march=native`` makes it drop them all and nvcc falls
    back to its oldest default architecture. Adding them here avoids that.
    """
    if any(flag.startswith(_DEVICE_ARCH_FLAGS) for flag in cuda_cflags):
        return []
    flags = []
    for arch in arch_list.replace(" ", ";").split(";"):
        number = arch.removesuffix("+PTX").replace(".", "")
        if not number.isdigit():
            continue  # named architectures ("Hopper") are left to torch
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


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


def _depfile_deps(build_directory: str) -> dict[str, list[str]]:
    """Every object's dependencies from the compilers' depfiles (``<object>.d``), kept in CPU builds.

    Read here rather than through ``ninja -t deps``: ninja's depfile lexer splits paths at quote
    characters, so a header under a folder named ``it's`` was recorded as two paths that do not
    exist, and its edits went unseen.
    """
    deps: dict[str, list[str]] = {}
    for name in os.listdir(build_directory):
        if not name.endswith(".o.d"):
            continue
        try:
            with open(os.path.join(build_directory, name), encoding="utf-8", errors="surrogateescape") as f:
                words = parse_depfile(f.read())
        except OSError:
            continue
        deps[os.path.join(build_directory, name[:-2])] = [
            os.path.normpath(os.path.join(build_directory, w)) for w in words]
    return deps


def parse_depfile(text: str) -> list[str]:
    """The prerequisites in a make-style depfile as gcc writes it (``\\ `` a space, ``\\#`` a hash, ``$$`` a dollar)."""
    text = text.replace("\\\n", " ").replace("\\\r\n", " ")
    _, _, prerequisites = text.partition(": ")
    words: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(prerequisites):
        char = prerequisites[index]
        following = prerequisites[index + 1:index + 2]
        if char == "\\" and following in (" ", "#", "\\"):
            current.append(following)
            index += 2
            continue
        if char == "$" and following == "$":
            current.append("$")
            index += 2
            continue
        if char in " \t\n":
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
        index += 1
    if current:
        words.append("".join(current))
    return [w for w in words if not w.endswith(":")]


def _ninja_deps(build_directory: str) -> dict[str, list[str]]:
    """Every object's dependencies as recorded by ninja (depfiles are deleted after reading)."""
    try:
        output = subprocess.run(["ninja", "-t", "deps"], cwd=build_directory, capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    deps: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if not line.strip():
            current = None
        elif not line.startswith(" ") and ": #deps" in line:
            target = os.path.normpath(os.path.join(build_directory, line.split(": #deps", 1)[0]))
            current = deps.setdefault(target, [])
        elif current is not None:
            current.append(os.path.normpath(os.path.join(build_directory, line.strip())))
    return deps


def _version_line(command: list[str]) -> str:
    try:
        out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        return "unknown"
    # nvcc prints its release on the last lines, gcc and clang on the first.
    return lines[-2] if "nvcc" in command[0] and len(lines) > 1 else lines[0]


def _run_ninja(build_directory: str, name: str) -> None:
    """What torch's _run_ninja_build does, output included; the error names the extension like torch's."""
    command = ["ninja", "-v"]
    if os.environ.get("MAX_JOBS"):  # torch's knob for the number of parallel compilers
        command += ["-j", os.environ["MAX_JOBS"]]
    sys.stdout.flush()
    returncode = subprocess.run(command, cwd=build_directory, stderr=subprocess.STDOUT, check=False,
                                preexec_fn=_die_with_this_process()).returncode
    if returncode < 0:
        raise RuntimeError(f"Error building extension '{name}': {_killed_by(returncode)}")
    if returncode != 0:
        raise RuntimeError(f"Error building extension '{name}' (ninja exit status {returncode})")


def _killed_by(returncode: int) -> str:
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"ninja was killed by signal {-returncode}{name}"


def _die_with_this_process() -> Callable[[], None] | None:
    """For ninja's preexec_fn: SIGKILL it when this worker dies, rather than letting it build on alone.

    PR_SET_PDEATHSIG survives exec. The compilers ninja runs are then left to finish their file; the
    requester kills the session once this worker is gone, and the next worker here whatever is left.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    worker = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != worker:  # died between fork and prctl
            os._exit(1)

    return set_death_signal


_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return function


def build(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False}
    try:
        if spec.get("ninja_only"):
            _run_ninja(spec["build_directory"], spec["name"])
        else:
            _build_with_torch(spec, result)
        result["ok"] = True
    except Exception as error:  # reported to the parent, which raises BuildError
        result["error"] = str(error) + _signal_cause(error)
        result["error_type"] = type(error).__name__
        import traceback

        traceback.print_exc()
    stragglers = stop_stragglers()  # before anything reads the build folder: none of them writes there now
    if stragglers:
        print(f"cpp_extension_tools: killed {len(stragglers)} process(es) of the build still running after "
              f"ninja ended: {stragglers}", flush=True)
    result["deps"] = (_depfile_deps if spec.get("ninja_only") else _ninja_deps)(spec["build_directory"])
    result["compiler_versions"] = {role: _version_line(words) for role, words in spec["compilers"].items()}
    return result


def _signal_cause(error: BaseException) -> str:
    """torch's load() raises "Error building extension" from ninja's CalledProcessError: say if ninja was killed."""
    cause = error.__cause__
    if isinstance(cause, subprocess.CalledProcessError) and cause.returncode < 0 and "killed" not in str(error):
        return f": {_killed_by(cause.returncode)}"
    return ""


def _build_with_torch(spec: dict[str, Any], result: dict[str, Any]) -> None:
    cuda_cflags = list(spec["cuda_cflags"])
    if spec["with_cuda"]:
        os.environ["TORCH_CUDA_ARCH_LIST"] = result["cuda_arch_list"] = _resolve_cuda_arch_list()
        cuda_cflags += _device_arch_flags(cuda_cflags, result["cuda_arch_list"])
    import torch.utils.cpp_extension as cpp_extension

    _escape_torch_ninja_files(cpp_extension)
    cpp_extension.load(
        name=spec["name"], sources=with_unique_object_names(spec["sources"], spec["build_directory"]),
        extra_cflags=spec["cflags"],
        extra_cuda_cflags=cuda_cflags, extra_ldflags=spec["ldflags"],
        extra_include_paths=spec["include_paths"], build_directory=spec["build_directory"],
        verbose=True, with_cuda=spec["with_cuda"], is_python_module=False)


def _escape_torch_ninja_files(cpp_extension: Any) -> None:
    """Make torch's load() write a build.ninja that means what its paths say (see escape_ninja_text)."""
    write = getattr(cpp_extension, "_write_ninja_file", None)
    if write is None:
        return

    def write_escaped(path: str, *args: Any, **kwargs: Any) -> None:
        write(path, *args, **kwargs)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        escaped = escape_ninja_text(text)
        if escaped != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(escaped)

    cpp_extension._write_ninja_file = write_escaped


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
    import re  # not for CPU builds' worker: the caller escapes their file

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


def main() -> int:
    spec_path, result_path, parent_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _die_with_parent(parent_pid)
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    leftovers = claim_build_folder(spec["build_directory"])
    if leftovers:
        print(f"cpp_extension_tools: killed {len(leftovers)} process(es) left running by an earlier, killed "
              f"build in this folder: {leftovers}", flush=True)
    if not spec.get("ninja_only"):  # torch's load() reports its progress through logging
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    result = build(spec)
    release_build_folder(spec["build_directory"])
    sys.stdout.flush()
    temporary = f"{result_path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(temporary, result_path)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
