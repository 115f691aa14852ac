"""cached_load_torch_cpp_extension: check, lock, check again, build, publish, load."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from types import ModuleType

from . import _settings
from ._config import BuildConfig, make_config
from ._errors import BuildError, LockTimeoutError, cache_not_writable, is_cache_write_error
from ._flags import absolute_path_flags, get_default_cpp_cflags, get_default_cuda_cflags
from ._forksafe import ForkSafeLock
from ._hashing import digest_fd
from ._loader import import_extension, import_from_fd, memo_get, memo_put
from ._manifest import Manifest
from ._root import resolve_root
from ._sources import language_of, validate_flags, validate_include_paths, validate_name, validate_sources
from ._store import ModuleStore, sources_digest
from ._trust import open_trusted

__all__ = ["cached_load_torch_cpp_extension"]

logger = logging.getLogger("cpp_extension_tools")

_thread_locks: dict[str, ForkSafeLock] = {}
_thread_locks_guard = ForkSafeLock()


def cached_load_torch_cpp_extension(
    name: str,
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    extra_include_paths: Iterable[str | os.PathLike[str]] = (),
    extra_cflags: Iterable[str] | None = None,
    extra_cuda_cflags: Iterable[str] | None = None,
    extra_ldflags: Iterable[str] = (),
    verbose: bool = False,
    build_directory: str | os.PathLike[str] | None = None,
    with_cuda: bool | None = None,
    prebuilt_path: str | os.PathLike[str] | None = None,
) -> ModuleType:
    """Build (once) and import a C, C++ or CUDA extension module.

    The binary is cached under ``build_directory``, else the folder in
    ``CACHED_CPP_EXTENSION_BUILD_DIR``, else ``./cached_cpp_extensions``. It
    is rebuilt only when something it depends on changed: sources, included
    headers, flags, compilers, torch, Python, the CPU (with -march=native) or
    the CUDA target. Concurrent callers in any number of processes build it
    once. ``extra_cflags=None`` means :func:`get_default_cpp_cflags`.

    ``prebuilt_path``: a folder that may hold a binary built into a wheel
    (cpp_extension_tools.setuptools_build). It is loaded, without any compiler,
    when it was built for this torch, Python, CPU baseline and GPU; otherwise
    the module is built (one log line says why), or, with
    ``CACHED_CPP_EXTENSION_DISABLE_JIT=1``, a BuildError says why instead.

    Raises:
        BuildError: compiling or linking failed (the message shows the first
            compiler errors and the path of the full log), or building is
            not possible here (CUDA sources with a CPU-only torch or without
            nvcc, ninja or a compiler launcher missing, JIT disabled).
        LockTimeoutError: another process held the module's build lock for
            longer than ``CACHED_CPP_EXTENSION_LOCK_TIMEOUT`` seconds.
        UnsafeCacheError: the binary, or a folder between it and the cache
            root, could have been replaced by another user.
        CacheNotWritableError: the cache root cannot be created or written.
        TypeError, ValueError, FileNotFoundError: an argument is wrong; the
            message names it. Nothing has been built or written then. A
            FileNotFoundError also says when the C or C++ compiler (``CC``,
            ``CXX``) is not found.
    """
    arguments = _validated_arguments(name, sources, extra_include_paths, extra_cflags, extra_cuda_cflags,
                                     extra_ldflags, verbose, with_cuda)
    verbose = arguments.verbose
    prebuilt_skipped, prebuilt_there = "", False
    if prebuilt_path is not None:
        module, prebuilt_skipped, prebuilt_there = _load_prebuilt(arguments.name, prebuilt_path, verbose)
        if module is not None:
            return module
    config = arguments.config()
    root = resolve_root(build_directory)
    store = ModuleStore(root, config.name)
    module = memo_get(store.folder, config.key)
    if module is not None:
        return module
    if verbose:
        _make_verbose_output_visible()
    log = logger.info if verbose else logger.debug
    log("%s: cache root %s, configuration %s", config.name, root, config.short_key)
    manifest, reason = store.find(config)
    if manifest is not None:
        log("%s: cache hit, artifact %s", config.name, manifest.artifact_id)
        try:
            return _load(store, config, manifest)
        except (_BinaryChanged, FileNotFoundError, NotADirectoryError) as error:
            # Pruned (or cleared, or damaged) between the lookup and the dlopen: look again under the
            # lock, which pruning holds while it deletes.
            log("%s: artifact %s changed while loading (%s); looking again", config.name, manifest.artifact_id,
                error)
    else:
        log("%s: cache miss (%s)", config.name, reason)
    _allow_build(config, prebuilt_skipped, root, warn=prebuilt_there)
    return _build_and_load(store, config, verbose)


def _allow_build(config: BuildConfig, prebuilt_skipped: str, root: str, warn: bool) -> None:
    """Refuse to build when JIT is disabled; say why a prebuilt binary was not used when it costs a build."""
    from ._prebuilt import DISABLE_JIT_ENV, jit_disabled  # not on the warm path

    if config.with_cuda:
        _require_cuda_toolchain(config.name)
    if jit_disabled():
        raise BuildError(
            f"{config.name!r} is not cached in {root} and building it is disabled ({DISABLE_JIT_ENV}=1): "
            f"{prebuilt_skipped or 'no prebuilt_path was given'}. Install a wheel with a prebuilt binary for "
            f"this environment, unset {DISABLE_JIT_ENV} to build it here, or fill the cache ahead of time "
            "(cpp-extension-tools build).", name=config.name)
    if prebuilt_skipped and warn:  # said once per build; not for a source checkout, which has no prebuilt binary
        logger.warning("%s: building from source instead of using the prebuilt binary: %s", config.name,
                       prebuilt_skipped)


class _Arguments:
    """Checked arguments; the configuration (which needs the compilers) is made only when needed."""

    def __init__(self, name: str, sources: list[str], include_paths: list[str], cflags: list[str],
                 cuda_cflags: list[str], ldflags: list[str], verbose: bool, with_cuda: bool) -> None:
        self.name = name
        self.sources = sources
        self.include_paths = include_paths
        self.cflags = cflags
        self.cuda_cflags = cuda_cflags
        self.ldflags = ldflags
        self.verbose = verbose
        self.with_cuda = with_cuda

    def config(self) -> BuildConfig:
        return make_config(self.name, self.sources, self.include_paths, self.cflags, self.cuda_cflags,
                           self.ldflags, self.with_cuda)


def _validated_arguments(name: object, sources: object, include_paths: object, cflags: object,
                         cuda_cflags: object, ldflags: object, verbose: object, with_cuda: object) -> _Arguments:
    checked_name = validate_name(name)
    checked_sources = validate_sources(sources)
    checked_includes = validate_include_paths(include_paths)
    # Relative paths in flags mean the caller's working directory, not the build folder the compilers run in.
    checked_cflags = get_default_cpp_cflags() if cflags is None else absolute_path_flags(
        validate_flags("extra_cflags", cflags))
    checked_cuda_cflags = (get_default_cuda_cflags() if cuda_cflags is None
                           else absolute_path_flags(validate_flags("extra_cuda_cflags", cuda_cflags)))
    checked_ldflags = absolute_path_flags(validate_flags("extra_ldflags", ldflags), linker=True)
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose: expected a bool, got {type(verbose).__name__}")
    has_cuda_sources = any(language_of(s) == "cuda" for s in checked_sources)
    if with_cuda is None:
        with_cuda = has_cuda_sources
    elif not isinstance(with_cuda, bool):
        raise TypeError(f"with_cuda: expected a bool or None, got {type(with_cuda).__name__}")
    elif has_cuda_sources and not with_cuda:
        raise ValueError("with_cuda: False, but sources include .cu files; pass with_cuda=None or True")
    return _Arguments(checked_name, checked_sources, checked_includes, checked_cflags, checked_cuda_cflags,
                      checked_ldflags, verbose, with_cuda)


_prebuilt_modules: dict[str, ModuleType] = {}
_prebuilt_guard = ForkSafeLock()  # threads loading the same binary get one module object


def _load_prebuilt(name: str, directory: str | os.PathLike[str],
                   verbose: bool) -> tuple[ModuleType | None, str, bool]:
    """(the prebuilt module, "", True) or (None, why it was skipped, whether a prebuilt binary is there)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"prebuilt_path: expected a path or None, got {type(directory).__name__}")
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.exists(os.path.join(directory, f"{name}.json")):  # the usual case outside wheels: one stat
        return None, f"no prebuilt binary for {name!r} in {directory}", False
    from ._prebuilt import find_prebuilt

    library, why = find_prebuilt(directory, name)
    if library is None:
        logger.debug("%s: not using a prebuilt binary: %s", name, why)
        return None, why, True
    with _prebuilt_guard:
        module = _prebuilt_modules.get(library)
        if module is None:
            module = _prebuilt_modules[library] = import_extension(name, library)
    (logger.info if verbose else logger.debug)("%s: loaded the prebuilt binary %s", name, library)
    return module, "", True


def _require_cuda_toolchain(name: str) -> None:
    import torch

    from ._cuda import find_nvcc

    if torch.version.cuda is None:
        raise BuildError(
            f"cannot build {name!r} with CUDA: torch {torch.__version__} is a CPU-only build (torch.version.cuda "
            "is None), and torch.utils.cpp_extension compiles .cu files only with a CUDA build of torch. "
            "Install a CUDA build of torch, or leave the .cu sources out on this machine.", name=name)
    if find_nvcc() is None:
        raise BuildError(
            f"cannot build {name!r} with CUDA: nvcc was not found (looked at PYTORCH_NVCC, CUDA_HOME, "
            "CUDA_PATH, PATH and /usr/local/cuda). Install the CUDA toolkit or set CUDA_HOME.", name=name)


class _BinaryChanged(ImportError):
    """The binary opened for loading is not the one its manifest describes (replaced since the lookup)."""


def _load(store: ModuleStore, config: BuildConfig, manifest: Manifest) -> ModuleType:
    """Load the artifact's binary: the file checked (trust and content) is the file dlopen maps."""
    path = store.library_path(manifest)
    fd = open_trusted(store.root, path)
    try:
        st = os.fstat(fd)
        if not manifest.library.stat_matches(st) and (
                st.st_size != manifest.library.size or digest_fd(fd) != manifest.library.sha256):
            raise _BinaryChanged(f"{path} differs from its manifest", name=config.name, path=path)
    except BaseException:
        os.close(fd)
        raise
    module = import_from_fd(config.name, fd, path)
    memo_put(store.folder, config.key, module, manifest)
    store.note_use(manifest)
    return module


def _thread_lock(folder: str) -> ForkSafeLock:
    with _thread_locks_guard:
        lock = _thread_locks.get(folder)
        if lock is None:
            lock = _thread_locks[folder] = ForkSafeLock()
        return lock


def _build_and_load(store: ModuleStore, config: BuildConfig, verbose: bool) -> ModuleType:
    from ._locking import call_deadline, module_lock  # the slow path's modules stay out of the warm path

    # One deadline for the whole call: waiting for this process's other threads counts too. Taking it
    # also checks every setting, before anything is written.
    deadline = call_deadline()
    # Read before waiting: a failure recorded while we wait was the build we
    # waited for, and is re-raised instead of being compiled again.
    failure_before = store.read_failure(config)
    thread_lock = _thread_lock(store.folder)
    if not thread_lock.acquire(timeout=_remaining(deadline)):
        raise LockTimeoutError(
            f"gave up waiting for another thread of this process to build {config.name!r} ({store.folder}) after "
            f"{_settings.LOCK_TIMEOUT.get():.0f} s; to wait longer set {_settings.LOCK_TIMEOUT.name} (seconds)")
    try:
        module = memo_get(store.folder, config.key)
        if module is not None:
            return module
        store.ensure_folders(config)
        with module_lock(store.lock_path, store.owner_path, f"{config.name!r} ({store.folder})", store.root,
                         deadline=deadline):
            store.remove_leftovers()
            manifest, _ = store.find(config, repair=True)
            if manifest is None:
                manifest = _build_locked(store, config, verbose, failure_before)
            return _load(store, config, manifest)  # under the lock: pruning cannot remove it meanwhile
    finally:
        thread_lock.release()


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (-1: no limit, as threading's acquire wants it; else at least 0)."""
    if math.isinf(deadline):
        return -1 if deadline > 0 else 0.0
    return max(0.0, deadline - time.monotonic())


def _build_locked(store: ModuleStore, config: BuildConfig, verbose: bool,
                  failure_before: object) -> Manifest:
    digest = sources_digest(config)
    failure = store.read_failure(config)
    if (failure is not None and failure.sources_digest == digest
            and (failure_before is None or getattr(failure_before, "attempt", None) != failure.attempt)):
        logger.info("%s: the build this process waited for failed; not building again", config.name)
        raise failure.error
    from ._builder import run_build

    try:
        outcome = run_build(config, store.build_folder(config), verbose)
    except BuildError as error:
        store.write_failure(config, digest, error)
        raise
    except OSError as error:
        if is_cache_write_error(error, store.root):  # the build's own files (log, driver, state)
            raise cache_not_writable(error, store.root) from error
        raise
    manifest = store.publish(config, outcome)
    store.clear_failure(config)
    _prune_after_build(store, config, manifest)
    return manifest


def _prune_after_build(store: ModuleStore, config: BuildConfig, manifest: Manifest) -> None:
    """Keep the cache under CACHED_CPP_EXTENSION_MAX_SIZE, if set; never fails the build."""
    from ._prune import prune

    max_size = _settings.MAX_SIZE.get()  # checked valid when the call's deadline was taken
    if max_size is None:
        return
    try:
        report = prune(store.root, max_size=max_size, held_module=store.name,
                       protect={manifest.artifact_id, config.short_key})
    except OSError as error:
        logger.warning("pruning the cache to %s=%s failed: %s", _settings.MAX_SIZE.name, _settings.MAX_SIZE.raw(),
                       error)
        return
    if report.removed:
        logger.info("%s: pruned %s", config.name, report.summary())


_verbose_handler: logging.Handler | None = None


def _make_verbose_output_visible() -> None:
    """verbose=True must show something even when the application configured no logging."""
    global _verbose_handler
    configured = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if _verbose_handler is not None or configured or logging.getLogger().handlers:
        return
    _verbose_handler = logging.StreamHandler(sys.stderr)
    _verbose_handler.setFormatter(logging.Formatter("[cpp_extension_tools] %(message)s"))
    logger.addHandler(_verbose_handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
