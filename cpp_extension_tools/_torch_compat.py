"""Drop-ins for ``torch.utils.cpp_extension.load``/``load_inline`` and ``patch_torch()``, which installs them.

The drop-ins take torch's exact signatures (positionally too) and torch's defaults: no extra flags
unless given, torch's extensions folder as the cache root, a missing include folder only warned
about, whitespace around flags and include paths stripped. What they cannot honour raises
NotImplementedError naming the argument; nothing is silently different.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any

from . import _settings
from ._api import cached_load_torch_cpp_extension
from ._inline import generated_sources, native_options, reject_sycl, write_generated_sources

__all__ = ["TorchPatch", "load", "load_inline", "patch_torch"]

logger = logging.getLogger(__name__)


def load(name: str,
         sources: str | list[str],
         extra_cflags: Iterable[str] | None = None,
         extra_cuda_cflags: Iterable[str] | None = None,
         extra_sycl_cflags: Iterable[str] | None = None,
         extra_ldflags: Iterable[str] | None = None,
         extra_include_paths: Iterable[str] | None = None,
         build_directory: str | os.PathLike[str] | None = None,
         verbose: bool = False,
         with_cuda: bool | None = None,
         with_sycl: bool | None = None,
         is_python_module: bool = True,
         is_standalone: bool = False,
         keep_intermediates: bool = True) -> ModuleType | str:
    """``torch.utils.cpp_extension.load``, cached by content (see :func:`patch_torch`)."""
    reject_sycl(extra_sycl_cflags=extra_sycl_cflags, with_sycl=with_sycl)
    result: ModuleType | str = cached_load_torch_cpp_extension(
        name, sources, extra_include_paths=torch_include_paths(extra_include_paths),
        extra_cflags=torch_flags(extra_cflags), extra_cuda_cflags=torch_flags(extra_cuda_cflags),
        extra_ldflags=torch_flags(extra_ldflags), verbose=verbose, build_directory=torch_cache_root(build_directory),
        with_cuda=with_cuda, **native_options(is_python_module=is_python_module, is_standalone=is_standalone,
                                              keep_intermediates=keep_intermediates))
    return result


def load_inline(name: str,
                cpp_sources: str | Sequence[str],
                cuda_sources: str | Sequence[str] | None = None,
                sycl_sources: str | Sequence[str] | None = None,
                functions: str | Sequence[str] | Mapping[str, str] | None = None,
                extra_cflags: Iterable[str] | None = None,
                extra_cuda_cflags: Iterable[str] | None = None,
                extra_sycl_cflags: Iterable[str] | None = None,
                extra_ldflags: Iterable[str] | None = None,
                extra_include_paths: Iterable[str] | None = None,
                build_directory: str | os.PathLike[str] | None = None,
                verbose: bool = False,
                with_cuda: bool | None = None,
                with_sycl: bool | None = None,
                is_python_module: bool = True,
                with_pytorch_error_handling: bool = True,
                keep_intermediates: bool = True,
                use_pch: bool = False,
                no_implicit_headers: bool = False) -> ModuleType | str:
    """``torch.utils.cpp_extension.load_inline``, cached by content (see :func:`patch_torch`).

    ``use_pch`` only changes where torch would write its precompiled header (torch's install folder,
    which this library never writes); the result is the same either way.
    """
    reject_sycl(sycl_sources=sycl_sources, extra_sycl_cflags=extra_sycl_cflags, with_sycl=with_sycl)
    root = torch_cache_root(build_directory)
    files = generated_sources(cpp_sources, cuda_sources, functions, with_pytorch_error_handling, no_implicit_headers)
    sources = write_generated_sources(name, files, root)
    result: ModuleType | str = cached_load_torch_cpp_extension(
        name, sources, extra_include_paths=torch_include_paths(extra_include_paths),
        extra_cflags=torch_flags(extra_cflags), extra_cuda_cflags=torch_flags(extra_cuda_cflags),
        extra_ldflags=torch_flags(extra_ldflags), verbose=verbose, build_directory=root, with_cuda=with_cuda,
        **native_options(is_python_module=is_python_module, keep_intermediates=keep_intermediates))
    return result


def torch_flags(flags: Iterable[str] | None) -> list[str]:
    """Flags as torch's build sees them: None is none; each one stripped and split as its ninja file's shell
    splits it (torch's own test passes ``"-O0 -Wall"`` as one flag)."""
    if flags is None:
        return []
    if isinstance(flags, str):
        raise TypeError(f"expected a list of flags, got a single str {flags!r}; write [{flags!r}]")
    return [word for flag in flags for word in shlex.split(flag.strip())]


def torch_include_paths(paths: Iterable[str] | None) -> list[str]:
    """Include folders stripped of surrounding whitespace; a missing one is dropped with a warning, as the
    compiler ignores it under torch."""
    result = []
    for path in [] if paths is None else ([paths] if isinstance(paths, str) else paths):
        stripped = os.fspath(path).strip()
        if os.path.isdir(stripped):
            result.append(stripped)
        else:
            warnings.warn(f"extra_include_paths: no such directory: {os.path.abspath(stripped)!r}; ignored "
                          "(torch.utils.cpp_extension passes it on to the compiler, which ignores it)",
                          stacklevel=3)
    return result


def torch_cache_root(build_directory: str | os.PathLike[str] | None) -> str | None:
    """The cache root of a drop-in call: ``build_directory``, else CACHED_CPP_EXTENSION_BUILD_DIR (None: the
    native resolution), else torch's extensions root (TORCH_EXTENSIONS_DIR, else torch's per-user folder)."""
    if build_directory is not None:
        return os.fspath(build_directory)
    if _settings.BUILD_DIR.get():
        return None
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured is not None:
        return configured
    return os.path.join(_torch_default_root(), _torch_build_folder())


def _torch_default_root() -> str:
    # torch.utils.cpp_extension.get_default_build_root, without importing that module (a warm call must not)
    from torch import _appdirs

    folder: str = _appdirs.user_cache_dir(appname="torch_extensions")  # type: ignore[no-untyped-call]
    return os.path.realpath(folder)


def _torch_build_folder() -> str:
    import torch

    if torch.version.hip is not None:
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    return f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{accelerator}"


_REPLACED = ("load", "load_inline")
_DROP_INS: dict[str, Callable[..., Any]] = {"load": load, "load_inline": load_inline}
_originals: dict[str, Any] = {}  # torch's functions while patched
_active_handles = 0


class TorchPatch:
    """What :func:`patch_torch` returns: ``.undo()`` (or leaving a ``with`` block) restores torch's functions
    once every handle that patched is undone. Undoing a handle twice is harmless."""

    def __init__(self) -> None:
        self._active = True

    def undo(self) -> None:
        global _active_handles
        if not self._active:
            return
        self._active = False
        _active_handles -= 1
        if _active_handles == 0:
            _restore()

    def __enter__(self) -> TorchPatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.undo()


def patch_torch() -> TorchPatch:
    """Replace ``torch.utils.cpp_extension.load`` and ``load_inline`` by this library's drop-ins.

    The module's attributes are replaced: ``from torch.utils.cpp_extension import load`` after this call
    gets the drop-in; a name imported before keeps torch's function. Calling it again is harmless. The
    returned handle's ``undo()`` (or leaving it as a context manager) restores torch's functions.

    Call it where the package that loads the ops is imported: spawned workers import that package to
    unpickle their work, so they are patched too. The drop-ins take torch's signatures, positionally too,
    and torch's defaults (no extra flags unless given; torch's extensions folder as the cache root unless
    CACHED_CPP_EXTENSION_BUILD_DIR is set; ``build_directory`` as this call's cache root); an argument they
    cannot honour raises NotImplementedError naming it.
    """
    global _active_handles
    module = _cpp_extension()
    if _active_handles == 0:
        for attribute in _REPLACED:
            _originals[attribute] = getattr(module, attribute)
            setattr(module, attribute, _DROP_INS[attribute])
        logger.debug("torch.utils.cpp_extension.load and load_inline now use the cpp_extension_tools cache")
    _active_handles += 1
    return TorchPatch()


def _restore() -> None:
    module = _cpp_extension()
    for attribute in _REPLACED:
        setattr(module, attribute, _originals.pop(attribute))


def _cpp_extension() -> ModuleType:
    import torch.utils.cpp_extension  # patching needs it; the drop-ins themselves never import it

    return torch.utils.cpp_extension
