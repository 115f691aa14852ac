"""Build worker: runs ninja, or torch.utils.cpp_extension.load, in a process of its own.

Run as ``python worker.py SPEC.json RESULT.json PARENT_PID [--wait]`` by the
library (``--wait``: started before the spec is written, it reads it once told so on
stdin): it depends on nothing but the standard library, the two modules
written for it (worker_support.py beside it, ../_env/cuda.py), which it loads
from their files, and torch in the second mode, so it works whatever the
parent's sys.path. This file is the worker's
``main()`` and what only the worker uses.

- ``ninja_only``: the library wrote build.ninja already (CPU builds, see
  _build/ninja_file.py); this process runs ``ninja`` and imports nothing of torch, so
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

# Only what the ninja-only mode needs is imported here (re comes with json): the others (logging,
# traceback) would add ~10 ms to every rebuild on a small machine, and are imported where the torch mode
# or an error needs them.
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if __package__:  # imported as cpp_extension_tools._build.worker (type checkers, tests)
    from .._env import cuda as _cuda
    from . import worker_support as support
else:  # run as a script, where the package may not be importable: its two modules are loaded from their files
    from importlib.machinery import SourceFileLoader  # 0.6 ms; importlib.util would cost ~10 ms more

    def _load_file(name: str, *path: str) -> Any:
        """The module in the file at ``path`` (from this script's folder), named so that no import finds it.

        Not through sys.path: the folder holding cuda.py would shadow NVIDIA's ``cuda`` package for torch.
        """
        location = os.path.join(os.path.dirname(os.path.abspath(__file__)), *path)
        loader = SourceFileLoader(name, location)
        module = type(sys)(name)
        module.__file__, module.__loader__ = location, loader
        sys.modules[name] = module  # before it runs: dataclasses look their module up
        loader.exec_module(module)
        return module

    _cuda = _load_file("cpp_extension_tools_worker_cuda", os.pardir, "_env", "cuda.py")
    support = _load_file("cpp_extension_tools_worker_support", "worker_support.py")


def _die_with_parent(parent_pid: int) -> None:
    def stop_group(signum: int, frame: object) -> None:
        # The parent starts us in a session of our own; never signal a session we do not lead.
        if os.getsid(0) == os.getpid():
            support.kill_session(os.getpid())
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
                words = support.parse_depfile(f.read())
        except OSError:
            continue
        deps[os.path.join(build_directory, name[:-2])] = [
            os.path.normpath(os.path.join(build_directory, w)) for w in words]
    return deps


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
    return support.version_line(command, out)


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
    stragglers = support.stop_stragglers()  # before anything reads the build folder: none of them writes there now
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
    include_paths = list(spec["include_paths"])
    if spec["with_cuda"]:
        os.environ["TORCH_CUDA_ARCH_LIST"] = result["cuda_arch_list"] = _cuda_arch_list()
        cuda_cflags += _cuda.device_arch_flags(cuda_cflags, result["cuda_arch_list"])
        # After the user's folders, so that their headers win (torch's load() adds none of these).
        import torch

        include_paths += _cuda.wheel_include_folders(torch)
    import torch.utils.cpp_extension as cpp_extension

    _escape_torch_ninja_files(cpp_extension)
    cpp_extension.load(
        name=spec["name"], sources=support.with_unique_object_names(spec["sources"], spec["build_directory"]),
        extra_cflags=spec["cflags"],
        extra_cuda_cflags=cuda_cflags, extra_ldflags=spec["ldflags"],
        extra_include_paths=include_paths, build_directory=spec["build_directory"],
        verbose=True, with_cuda=spec["with_cuda"], is_python_module=False,
        is_standalone=spec.get("is_standalone", False))


def _cuda_arch_list() -> str:
    """The arch list to build for (this process may initialize CUDA: the caller must not); says a fallback."""
    import torch

    arch_list, source = _cuda.cuda_arch_list(torch)
    if arch_list is None:
        raise RuntimeError("no GPU is visible and TORCH_CUDA_ARCH_LIST is not set; set it to the "
                           "architectures to build for, e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0'")
    if source not in ("TORCH_CUDA_ARCH_LIST", "visible GPUs"):
        print(f"cpp_extension_tools: no GPU visible; building for torch's own architectures {arch_list}",
              flush=True)
    return arch_list


def _escape_torch_ninja_files(cpp_extension: Any) -> None:
    """Make torch's load() write a build.ninja that means what its paths say (see _worker_support.escape_ninja_text)."""
    write = getattr(cpp_extension, "_write_ninja_file", None)
    if write is None:
        return

    def write_escaped(path: str, *args: Any, **kwargs: Any) -> None:
        write(path, *args, **kwargs)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        escaped = support.escape_ninja_text(text)
        if escaped != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(escaped)

    cpp_extension._write_ninja_file = write_escaped


def _spec_is_written() -> bool:
    """Started ahead of its spec (``--wait``): block until the library says it is written ("g" on stdin).

    End-of-file instead: the library no longer needs this worker (its build failed before it ran).
    """
    return os.read(0, 1) == b"g"


def main() -> int:
    spec_path, result_path, parent_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _die_with_parent(parent_pid)
    if sys.argv[4:] == ["--wait"] and not _spec_is_written():
        return 1
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    leftovers = support.claim_build_folder(spec["build_directory"])
    if leftovers:
        print(f"cpp_extension_tools: killed {len(leftovers)} process(es) left running by an earlier, killed "
              f"build in this folder: {leftovers}", flush=True)
    if not spec.get("ninja_only"):  # torch's load() reports its progress through logging
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    result = build(spec)
    support.release_build_folder(spec["build_directory"])
    sys.stdout.flush()
    temporary = f"{result_path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(temporary, result_path)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
