"""cached_load_torch_cpp_extension: check, lock, check again, build, publish, load."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Literal, overload

from . import _settings
from ._arguments import BuildRequest, check_prebuilt_kind, validated_request
from ._cache.hashing import digest_fd
from ._cache.manifest import Manifest
from ._cache.root import resolve_root
from ._cache.store import FailureSnapshot, ModuleStore, sources_digest
from ._cache.trust import open_trusted_stat
from ._errors import BuildError, LockTimeoutError, cache_not_writable, is_cache_write_error
from ._forksafe import ForkSafeLock
from ._key import BuildConfig, make_config
from ._loader import import_extension, import_from_fd, load_library_from_fd, memo_get, memo_put

if TYPE_CHECKING:
    from ._env.toolchain import Toolchain  # resolved on the cold path only

__all__ = ["cached_load_torch_cpp_extension"]

logger = logging.getLogger("cpp_extension_tools")

_thread_locks: dict[str, ForkSafeLock] = {}
_thread_locks_guard = ForkSafeLock()


@overload
def cached_load_torch_cpp_extension(
    name: str,
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *positional: object,
    extra_include_paths: Iterable[str | os.PathLike[str]] = ...,
    extra_cflags: Iterable[str] | None = ...,
    extra_cuda_cflags: Iterable[str] | None = ...,
    extra_ldflags: Iterable[str] = ...,
    verbose: bool = ...,
    build_directory: str | os.PathLike[str] | None = ...,
    with_cuda: bool | None = ...,
    prebuilt_path: str | os.PathLike[str] | None = ...,
    is_python_module: Literal[True] = ...,
    is_standalone: Literal[False] = ...,
    keep_intermediates: bool = ...,
    use_pch: bool = ...,
) -> ModuleType: ...


@overload
def cached_load_torch_cpp_extension(
    name: str,
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *positional: object,
    extra_include_paths: Iterable[str | os.PathLike[str]] = ...,
    extra_cflags: Iterable[str] | None = ...,
    extra_cuda_cflags: Iterable[str] | None = ...,
    extra_ldflags: Iterable[str] = ...,
    verbose: bool = ...,
    build_directory: str | os.PathLike[str] | None = ...,
    with_cuda: bool | None = ...,
    prebuilt_path: str | os.PathLike[str] | None = ...,
    is_python_module: bool = ...,
    is_standalone: bool = ...,
    keep_intermediates: bool = ...,
    use_pch: bool = ...,
) -> ModuleType | str: ...


def cached_load_torch_cpp_extension(
    name: str,
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *positional: object,  # empty on a correct call; caught to say why (torch's order differs)
    extra_include_paths: Iterable[str | os.PathLike[str]] = (),
    extra_cflags: Iterable[str] | None = None,
    extra_cuda_cflags: Iterable[str] | None = None,
    extra_ldflags: Iterable[str] = (),
    verbose: bool = False,
    build_directory: str | os.PathLike[str] | None = None,
    with_cuda: bool | None = None,
    prebuilt_path: str | os.PathLike[str] | None = None,
    is_python_module: bool = True,
    is_standalone: bool = False,
    keep_intermediates: bool = True,
    use_pch: bool = True,
) -> ModuleType | str:
    """Build (once) and import a C, C++ or CUDA extension module.

    Every argument after ``sources`` is keyword-only (torch's ``load`` takes them in another order,
    so a positional call would mean something else; ``patch_torch()`` gives torch's order).

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

    What is built, as in torch's ``load``: ``is_python_module=True`` (the
    default) builds a Python module and returns it, imported.
    ``is_python_module=False`` builds a plain shared library (operators
    registered with ``TORCH_LIBRARY``), cached the same way, loads it into the
    process with ``torch.ops.load_library`` (once per process) and returns its
    path. ``is_standalone=True`` (with ``is_python_module=False``) links an
    executable, cached the same way, and returns its path without running it.
    ``keep_intermediates=False`` deletes the build folder (object files, the
    log) once the binary is published: a later edit then recompiles every
    source. ``use_pch=False`` does not use the shared precompiled torch header
    for this call. Neither of those two changes the binary or the cache key.

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
    if positional:
        raise _positional_error(len(positional))
    request = validated_request(name, sources, extra_include_paths, extra_cflags, extra_cuda_cflags, extra_ldflags,
                                verbose, with_cuda, is_python_module=is_python_module, is_standalone=is_standalone,
                                keep_intermediates=keep_intermediates, use_pch=use_pch)
    if prebuilt_path is not None:
        check_prebuilt_kind(request)
    return load_request(request, build_directory, prebuilt_path)


def _positional_error(count: int) -> TypeError:
    return TypeError(
        f"cached_load_torch_cpp_extension() takes 2 positional arguments (name, sources) but {count + 2} were "
        "given: the arguments after `sources` are keyword-only. torch.utils.cpp_extension.load takes them in "
        "another order (name, sources, extra_cflags, extra_cuda_cflags, extra_ldflags, extra_include_paths, "
        "build_directory, verbose, ...), which is the likely cause: name each one (extra_cflags=[...]), or "
        "keep torch's call and use cpp_extension_tools.patch_torch()")


def load_request(request: BuildRequest, build_directory: str | os.PathLike[str] | None,
                 prebuilt_path: str | os.PathLike[str] | None = None) -> ModuleType | str:
    """cached_load_torch_cpp_extension after its argument checks (the prebuilt builder starts here too)."""
    verbose = request.verbose
    prebuilt_skipped, prebuilt_there = "", False
    if prebuilt_path is not None:
        prebuilt, prebuilt_skipped, prebuilt_there = _load_prebuilt(request.name, prebuilt_path, verbose)
        if prebuilt is not None:
            return prebuilt
    config = make_config(request)
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
    toolchain = _allow_build(config, prebuilt_skipped, root, warn=prebuilt_there)
    return _build_and_load(store, config, toolchain)


def _allow_build(config: BuildConfig, prebuilt_skipped: str, root: str, warn: bool) -> Toolchain:
    """The tools to build with; refuse to build when JIT is disabled; say why a prebuilt binary was not
    used when it costs a build."""
    from ._cache.prebuilt import DISABLE_JIT_ENV, jit_disabled  # not on the warm path
    from ._env.toolchain import resolve_toolchain

    if jit_disabled():
        raise BuildError(
            f"{config.name!r} is not cached in {root} and building it is disabled ({DISABLE_JIT_ENV}=1): "
            f"{prebuilt_skipped or 'no prebuilt_path was given'}. Install a wheel with a prebuilt binary for "
            f"this environment, unset {DISABLE_JIT_ENV} to build it here, or fill the cache ahead of time "
            "(cpp-extension-tools build).", name=config.name)
    # Before the lock and before anything is written: a machine that cannot build says so at once.
    toolchain = resolve_toolchain(config.request)
    if prebuilt_skipped and warn:  # said once per build; not for a source checkout, which has no prebuilt binary
        logger.warning("%s: building from source instead of using the prebuilt binary: %s", config.name,
                       prebuilt_skipped)
    return toolchain


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
    from ._cache.prebuilt import find_prebuilt

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


class _BinaryChanged(ImportError):
    """The binary opened for loading is not the one its manifest describes (replaced since the lookup)."""


def _load(store: ModuleStore, config: BuildConfig, manifest: Manifest) -> ModuleType | str:
    """Load the artifact's binary: the file checked (trust and content) is the file dlopen maps."""
    path = store.library_path(manifest)
    fd, st = open_trusted_stat(store.root, path)
    try:
        if not manifest.library.stat_matches(st) and (
                st.st_size != manifest.library.size or digest_fd(fd) != manifest.library.sha256):
            raise _BinaryChanged(f"{path} differs from its manifest", name=config.name, path=path)
    except BaseException:
        os.close(fd)
        raise
    module = _open_binary(config, fd, path, st)
    memo_put(store.folder, config.key, module, manifest)
    store.note_use(manifest)
    return module


def _open_binary(config: BuildConfig, fd: int, path: str, st: os.stat_result) -> ModuleType | str:
    """The checked binary open at ``fd``, as the call returns it: imported, loaded as a library, or a path."""
    request = config.request
    if request.is_python_module:
        return import_from_fd(config.name, fd, path, st)
    if request.is_standalone:
        os.close(fd)  # checked against its manifest; the caller runs it by its path
        return path
    return load_library_from_fd(fd, path, st)


def _thread_lock(folder: str) -> ForkSafeLock:
    with _thread_locks_guard:
        lock = _thread_locks.get(folder)
        if lock is None:
            lock = _thread_locks[folder] = ForkSafeLock()
        return lock


def _build_and_load(store: ModuleStore, config: BuildConfig, toolchain: Toolchain) -> ModuleType | str:
    from ._cache.lock import call_deadline, module_lock  # the slow path's modules stay out of the warm path

    # One deadline for the whole call: waiting for this process's other threads counts too. Taking it
    # also checks every setting, before anything is written.
    deadline = call_deadline()
    # Taken before waiting: a failure recorded while we wait was the build we
    # waited for, and is re-raised instead of being compiled again.
    failure_before = store.failure_snapshot(config)
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
                manifest = _build_locked(store, config, toolchain, failure_before, deadline)
            return _load(store, config, manifest)  # under the lock: pruning cannot remove it meanwhile
    finally:
        thread_lock.release()


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (-1: no limit, as threading's acquire wants it; else at least 0)."""
    if math.isinf(deadline):
        return -1 if deadline > 0 else 0.0
    return max(0.0, deadline - time.monotonic())


def _build_locked(store: ModuleStore, config: BuildConfig, toolchain: Toolchain,
                  failure_before: FailureSnapshot, deadline: float) -> Manifest:
    digest = sources_digest(config)
    store.raise_if_failed_since(config, failure_before, digest)

    def build() -> Manifest:
        from ._build.run import run_build

        try:
            outcome = run_build(config, toolchain, store.build_folder(config), cache_root=store.root)
        except BuildError as error:
            store.write_failure(config, digest, error)
            raise
        except OSError as error:
            if is_cache_write_error(error, store.root):  # the build's own files (log, driver, state)
                raise cache_not_writable(error, store.root) from error
            raise
        return store.publish(config, outcome)

    tier = None
    if _settings.REMOTE_CACHE.is_set():  # the remote tier is imported only when configured, on a local miss
        from ._remote.tier import open_tier

        tier = open_tier()
    if tier is None:
        manifest = build()
    else:
        try:
            manifest = tier.obtain(store, config, digest, deadline, build)
        finally:
            tier.close()
    store.clear_failure(config)
    if not config.request.keep_intermediates:
        _remove_intermediates(store.build_folder(config))
    _prune_after_build(store, config, manifest)
    return manifest


def _remove_intermediates(build_folder: str) -> None:
    """keep_intermediates=False: the published artifact is all that stays (under the lock, like the build)."""
    from ._cache.fs import remove_tree

    try:
        remove_tree(build_folder)
    except OSError as error:  # the artifact is published: a leftover folder costs only space
        logger.warning("could not delete the build folder %s (keep_intermediates=False): %s", build_folder, error)


def _prune_after_build(store: ModuleStore, config: BuildConfig, manifest: Manifest) -> None:
    """Keep the cache under CACHED_CPP_EXTENSION_MAX_SIZE, if set; never fails the build."""
    from ._cache.prune import prune

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
