"""Drives one build: prepares the build folder, runs the build worker, collects inputs.

The caller holds the module lock. The build itself (ninja and the compilers,
or for CUDA builds torch's load()) runs in a worker process that dies with
this one; this module turns its outcome into either the list of input files
to publish or a BuildError.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import re
import select
import shlex
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from .. import _settings
from . import progress as _progress
from .state import BuildState, invalidate_outdated, object_digests, output_signatures, read_state, save_state
from .._key import COMPILER_VARIABLES, BuildConfig
from .driver import write_driver
from .elf import elf_problem
from .._errors import DISK_FULL_ERRNOS, BuildError
from .._cache.fs import atomic_write_bytes, make_dirs, remove_tree
from .._cache.hashing import FileRecord, digest_file, record_file
from .inputs import (
    PendingProbe,
    SearchPath,
    folder_listing_digest,
    header_kind,
    link_inputs,
    parse_search_path,
    real_paths,
    searched_folders,
    start_search_probe,
    system_prefixes,
    torch_include_folder,
)
from .._cache.manifest import FolderRecord, ToolRecord
from .ninja_file import NINJA_FILE, prepare_ninja_file
from .._env.toolchain import Toolchain
from .._cache.trust import data_file_mode, folder_mode

__all__ = ["BuildOutcome", "run_build"]

logger = logging.getLogger("cpp_extension_tools")

_NATIVE_CPU_FILE = "cpp_extension_tools_native_cpu.txt"
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
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
    folders: tuple[FolderRecord, ...]
    tools: tuple[ToolRecord, ...]
    seconds: float
    details: dict[str, Any]


class _Repairable(Exception):
    """A failure that a damaged build folder can explain: it is wiped and the build runs once more."""

    def __init__(self, error: BuildError, why: str) -> None:
        super().__init__(why)
        self.error = error
        self.why = why


class _InputsChanged(Exception):
    """An input changed while it was being compiled: the binary may hold either version."""

    def __init__(self, path: str, deps: dict[str, list[str]]) -> None:
        super().__init__(path)
        self.path = path
        self.deps = deps


def run_build(config: BuildConfig, toolchain: Toolchain, build_folder: str,
              cache_root: str | None = None) -> BuildOutcome:
    """Build ``config`` with ``toolchain`` in ``build_folder``: the binary and exactly the inputs it was compiled from.

    An input edited during the build makes it run again (at most _BUILD_ATTEMPTS times in all); a
    failure or a damaged output in a reused build folder makes it wipe the folder and build once
    from scratch before the error is reported.
    """
    known: set[str] = set()
    for attempt in range(1, _BUILD_ATTEMPTS + 1):
        try:
            outcome = _build_repairing(config, toolchain, build_folder, known, cache_root)
        except _InputsChanged as changed:
            known.update(p for paths in changed.deps.values() for p in paths)
            if attempt == _BUILD_ATTEMPTS:
                raise BuildError(
                    f"Error building extension {config.name!r}: {changed.path} changed while it was being "
                    f"compiled, {attempt} times in a row; nothing was published. Call again once the edits "
                    "are done.", name=config.name, log_path=os.path.join(build_folder, "build.log")) from None
            logger.warning("%s: %s changed while it was being compiled; building again", config.name, changed.path)
            continue
        from .abi import warn_if_abi_incompatible

        warn_if_abi_incompatible(config.name, outcome.details.get("compiler_versions"))
        return outcome
    raise AssertionError("unreachable")


_BUILD_ATTEMPTS = 3


def _build_repairing(config: BuildConfig, toolchain: Toolchain, build_folder: str, known: set[str],
                     cache_root: str | None) -> BuildOutcome:
    fresh = _prepare_folder(build_folder)
    try:
        return _build_in(config, toolchain, build_folder, known, cache_root)
    except _Repairable as failure:
        if fresh:
            raise failure.error from None
        logger.warning("%s: %s; deleting the build folder %s and building once from scratch", config.name,
                       failure.why, build_folder)
    remove_tree(build_folder)
    _prepare_folder(build_folder)
    try:
        return _build_in(config, toolchain, build_folder, known, cache_root)
    except _Repairable as failure:
        raise failure.error from None


def _prepare_folder(build_folder: str) -> bool:
    """Make the build folder (replacing a plain file in its place); True when it holds nothing yet."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(build_folder).st_mode):
            logger.warning("deleting %s: a build folder was expected there", build_folder)
            os.unlink(build_folder)
    make_dirs(build_folder, folder_mode())
    _remove_stale_baton(build_folder)
    return not os.listdir(build_folder)


def _build_in(config: BuildConfig, toolchain: Toolchain, build_folder: str, known: set[str],
              cache_root: str | None) -> BuildOutcome:
    request = config.request
    state = read_state(build_folder)
    invalidate_outdated(build_folder, state, toolchain.identity())
    link_files, link_folders = link_inputs(request.ldflags)
    recorded = [p for deps in _dict(state.get("objects")).values() if isinstance(deps, dict) for p in deps]
    snapshot = _snapshot(config, [*request.sources, *link_files, *known, *recorded])
    driver = write_driver(build_folder, toolchain.cc_command, toolchain.cxx_command, toolchain.launcher)
    log_path = os.path.join(build_folder, "build.log")
    logger.info("building %s (%d source%s) in %s", config.name, len(request.sources),
                "" if len(request.sources) == 1 else "s", build_folder)
    from .worker_support import with_unique_object_names

    versions = _cached_compiler_versions(state, toolchain)
    probes = _Probes(config, toolchain, build_folder, state, ask_versions=versions is None)
    early = _EarlyWorker()
    try:
        early.start(config, toolchain, build_folder, driver)
        ninja_sources = with_unique_object_names(list(request.sources), build_folder)
        ninja_only = prepare_ninja_file(request, build_folder, ninja_sources, driver)
        if ninja_only:
            probes.start_with_build_flags()
            if cache_root is not None:
                _use_shared_pch(config, toolchain, build_folder, cache_root, ninja_sources)
        before = _stamp_before([*_dict(state.get("folders")), *link_folders,
                                *(os.path.dirname(p) for p in request.sources), *request.include_paths])
        started_ns, started = time.time_ns(), time.monotonic()
        result = _run_worker(config, toolchain, build_folder, driver, log_path, ninja_only, early)
        seconds = time.monotonic() - started
        if not result.get("ok"):
            raise _failure(config, result, log_path, build_folder)
        library = os.path.join(build_folder, request.artifact_file)
        problem = elf_problem(library, f"PyInit_{config.name}" if request.is_python_module else None,
                              executable=request.is_standalone)
        if problem is not None:
            raise _damaged_output(config, library, problem, log_path)
        search = probes.search_paths()
        versions = probes.versions() if versions is None else versions
    finally:
        probes.cancel()
        early.stop()
        _release_pch(build_folder)
    deps = result.get("deps", {})
    inputs, headers = _collect_inputs(config, toolchain, deps, build_folder, search, link_files, snapshot,
                                      started_ns)
    exclude = (torch_include_folder() + os.sep, os.path.realpath(build_folder) + os.sep,
               os.path.abspath(build_folder) + os.sep)
    folders = searched_folders(search.values(), headers, request.sources, link_folders, exclude)
    folder_records, listings = _stamp_folders(folders, started_ns, before)
    save_state(build_folder, {
        "objects": object_digests(deps), "outputs": output_signatures([*deps, *(o + ".d" for o in deps), library]),
        "folders": listings, "kept_depfiles": ninja_only,
        "link_inputs": {p: h for p, h in snapshot.items() if p in link_files and h is not None},
        "compiler_identity": toolchain.identity(), "compiler_versions": versions,
        "builtin_search": {k: list(v.folders) for k, v in search.items() if k.startswith("builtin:")}})
    logger.info("built %s in %.1f s", config.name, seconds)
    details = {"configuration": config.describe(), "compiler_versions": versions,
               "cuda_arch_list": result.get("cuda_arch_list"), "build_folder": build_folder}
    return BuildOutcome(library, inputs, folder_records, toolchain.records, seconds, details)


def _use_shared_pch(config: BuildConfig, toolchain: Toolchain, build_folder: str, cache_root: str,
                    ninja_sources: list[str]) -> None:
    """Rewrite the driver so that the sources that qualify are compiled with the shared PCH (built first if
    needed, while the early worker waits); it stays as written when none does."""
    from .pch import shared_pch_flags

    per_source = shared_pch_flags(config, toolchain, build_folder, cache_root, config.request.sources,
                                  ninja_sources, _ninja_flags(build_folder))
    write_driver(build_folder, toolchain.cc_command, toolchain.cxx_command, toolchain.launcher, per_source)


def _release_pch(build_folder: str) -> None:
    from .pch import release_links

    release_links(build_folder)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _snapshot(config: BuildConfig, paths: list[str]) -> dict[str, str | None]:
    """Content digests of the inputs known before the build (None: absent or unreadable).

    An input that is now a FIFO, socket or device is a BuildError: a compiler opening it would block.
    """
    snapshot: dict[str, str | None] = {}
    for path in dict.fromkeys(paths):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            snapshot[path] = None
            continue
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise BuildError(f"Error building extension {config.name!r}: {path}, which the last build read, is "
                             "not a regular file (a FIFO, socket or device): a compiler reading it would wait "
                             "forever. Put the file back, or remove the #include.", name=config.name)
        try:
            snapshot[path] = digest_file(path)
        except OSError:
            snapshot[path] = None
    return snapshot


# A file or folder changed less than this before the build started may have changed while it ran:
# time stamps come from the kernel's coarse clock, which lags the one time.time_ns() reads.
_CLOCK_MARGIN_NS = 10_000_000


def _failure(config: BuildConfig, result: dict[str, Any], log_path: str, build_folder: str) -> Exception:
    """The BuildError for a failed build, wrapped as _Repairable unless the compiler rejected the user's code."""
    error = _build_error(config.name, result, log_path)
    own = os.path.abspath(build_folder) + os.sep
    located = [line for line in error.compiler_output.splitlines() if _LOCATED_ERROR.match(line)]
    if located and not all(line.startswith(own) for line in located):
        return error  # the compiler's diagnostics point into the user's files: a build from scratch says the same
    return _Repairable(error, f"the build failed ({str(result.get('error', 'unknown error')).splitlines()[0]})"
                       if result.get("error") else "the build failed")


_LOCATED_ERROR = re.compile(r"^[^\s:][^:]*:\d+(?::\d+)?: (?:fatal )?error")


def _damaged_output(config: BuildConfig, library: str, problem: str, log_path: str) -> _Repairable:
    hint = (f"A Python module must define PyInit_{config.name} (in C: PyMODINIT_FUNC PyInit_{config.name}(void), "
            "or use the TORCH_EXTENSION_NAME macro; with pybind11: PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)); "
            "a library of TORCH_LIBRARY operators is no Python module: pass is_python_module=False to load it "
            "with torch.ops.load_library. Nothing was published."
            if "does not define" in problem else "Nothing was published.")
    error = BuildError(f"Error building extension {config.name!r}: the linked binary {library} is unusable: "
                       f"{problem}. {hint}\nFull build log: {log_path}", name=config.name, log_path=log_path)
    return _Repairable(error, f"the linked binary is unusable ({problem})")


# Per language: the compiler whose search path it has (nvcc's host compiles search the C++ compiler's
# folders) and its spelling for -x.
_PROBED_AS = {"c": ("cc", "c"), "c++": ("cxx", "c++"), "cuda": ("cxx", "c++")}


class _Probes:
    """The compiler probes whose answers a build records, started before it so that they run while it does.

    Per language, the folders searched with the build's flags (once build.ninja holds them) and
    ("builtin:<lang>") without them, unless the state recorded those for the same compilers; each
    compiler's ``--version`` unless its version is known. Their inputs (the compilers, the flags
    written in build.ninja) do not change while the build runs.
    """

    def __init__(self, config: BuildConfig, toolchain: Toolchain, build_folder: str, state: BuildState,
                 ask_versions: bool) -> None:
        self._folder = build_folder
        commands = {"cc": toolchain.cc_command, "cxx": toolchain.cxx_command}
        self._languages = {language: (commands[role], spelling) for language, (role, spelling) in
                           _PROBED_AS.items() if language in config.request.languages}
        self._version_commands = toolchain.version_commands() if ask_versions else {}
        self._pending: list[PendingProbe] = []
        cached = _dict(state.get("builtin_search")) if state.get("compiler_identity") == toolchain.identity() else {}
        bare_env = {k: v for k, v in os.environ.items() if k not in COMPILER_VARIABLES}
        self._builtin: dict[str, SearchPath | PendingProbe] = {}
        for language, (command, spelling) in self._languages.items():
            recorded = cached.get(f"builtin:{language}")
            if isinstance(recorded, list) and all(isinstance(f, str) for f in recorded):
                self._builtin[language] = SearchPath(tuple(recorded), ())
            else:
                self._builtin[language] = self._start(start_search_probe(command, [], spelling, build_folder,
                                                                         bare_env))
        self._versions = {role: self._start(PendingProbe([*words, "--version"], build_folder, None, stdout=True))
                          for role, words in self._version_commands.items()}
        self._flagged: dict[str, PendingProbe] = {}

    def _start(self, probe: PendingProbe) -> PendingProbe:
        self._pending.append(probe)
        return probe

    def start_with_build_flags(self) -> None:
        """Start the probes with the flags build.ninja holds now (the worker must not rewrite it)."""
        flags = _ninja_flags(self._folder)
        self._flagged = {language: self._start(start_search_probe(command, flags, spelling, self._folder, None))
                         for language, (command, spelling) in self._languages.items()}

    def search_paths(self) -> dict[str, SearchPath]:
        """Per language, the search paths with and ("builtin:<lang>") without the build's flags."""
        if not self._flagged:  # build.ninja was written by the worker (torch's load())
            self.start_with_build_flags()
        result: dict[str, SearchPath] = {}
        for language in sorted(self._languages):
            result[language] = parse_search_path(self._flagged[language].output(), self._folder)
            builtin = self._builtin[language]
            result[f"builtin:{language}"] = (builtin if isinstance(builtin, SearchPath)
                                             else parse_search_path(builtin.output(), self._folder))
        return result

    def versions(self) -> dict[str, str]:
        """Role -> the version line of each compiler (asked only when the state did not know them)."""
        from .worker_support import version_line

        return {role: version_line(self._version_commands[role], probe.output())
                for role, probe in self._versions.items()}

    def cancel(self) -> None:
        """Kill and reap the probes still running: none outlives the build."""
        for probe in self._pending:
            probe.cancel()


def _ninja_flags(build_folder: str) -> list[str]:
    """The compile flags written in build.ninja (cflags and post_cflags), as words."""
    words: list[str] = []
    with contextlib.suppress(OSError, ValueError), open(os.path.join(build_folder, NINJA_FILE), encoding="utf-8",
                                                         errors="replace") as f:
        for line in f:
            name, _, value = line.partition(" = ")
            if name in ("cflags", "post_cflags", "cuda_cflags", "cuda_post_cflags"):
                words += shlex.split(value.replace("$$", "$"))
    return words


def _collect_inputs(config: BuildConfig, toolchain: Toolchain, deps: dict[str, list[str]], build_folder: str,
                    search: dict[str, SearchPath], link_files: list[str], snapshot: dict[str, str | None],
                    started_ns: int) -> tuple[list[FileRecord], list[str]]:
    """(records of the sources, the user's headers and the linker's inputs; every header read).

    Each record must hold what the compiler read: an input whose content differs from the snapshot
    taken before the build, or, when there was none, that changed after the build started, raises
    _InputsChanged.
    """
    builtin = [f for k, p in search.items() if k.startswith("builtin:") for f in p.folders]
    request = config.request
    system = system_prefixes(builtin, toolchain.cuda_home)
    user = tuple(os.path.realpath(p) + os.sep for p in request.include_paths)
    torch_prefix = torch_include_folder() + os.sep
    own = os.path.realpath(build_folder) + os.sep  # the stand-ins of sources with colliding object names
    headers: set[str] = set()
    tracked: set[str] = set()
    sources = set(request.sources)
    # Each object lists the same headers: every distinct one is looked at once.
    for path, real in real_paths(p for paths in deps.values() for p in paths).items():
        if path in sources or real.startswith(own):
            continue
        headers.add(os.path.abspath(path))
        if header_kind(path, torch_prefix, system, user, real) == "user":
            tracked.add(os.path.abspath(path))
    records = [_checked_record(p, snapshot, started_ns, deps)
               for p in [*request.sources, *sorted(tracked), *link_files] if os.path.isfile(p)]
    return records, sorted(headers)


def _checked_record(path: str, snapshot: dict[str, str | None], started_ns: int,
                    deps: dict[str, list[str]]) -> FileRecord:
    try:
        record = record_file(path, snapshot.get(path))
    except (ValueError, OSError):
        raise _InputsChanged(path, deps) from None
    if path not in snapshot and record.ctime_ns >= started_ns - _CLOCK_MARGIN_NS:
        raise _InputsChanged(path, deps)  # first seen now, and written while the build ran
    return record


def _stamp_before(folders: list[str]) -> dict[str, int]:
    """The mtimes of the folders known to matter, taken before the build, after any racy tick has passed.

    A folder changed within the coarse clock's tick before this moment could change again in the same
    tick, during the build, and keep its mtime: waiting out that tick (at most _CLOCK_MARGIN_NS, only
    when it is that recent) makes every later change show.
    """
    stamps: dict[str, int] = {}
    for folder in dict.fromkeys(folders):
        with contextlib.suppress(OSError):
            stamps[folder] = os.stat(folder).st_mtime_ns
    newest = max(stamps.values(), default=0)
    wait_ns = newest + _CLOCK_MARGIN_NS - time.time_ns()
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9)
    return stamps


def _stamp_folders(folders: list[str], started_ns: int,
                   before: dict[str, int]) -> tuple[tuple[FolderRecord, ...], dict[str, str]]:
    """(the manifest's folder records, the state's listing digests).

    A folder changed while the build ran (its mtime differs from ``before``, or, for one first seen
    now, is newer than the build's start) gets mtime 0 and no listing: the next call rebuilds, and
    recompiles everything.
    """
    records: list[FolderRecord] = []
    listings: dict[str, str] = {}
    for folder in folders:
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            continue
        changed = mtime != before[folder] if folder in before else mtime >= started_ns - _CLOCK_MARGIN_NS
        records.append(FolderRecord(folder, 0 if changed else mtime))
        listings[folder] = "" if changed else folder_listing_digest(folder)
    return tuple(records), listings


def _remove_stale_baton(build_folder: str) -> None:
    # torch's FileBaton ("lock") is left behind when a build is killed, and
    # torch would then wait for it forever. Builds in this folder only run
    # while we hold the module lock, so any baton found now is stale.
    baton = os.path.join(build_folder, "lock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(baton)
        logger.warning("removed a stale torch build lock left by a killed build: %s", baton)


def _cached_compiler_versions(state: BuildState, toolchain: Toolchain) -> dict[str, str] | None:
    """The versions recorded by the last build here, if the compilers are the same files; else None.

    Asking each compiler for ``--version`` costs a few milliseconds per compiler on every rebuild.
    """
    versions = state.get("compiler_versions")
    if not isinstance(versions, dict) or not versions or state.get("compiler_identity") != toolchain.identity():
        return None
    return {str(role): str(line) for role, line in versions.items()}


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


def _worker_environment(config: BuildConfig, toolchain: Toolchain, driver: str) -> dict[str, str]:
    env = dict(os.environ, CXX=driver, TORCH_NO_COMPILER_WRAPPER="1", PYTHONUNBUFFERED="1")
    ninja_folder = _ninja_folder()
    if ninja_folder is None:
        raise BuildError(f"Error building extension {config.name!r}: ninja was not found on PATH, beside "
                         f"{sys.executable} or in the ninja package; install it with 'pip install ninja'",
                         name=config.name)
    env["PATH"] = ninja_folder + os.pathsep + env.get("PATH", "")
    if toolchain.cuda_home:
        env["CUDA_HOME"] = toolchain.cuda_home
    if toolchain.launcher:
        _add_launcher(env, config, toolchain, os.path.dirname(driver))
    return env


def _add_launcher(env: dict[str, str], config: BuildConfig, toolchain: Toolchain, build_folder: str) -> None:
    """The launcher for nvcc (C and C++ compiles get it from the driver), and the CPU for ccache's key."""
    if toolchain.nvcc_line:
        # torch writes PYTORCH_NVCC into build.ninja as it is: a command line.
        env["PYTORCH_NVCC"] = f"{shlex.join(toolchain.launcher)} {toolchain.nvcc_line}"
    cpu = config.environment.get("cpu")
    if cpu is not None:
        # ccache and sccache hash "-march=native" as text, not the CPU it stands for: a cache shared by
        # nodes with different CPUs would hand one node's objects to another. ccache hashes the content
        # of CCACHE_EXTRAFILES, so the CPU the key was computed for goes into one (sccache has no such
        # setting: its storage must then be shared by identical CPUs only).
        path = os.path.join(build_folder, _NATIVE_CPU_FILE)
        atomic_write_bytes(path, f"{cpu}\n".encode())
        env["CCACHE_EXTRAFILES"] = os.pathsep.join(filter(None, (env.get("CCACHE_EXTRAFILES"), path)))


_SPEC_FILE = "cpp_extension_tools_spec.json"
_RESULT_FILE = "cpp_extension_tools_result.json"


class _EarlyWorker:
    """A ninja-only build worker started before build.ninja is generated, waiting for its spec.

    Generating the file imports torch.utils.cpp_extension (~0.1-0.2 s, setuptools mostly); the
    worker's own start (the interpreter, its imports: ~50-90 ms on a loaded 2-core machine) runs
    meanwhile instead of after it. It reads its spec once it gets "g" on its standard input, and
    exits without a result at end-of-file. CUDA builds (torch's load() in the worker, which needs
    site-packages) start theirs when the spec is written.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, config: BuildConfig, toolchain: Toolchain, build_folder: str, driver: str) -> None:
        if not config.request.with_cuda:
            self._process = _start_worker(config, toolchain, build_folder, driver, ninja_only=True, early=True)

    def take(self, ninja_only: bool) -> subprocess.Popen[bytes] | None:
        """The waiting worker, told to read its spec (None where it cannot run this build); the caller stops it."""
        process, self._process = self._process, None
        if process is None or not ninja_only:
            if process is not None:  # torch's generator was not as expected: the worker needs torch
                _stop_worker(process)
            return None
        if process.stdin is not None:
            with contextlib.suppress(OSError):  # a worker that has died already: it leaves no result
                process.stdin.write(b"g")
                process.stdin.close()
        return process

    def stop(self) -> None:
        """Stop the worker if it was never taken (the build failed before it ran)."""
        process, self._process = self._process, None
        if process is not None:
            _stop_worker(process)


def _start_worker(config: BuildConfig, toolchain: Toolchain, build_folder: str, driver: str, ninja_only: bool,
                  early: bool) -> subprocess.Popen[bytes]:
    env = _worker_environment(config, toolchain, driver)
    # -S: without torch to import, the worker needs no site-packages, and starts in ~10 ms instead of ~40.
    command = [sys.executable, *(["-S"] if ninja_only else []), _WORKER, os.path.join(build_folder, _SPEC_FILE),
               os.path.join(build_folder, _RESULT_FILE), str(os.getpid()), *(["--wait"] if early else [])]
    # A team cache: every member must be able to overwrite what the build writes (objects, the log).
    umask = 0o007 if _settings.SHARED_CACHE.get() else -1
    return subprocess.Popen(command, cwd=build_folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.PIPE if early else subprocess.DEVNULL, start_new_session=True,
                            umask=umask)


def _run_worker(config: BuildConfig, toolchain: Toolchain, build_folder: str, driver: str, log_path: str,
                ninja_only: bool, early: _EarlyWorker) -> dict[str, Any]:
    request = config.request
    # The compilers' versions are asked by this process (_Probes), while the worker builds.
    spec = {**request.to_json(), "build_directory": build_folder, "ninja_only": ninja_only, "compilers": {}}
    spec_path = os.path.join(build_folder, _SPEC_FILE)
    result_path = os.path.join(build_folder, _RESULT_FILE)
    atomic_write_bytes(spec_path, json.dumps(spec, indent=1).encode())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(result_path)
    progress = (_progress.BuildProgress(config.name, len(request.sources), log_path)
                if _progress.enabled(request.verbose) else None)
    with _new_log(log_path) as log:
        process = early.take(ninja_only) or _start_worker(config, toolchain, build_folder, driver, ninja_only,
                                                          early=False)
        try:
            _relay_output(process, log, request.verbose, progress)
        finally:
            # Whatever the worker's end, nothing it started may outlive it: a compiler orphaned by a
            # killed ninja could write into the objects of a later build. The worker is not reaped
            # before this, so its pid (the session's id) cannot have been reused.
            _stop_worker(process)
    returncode = process.returncode if process.returncode is not None else -9
    try:
        with open(result_path, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        result = {"ok": False, "error": f"the build worker ended without a result ({how})"}
    if progress is not None:
        progress.end(bool(result.get("ok")))
    return result


def _relay_output(process: subprocess.Popen[bytes], log: TextIO, verbose: bool,
                  progress: _progress.BuildProgress | None = None) -> None:
    """Copy the worker's output to the log, the logger and ``progress`` until the worker has exited.

    Ends when the worker exits, not at end-of-file: a process forked by another thread of the caller
    while Popen held the pipe's write end open would keep the pipe open for as long as it lives.
    """
    if process.stdout is None:
        raise RuntimeError("the build worker's output is not a pipe")
    fd = process.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    exited = False
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2 if exited else 0.5)
        data = os.read(fd, 65536) if ready else b""
        pending += decoder.decode(data, final=not data and (exited or bool(ready)))
        *lines, pending = pending.split("\n")
        for line in lines:
            log.write(line + "\n")
            _log_progress(line, verbose)
            if progress is not None:
                progress.feed(line)
        log.flush()
        if progress is not None:
            progress.tick()
        if ready and data:
            continue
        if exited or (ready and not data):  # drained after the exit, or end-of-file
            break
        exited = _has_exited(process.pid)
    if pending:
        log.write(pending + "\n")
        _log_progress(pending, verbose)
    _wait_unreaped(process.pid)


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, leaving it unreaped."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _wait_unreaped(pid: int) -> None:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _new_log(path: str) -> TextIO:
    """The build log, created anew with the cache's data-file mode (another team member may own the old one)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, data_file_mode())
    os.fchmod(fd, data_file_mode())
    return open(fd, "w", encoding="utf-8", errors="replace")


def _log_progress(line: str, verbose: bool) -> None:
    if not line:
        return
    if verbose:
        logger.info("%s", line)
    else:
        logger.debug("%s", line)


def _stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Stop the worker and everything it started (the session it leads: ninja, the compilers), then reap it."""
    from .worker_support import kill_session

    kill_session(process.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    for pipe in (process.stdout, process.stdin):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _build_error(name: str, result: dict[str, Any], log_path: str) -> BuildError:
    """The error for a failed build: what failed first, then the lines of the log that say why and where."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log_lines = _without_tracebacks(f.read().splitlines())
    except OSError:
        log_lines = []
    failed = _failed_edge(log_lines)
    errors = [line for line in log_lines if _is_error_line(line)][:_MAX_ERROR_LINES]
    reason = _own_prefix_removed(name, str(result.get("error", "unknown error")).strip()).splitlines()
    headline = reason[0] if reason and reason[0] else "the build failed"
    if failed is not None:  # torch's own error says no more than "Error building extension 'x'"
        headline = _failed_step(*failed, headline if reason and reason[0] else "ninja failed")
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
    return BuildError(message, name=name, command=failed[1] if failed is not None else "",
                      log_path=log_path, compiler_output="\n".join(errors))


# ld's and gcc's lines that say what failed and where (besides _ERROR_LINE's): "b.o: in function `f':".
_LINKER_CONTEXT = re.compile(r"^\S*\bld(?:\.\w+)?: |multiple definition of")
_NOT_DIAGNOSTIC = re.compile(r"^\[\d+/\d+\] |^FAILED: |^ninja: |^[\w.]+(?:Error|Exception|Exit)\b.*: ")
_LINKER_WARNING = re.compile(r"^\S*\bld(?:\.\w+)?: warning: ")
_FAILED = re.compile(r"^FAILED: (?:\[code=\d+\] )?(?P<targets>.*?)\s*$")


def _is_error_line(line: str) -> bool:
    if _NOT_DIAGNOSTIC.search(line) or _LINKER_WARNING.search(line):
        return False
    return bool(_ERROR_LINE.search(line) or _LINKER_CONTEXT.search(line))


def _without_tracebacks(lines: list[str]) -> list[str]:
    """The log without Python tracebacks (the worker's own, torch's): they say where our code noticed the
    failure, not why it failed."""
    kept: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            inside = True
        elif inside and not line.startswith((" ", "\t")):
            inside = False  # the exception's own line ends the traceback; it is dropped too
        elif not inside and not line.startswith(("The above exception was", "During handling of the above")):
            kept.append(line)
    return kept


def _failed_edge(lines: list[str]) -> tuple[str, str] | None:
    """(targets, command) of the first step ninja reported as FAILED; ninja prints the command on the next line."""
    for index, line in enumerate(lines):
        match = _FAILED.match(line)
        if match:
            command = lines[index + 1].strip() if index + 1 < len(lines) else ""
            return match["targets"], command
    return None


def _failed_step(targets: str, command: str, reason: str) -> str:
    words = command.split()
    if "-c" in words[:-1]:
        return f"compiling {words[words.index('-c') + 1]} failed ({reason})"
    if targets.endswith(".so"):
        return f"linking {targets} failed ({reason})"
    return f"building {targets} failed ({reason})"


def _own_prefix_removed(name: str, reason: str) -> str:
    """The worker's error without its "Error building extension 'x'" prefix (the message starts with its own)."""
    for prefix in (f"Error building extension {name!r}", f'Error building extension "{name}"'):
        if reason.startswith(prefix):
            rest = reason[len(prefix):].lstrip(": ")
            return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest
    return reason
