"""Drives one build: prepares the build folder, runs the build worker, collects inputs.

The caller holds the module lock. The build itself (ninja and the compilers,
or for CUDA builds torch's load()) runs in a worker process that dies with
this one; this module turns its outcome into either the list of input files
to publish or a BuildError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _probe
from ._config import BuildConfig
from ._driver import write_driver
from ._errors import DISK_FULL_ERRNOS, BuildError
from ._fsutil import atomic_write_bytes, make_dirs
from ._hashing import FileRecord, digest_file, record_file
from ._ninja_file import prepare_ninja_file
from ._trust import folder_mode

__all__ = ["LAUNCHER_ENV", "BuildOutcome", "run_build"]

logger = logging.getLogger("cpp_extension_tools")

LAUNCHER_ENV = "CACHED_CPP_EXTENSION_COMPILER_LAUNCHER"
_NATIVE_CPU_FILE = "cpp_extension_tools_native_cpu.txt"
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_worker.py")
_STATE_FILE = "cpp_extension_tools_state.json"
_ERROR_LINE = re.compile(r"^(?P<where>[^\s:][^:]*:\d+(?::\d+)?): (?:fatal )?error[:\s]|"
                         r"undefined reference|undefined symbol|cannot find -l|ld returned|"
                         r"^nvcc fatal|error: ", re.IGNORECASE)
_MAX_ERROR_LINES = 12
# What compilers print for those errnos (strerror): "No space left on device", ...
_DISK_FULL_MESSAGES = tuple(os.strerror(code) for code in DISK_FULL_ERRNOS)


@dataclass(frozen=True)
class BuildOutcome:
    library: str
    inputs: list[FileRecord]
    seconds: float
    details: dict[str, Any]


def run_build(config: BuildConfig, build_folder: str, verbose: bool) -> BuildOutcome:
    make_dirs(build_folder, folder_mode())
    _remove_stale_baton(build_folder)
    state = _read_state(build_folder)
    _invalidate_changed_objects(build_folder, state)
    source_digests = {path: digest_file(path) for path in config.sources}
    compilers = _compilers(config)
    launcher = _compiler_launcher(config, verbose)
    driver = write_driver(build_folder, compilers["cc"], compilers["cxx"], launcher)
    log_path = os.path.join(build_folder, "build.log")
    started = time.monotonic()
    logger.info("building %s (%d source%s) in %s", config.name, len(config.sources),
                "" if len(config.sources) == 1 else "s", build_folder)
    from ._build_worker import with_unique_object_names

    ninja_only = prepare_ninja_file(config, build_folder,
                                    with_unique_object_names(list(config.sources), build_folder), driver)
    identity, versions = _compiler_identity(config), _cached_compiler_versions(state, config)
    result = _run_worker(config, build_folder, driver, launcher, compilers if versions is None else {}, log_path,
                         verbose, ninja_only)
    seconds = time.monotonic() - started
    if not result.get("ok"):
        raise _build_error(config.name, result, log_path)
    inputs = _collect_inputs(config, result.get("deps", {}), build_folder)
    changed = [p for p, d in source_digests.items() if digest_file(p) != d]
    if changed:
        raise BuildError(f"{changed[0]} changed while {config.name} was being built; call again to "
                         "build the new version", name=config.name, log_path=log_path)
    versions = result.get("compiler_versions", {}) if versions is None else versions
    _save_state(build_folder, result.get("deps", {}), identity, versions)
    logger.info("built %s in %.1f s", config.name, seconds)
    details = {"configuration": config.describe(), "compiler_versions": versions,
               "cuda_arch_list": result.get("cuda_arch_list"), "build_folder": build_folder}
    return BuildOutcome(os.path.join(build_folder, f"{config.name}.so"), inputs, seconds, details)


def _compilers(config: BuildConfig) -> dict[str, list[str]]:
    cxx = _probe.resolve_compiler("CXX", "c++")
    compilers = {"cxx": [cxx.path, *cxx.words[1:]]}
    cc = _probe.resolve_compiler("CC", "cc") if "c" in config.languages else None
    compilers["cc"] = [cc.path, *cc.words[1:]] if cc else ["cc"]
    if config.with_cuda:
        compilers["nvcc"] = [_probe.find_nvcc() or "nvcc"]
    return compilers


def _compiler_launcher(config: BuildConfig, verbose: bool) -> list[str]:
    """CACHED_CPP_EXTENSION_COMPILER_LAUNCHER as words, its program resolved to an absolute path; [] if unset.

    Not part of the configuration key: a launcher (ccache, sccache) changes how objects are
    compiled, not what they are, so builds with and without one share artifacts.
    """
    value = os.environ.get(LAUNCHER_ENV, "")
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise BuildError(f"Error building extension {config.name!r}: {LAUNCHER_ENV}={value!r} is not a valid "
                         f"command ({error}); quote it as in a shell, or unset {LAUNCHER_ENV}",
                         name=config.name) from error
    if not words:
        return []
    program = shutil.which(words[0])
    if program is None:
        raise BuildError(f"Error building extension {config.name!r}: the compiler launcher {words[0]!r} (from "
                         f"{LAUNCHER_ENV}={value!r}) was not found on PATH; install it (e.g. 'apt install "
                         f"ccache') or unset {LAUNCHER_ENV}", name=config.name)
    launcher = [os.path.abspath(program), *words[1:]]
    # ninja's command lines show the driver, not what it runs: this line is where verbose builds show it.
    logger.log(logging.INFO if verbose else logging.DEBUG, "%s: compiles go through the launcher %s (%s)",
               config.name, shlex.join(launcher), LAUNCHER_ENV)
    return launcher


def _remove_stale_baton(build_folder: str) -> None:
    # torch's FileBaton ("lock") is left behind when a build is killed, and
    # torch would then wait for it forever. Builds in this folder only run
    # while we hold the module lock, so any baton found now is stale.
    baton = os.path.join(build_folder, "lock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(baton)
        logger.warning("removed a stale torch build lock left by a killed build: %s", baton)


def _read_state(build_folder: str) -> dict[str, Any]:
    """What the last successful build here recorded ({} when nothing usable was)."""
    try:
        with open(os.path.join(build_folder, _STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _invalidate_changed_objects(build_folder: str, state: dict[str, Any]) -> None:
    """Delete objects whose recorded inputs changed content.

    ninja rebuilds by timestamps only; a source restored with an older mtime
    (an archive, ``cp -p``, a clock step) would leave a stale object in the
    link. Content decides here, so such an object is removed and rebuilt.
    """
    objects = state.get("objects")
    if not isinstance(objects, dict):
        return
    for obj, deps in objects.items():
        if not isinstance(deps, dict) or os.path.dirname(os.path.abspath(obj)) != os.path.abspath(build_folder):
            continue
        for path, digest in deps.items():
            try:
                unchanged = digest_file(path) == digest
            except OSError:
                unchanged = False
            if not unchanged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(obj)
                break


def _save_state(build_folder: str, deps: dict[str, list[str]], compiler_identity: dict[str, Any],
                compiler_versions: dict[str, str]) -> None:
    objects: dict[str, dict[str, str]] = {}
    for obj, paths in deps.items():
        with contextlib.suppress(OSError):
            objects[obj] = {p: digest_file(p) for p in paths}
    state = {"objects": objects, "compiler_identity": compiler_identity, "compiler_versions": compiler_versions}
    atomic_write_bytes(os.path.join(build_folder, _STATE_FILE), json.dumps(state).encode())


def _compiler_identity(config: BuildConfig) -> dict[str, Any]:
    """The compilers' path, size, mtime and inode (from the key): their versions cannot change unless this does."""
    return {role: config.environment.get(role) for role in ("cxx", "cc", "nvcc")}


def _cached_compiler_versions(state: dict[str, Any], config: BuildConfig) -> dict[str, str] | None:
    """The versions recorded by the last build here, if the compilers are the same files; else None.

    Asking each compiler for ``--version`` costs a few milliseconds per compiler on every rebuild.
    """
    versions = state.get("compiler_versions")
    if not isinstance(versions, dict) or not versions or state.get("compiler_identity") != _compiler_identity(config):
        return None
    return {str(role): str(line) for role, line in versions.items()}


def _system_prefixes(config: BuildConfig) -> tuple[str, ...]:
    """Folders whose headers are covered by versions in the key rather than by content."""
    import torch

    prefixes = {os.path.join(os.path.dirname(torch.__file__), "include"), "/usr/include", "/usr/lib/gcc",
                "/usr/local/cuda", "/usr/lib/llvm"}
    for name in ("include", "platinclude"):
        path = sysconfig.get_paths().get(name)
        if path:
            prefixes.add(path)
    nvcc = _probe.find_nvcc()
    if config.with_cuda and nvcc:
        prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(nvcc.split()[0]))))
    return tuple(os.path.realpath(p) + os.sep for p in prefixes)


def _collect_inputs(config: BuildConfig, deps: dict[str, list[str]], build_folder: str) -> list[FileRecord]:
    """Sources plus the user headers they included, each with its content digest."""
    system = _system_prefixes(config)
    user = tuple(os.path.realpath(p) + os.sep for p in config.include_paths)
    own = os.path.realpath(build_folder) + os.sep  # the stand-ins of sources with colliding object names
    headers: set[str] = set()
    for paths in deps.values():
        for path in paths:
            real = os.path.realpath(path)
            if (path in config.sources or real.startswith(own)
                    or (real.startswith(system) and not real.startswith(user))):
                continue
            headers.add(os.path.abspath(path))
    return [record_file(p) for p in config.sources] + [record_file(p) for p in sorted(headers)
                                                       if os.path.isfile(p)]


def _ninja_folder() -> str | None:
    """Where ninja is: PATH, else beside the interpreter or in the ninja package (an unactivated venv)."""
    found = shutil.which("ninja")
    if found:
        return os.path.dirname(found)
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja

        candidates.append(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    return next((folder for folder in candidates if os.access(os.path.join(folder, "ninja"), os.X_OK)), None)


def _worker_environment(config: BuildConfig, driver: str, launcher: Sequence[str] = ()) -> dict[str, str]:
    env = dict(os.environ, CXX=driver, TORCH_NO_COMPILER_WRAPPER="1", PYTHONUNBUFFERED="1")
    ninja_folder = _ninja_folder()
    if ninja_folder is None:
        raise BuildError(f"Error building extension {config.name!r}: ninja was not found on PATH, beside "
                         f"{sys.executable} or in the ninja package; install it with 'pip install ninja'",
                         name=config.name)
    env["PATH"] = ninja_folder + os.pathsep + env.get("PATH", "")
    if config.with_cuda:
        cuda_home = _probe.find_cuda_home()
        if cuda_home:
            env["CUDA_HOME"] = cuda_home
    if launcher:
        _add_launcher(env, config, os.path.dirname(driver), launcher)
    return env


def _add_launcher(env: dict[str, str], config: BuildConfig, build_folder: str, launcher: Sequence[str]) -> None:
    """The launcher for nvcc (C and C++ compiles get it from the driver), and the CPU for ccache's key."""
    nvcc = _probe.find_nvcc() if config.with_cuda else None
    if nvcc:
        # torch writes PYTORCH_NVCC into build.ninja as it is: a user's value is already a command line.
        user_value = os.environ.get("PYTORCH_NVCC")
        env["PYTORCH_NVCC"] = f"{shlex.join(launcher)} {user_value if user_value else shlex.quote(nvcc)}"
    cpu = config.environment.get("cpu")
    if cpu is not None:
        # ccache and sccache hash "-march=native" as text, not the CPU it stands for: a cache shared by
        # nodes with different CPUs would hand one node's objects to another. ccache hashes the content
        # of CCACHE_EXTRAFILES, so the CPU the key was computed for goes into one (sccache has no such
        # setting: its storage must then be shared by identical CPUs only).
        path = os.path.join(build_folder, _NATIVE_CPU_FILE)
        atomic_write_bytes(path, f"{cpu}\n".encode())
        env["CCACHE_EXTRAFILES"] = os.pathsep.join(filter(None, (env.get("CCACHE_EXTRAFILES"), path)))


def _run_worker(config: BuildConfig, build_folder: str, driver: str, launcher: Sequence[str],
                compilers: dict[str, list[str]], log_path: str, verbose: bool, ninja_only: bool) -> dict[str, Any]:
    spec = {
        "name": config.name, "sources": list(config.sources), "cflags": list(config.cflags),
        "cuda_cflags": list(config.cuda_cflags), "ldflags": list(config.ldflags),
        "include_paths": list(config.include_paths), "build_directory": build_folder,
        "with_cuda": config.with_cuda, "compilers": compilers, "ninja_only": ninja_only,
    }
    spec_path = os.path.join(build_folder, "cpp_extension_tools_spec.json")
    result_path = os.path.join(build_folder, "cpp_extension_tools_result.json")
    atomic_write_bytes(spec_path, json.dumps(spec, indent=1).encode())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(result_path)
    env = _worker_environment(config, driver, launcher)
    # -S: without torch to import, the worker needs no site-packages, and starts in ~10 ms instead of ~40.
    command = [sys.executable, *(["-S"] if ninja_only else []), _WORKER, spec_path, result_path, str(os.getpid())]
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        process = subprocess.Popen(command, cwd=build_folder, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, text=True, errors="replace")
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                _log_progress(line.rstrip("\n"), verbose)
            returncode = process.wait()
        except BaseException:
            _stop_worker(process)
            raise
    try:
        with open(result_path, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        _stop_worker(process)
        result = {"ok": False, "error": f"the build worker ended without a result ({how})"}
    return result


def _log_progress(line: str, verbose: bool) -> None:
    if not line:
        return
    if verbose:
        logger.info("%s", line)
    else:
        logger.debug("%s", line)


def _stop_worker(process: subprocess.Popen[str]) -> None:
    """Stop the worker and everything it started (the session it leads: ninja, the compilers)."""
    from ._build_worker import kill_session

    kill_session(process.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _build_error(name: str, result: dict[str, Any], log_path: str) -> BuildError:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log_lines = f.read().splitlines()
    except OSError:
        log_lines = []
    errors = [line for line in log_lines if _ERROR_LINE.search(line)][:_MAX_ERROR_LINES]
    failed = [line for line in log_lines if line.startswith("FAILED: ")]
    reason = str(result.get("error", "unknown error")).strip().splitlines()
    headline = reason[0] if reason else "unknown error"
    if "Ninja is required" in headline:
        headline += " (install it with 'pip install ninja')"
    full = [line for line in log_lines if any(text in line for text in _DISK_FULL_MESSAGES)]
    if full:
        headline += (f" -- the disk holding the build folder is full ({full[0].strip()}): free some space "
                     "there, or set CACHED_CPP_EXTENSION_BUILD_DIR to a folder on another disk")
    body = "\n".join(errors) if errors else "\n".join(reason[1:12])
    message = f"Error building extension {name!r}: {headline}"
    if body:
        message += "\n" + body
    message += f"\nFull build log: {log_path}"
    return BuildError(message, name=name, command=failed[0][len("FAILED: "):] if failed else "",
                      log_path=log_path, compiler_output="\n".join(errors))
