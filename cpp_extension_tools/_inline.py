"""cached_load_inline: torch's ``load_inline`` on top of the cache.

The sources are generated as torch generates them (the implicit headers, the pybind11 bindings of
``functions``), written once into the cache root under the digest of their text, and handed to
:func:`cached_load_torch_cpp_extension` as files. A warm call hashes the strings and stats the files;
it reads and hashes no file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from . import _settings
from ._api import cached_load_torch_cpp_extension
from ._cache.root import resolve_root
from ._cache.store import ModuleStore

__all__ = ["cached_load_inline", "generated_sources", "native_options", "write_generated_sources"]

_CPP_FILE = "main.cpp"  # torch's names, so that build logs and error messages read the same
_CUDA_FILE = "cuda.cu"


def cached_load_inline(
    name: str,
    cpp_sources: str | Sequence[str],
    cuda_sources: str | Sequence[str] | None = None,
    functions: str | Sequence[str] | Mapping[str, str] | None = None,
    extra_cflags: Iterable[str] | None = None,
    extra_cuda_cflags: Iterable[str] | None = None,
    extra_ldflags: Iterable[str] | None = None,
    extra_include_paths: Iterable[str | os.PathLike[str]] | None = None,
    build_directory: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    with_cuda: bool | None = None,
    is_python_module: bool = True,
    with_pytorch_error_handling: bool = True,
    keep_intermediates: bool = True,
    use_pch: bool = False,
    no_implicit_headers: bool = False,
    *,
    sycl_sources: str | Sequence[str] | None = None,
    extra_sycl_cflags: Iterable[str] | None = None,
    with_sycl: bool | None = None,
    prebuilt_path: str | os.PathLike[str] | None = None,
) -> ModuleType | str:
    """Build (once) and import an extension from source strings, like ``torch.utils.cpp_extension.load_inline``.

    ``cpp_sources`` and ``cuda_sources`` (a string or a list of strings) become ``main.cpp`` and
    ``cuda.cu``, with ``#include <torch/extension.h>`` (and for CUDA ``torch/types.h``, ``cuda.h``,
    ``cuda_runtime.h``) first unless ``no_implicit_headers``. ``functions`` (a name, a list of names, or a
    dict of name to docstring) generates the pybind11 bindings, wrapped in torch's error handling unless
    ``with_pytorch_error_handling=False``. The other arguments mean what they mean for
    :func:`cached_load_torch_cpp_extension` (``extra_cflags=None``: this library's default flags;
    ``build_directory``: the cache root), plus ``prebuilt_path``.

    ``use_pch`` is accepted for torch's signature: torch's ``use_pch=True`` writes a precompiled header into
    torch's install folder, which this library never does (its own shared header, where available, is
    governed by the native API and its setting). ``sycl_sources``, ``extra_sycl_cflags`` and ``with_sycl``
    raise NotImplementedError.

    Returns the module, or with ``is_python_module=False`` the library's path (loaded with
    ``torch.ops.load_library``).
    """
    reject_sycl(sycl_sources=sycl_sources, extra_sycl_cflags=extra_sycl_cflags, with_sycl=with_sycl)
    files = generated_sources(cpp_sources, cuda_sources, functions, with_pytorch_error_handling, no_implicit_headers)
    sources = write_generated_sources(name, files, build_directory)
    result: ModuleType | str = cached_load_torch_cpp_extension(
        name, sources, extra_include_paths=() if extra_include_paths is None else extra_include_paths,
        extra_cflags=extra_cflags, extra_cuda_cflags=extra_cuda_cflags,
        extra_ldflags=() if extra_ldflags is None else extra_ldflags, verbose=verbose,
        build_directory=build_directory, with_cuda=with_cuda, prebuilt_path=prebuilt_path,
        **native_options(is_python_module=is_python_module, keep_intermediates=keep_intermediates))
    return result


def reject_sycl(**arguments: object) -> None:
    """NotImplementedError naming the SYCL arguments that were given (this library builds no SYCL)."""
    given = [argument for argument, value in arguments.items() if value not in (None, False, "", [], ())]
    if given:
        raise NotImplementedError(f"{', '.join(given)}: SYCL sources are not supported by cpp_extension_tools; "
                                  "build them with torch.utils.cpp_extension directly")


def native_options(**options: bool) -> dict[str, Any]:
    """The options that differ from the native API's defaults, as its keyword arguments.

    Passing only those keeps each call as short as the arguments it changes.
    """
    defaults = {"is_python_module": True, "is_standalone": False, "keep_intermediates": True}
    for option, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"{option}: expected a bool, got {type(value).__name__}")
    return {option: value for option, value in options.items() if value != defaults[option]}


def generated_sources(cpp_sources: object, cuda_sources: object, functions: object,
                      with_pytorch_error_handling: bool, no_implicit_headers: bool) -> list[tuple[str, str]]:
    """[(file name, text)] as torch's load_inline generates them: main.cpp, then cuda.cu if any."""
    cpp = _source_list("cpp_sources", cpp_sources)
    cuda = [] if cuda_sources is None else _source_list("cuda_sources", cuda_sources)
    if not no_implicit_headers:
        cpp.insert(0, "#include <torch/extension.h>")
    if functions is not None:
        cpp.extend(_bindings(functions, with_pytorch_error_handling))
    files = [(_CPP_FILE, "\n".join(cpp))]
    if cuda:
        if not no_implicit_headers:
            cuda[:0] = ["#include <torch/types.h>", "#include <cuda.h>", "#include <cuda_runtime.h>"]
        files.append((_CUDA_FILE, "\n".join(cuda)))
    return files


def _source_list(argument: str, sources: object) -> list[str]:
    if isinstance(sources, str):
        return [sources]
    if isinstance(sources, (list, tuple)) and all(isinstance(item, str) for item in sources):
        return list(sources)  # a copy: torch inserts into the caller's list, we do not
    raise TypeError(f"{argument}: expected a str or a list of str, got {type(sources).__name__}")


def _bindings(functions: object, with_pytorch_error_handling: bool) -> list[str]:
    if isinstance(functions, str):
        functions = [functions]
    if isinstance(functions, list):
        functions = {function: function for function in functions}
    elif not isinstance(functions, dict):
        # torch's exception and wording, which its own test checks
        raise ValueError(f"Expected 'functions' to be a list or dict, but was {type(functions)}")
    lines = ["PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {"]
    for function, docstring in functions.items():
        if not isinstance(function, str) or not function.isidentifier():
            raise ValueError(f"functions: {function!r} is not a C++ function name")
        bound = f"torch::wrap_pybind_function({function})" if with_pytorch_error_handling else function
        lines.append(f'm.def("{function}", {bound}, "{docstring}");')
    lines.append("}")
    return lines


def write_generated_sources(name: str, files: list[tuple[str, str]],
                            build_directory: str | os.PathLike[str] | None) -> list[str]:
    """The paths of ``files`` inside the cache root, written (atomically) only when missing.

    The folder is named by the digest of every file's name and text, so a path never changes content:
    a warm call stats the files and reads none of them.
    """
    data = [(file_name, text.encode()) for file_name, text in files]
    digest = hashlib.blake2b(digest_size=16)  # as the key: the first SHA-256 of a process costs ~50 us more
    for file_name, content in data:
        digest.update(b"%s\0%d\0" % (file_name.encode(), len(content)))
        digest.update(content)
    root = resolve_root(build_directory)
    folder = ModuleStore(root, _checked_name(name)).inline_sources_folder(digest.hexdigest())
    paths = []
    for file_name, content in data:
        path = os.path.join(folder, file_name)
        try:
            st = os.stat(path)
            # Ours, of the size we write: anything else (another user's file, a truncated one) is written
            # again, after the trust check of its folder, so a foreign file is never compiled.
            present = st.st_size == len(content) and (
                st.st_uid == os.geteuid() or (_settings.SHARED_CACHE.get() and not st.st_mode & 0o002))
        except FileNotFoundError:
            present = False
        if not present:
            _write_source(root, folder, path, content)
        paths.append(path)
    return paths


def _checked_name(name: object) -> str:
    # The full check is the native API's; here only what could escape the module's folder.
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: {name!r} is not a valid Python identifier "
                         "(it becomes the module's import name and the PyInit_<name> symbol)")
    return name


def _write_source(root: str, folder: str, path: str, content: bytes) -> None:
    from ._cache.fs import atomic_write_bytes, make_dirs  # cold path: a source written once
    from ._cache.trust import check_trusted, folder_mode
    from ._errors import cache_not_writable

    check_trusted(root, folder)
    try:
        make_dirs(folder, folder_mode())
        atomic_write_bytes(path, content)
    except OSError as error:
        raise cache_not_writable(error, root) from error
