"""The validated arguments of one call: one immutable request, made by one validation function.

Everything downstream (the cache key, the build, the worker's spec, the ninja
file, the prebuilt builder, publication) reads the request; adding an argument
is one edit here plus its use.
"""

from __future__ import annotations

import keyword
import os
import stat
from collections.abc import Iterable
from typing import Any

from ._env.flags import absolute_path_flags, get_default_cpp_cflags, get_default_cuda_cflags
from ._sources import language_of

__all__ = ["BuildRequest", "check_prebuilt_kind", "validated_request"]

# The arguments, in the order of the call's signature; a request also holds what validation derives.
_ARGUMENTS = ("name", "sources", "include_paths", "cflags", "cuda_cflags", "ldflags", "with_cuda", "verbose",
              "is_python_module", "is_standalone", "keep_intermediates", "use_pch")


class BuildRequest:
    """One call's arguments, checked and normalized (absolute paths, flags as words); read-only."""

    # Hand-written rather than @dataclass(frozen=True, slots=True): constructing either costs the same
    # (1-2 us: each slot is set through object.__setattr__), but the dataclass exec()s generated code when
    # its class is created, 1.2 ms of `import cpp_extension_tools` against 30 us for this one (timeit).
    __slots__ = (*_ARGUMENTS, "languages")

    name: str
    sources: tuple[str, ...]
    include_paths: tuple[str, ...]
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    with_cuda: bool
    verbose: bool
    is_python_module: bool  # False: a plain shared library (torch.ops.load_library), or an executable
    is_standalone: bool  # an executable, not loaded
    keep_intermediates: bool  # False: only the artifact stays after publication
    use_pch: bool  # the shared precompiled torch header may be used
    languages: frozenset[str]  # of the sources: "c", "c++", "cuda"

    def __init__(self, name: str, sources: tuple[str, ...], include_paths: tuple[str, ...], cflags: tuple[str, ...],
                 cuda_cflags: tuple[str, ...], ldflags: tuple[str, ...], with_cuda: bool, verbose: bool,
                 languages: frozenset[str] | None = None, *, is_python_module: bool = True,
                 is_standalone: bool = False, keep_intermediates: bool = True, use_pch: bool = True) -> None:
        init = object.__setattr__
        init(self, "name", name)
        init(self, "sources", sources)
        init(self, "include_paths", include_paths)
        init(self, "cflags", cflags)
        init(self, "cuda_cflags", cuda_cflags)
        init(self, "ldflags", ldflags)
        init(self, "with_cuda", with_cuda)
        init(self, "verbose", verbose)
        init(self, "is_python_module", is_python_module)
        init(self, "is_standalone", is_standalone)
        init(self, "keep_intermediates", keep_intermediates)
        init(self, "use_pch", use_pch)
        # Validation passes the languages it found while checking each source.
        init(self, "languages", frozenset(map(language_of, sources)) if languages is None else languages)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a BuildRequest is read-only (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a BuildRequest is read-only (tried to delete {name!r})")

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in _ARGUMENTS)
        return f"BuildRequest({fields})"

    @property
    def artifact_file(self) -> str:
        """The file name of the binary: ``<name>.so``, or ``<name>`` for an executable."""
        return self.name if self.is_standalone else f"{self.name}.so"

    def to_json(self) -> dict[str, Any]:
        """The arguments as JSON-ready data (the build worker's spec starts from it)."""
        return {field: _json_ready(getattr(self, field)) for field in _ARGUMENTS}


def _json_ready(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def validated_request(name: object, sources: object, include_paths: object, cflags: object, cuda_cflags: object,
                      ldflags: object, verbose: object, with_cuda: object, *, is_python_module: object = True,
                      is_standalone: object = False, keep_intermediates: object = True,
                      use_pch: object = True) -> BuildRequest:
    """Check every argument (TypeError, ValueError, FileNotFoundError naming it) and return the request.

    ``cflags``/``cuda_cflags`` None mean the default flags; ``with_cuda`` None means "when there are .cu
    sources". Nothing is written, run or looked up on PATH.
    """
    kinds = _checked_kind(is_python_module, is_standalone, keep_intermediates, use_pch)
    checked_name = _checked_name(name)
    checked_sources, languages = _checked_sources(sources)
    checked_includes = _checked_include_paths(include_paths)
    # Relative paths in flags mean the caller's working directory, not the build folder the compilers run in.
    checked_cflags = get_default_cpp_cflags() if cflags is None else absolute_path_flags(
        _checked_flags("extra_cflags", cflags))
    checked_cuda_cflags = (get_default_cuda_cflags() if cuda_cflags is None
                           else absolute_path_flags(_checked_flags("extra_cuda_cflags", cuda_cflags)))
    checked_ldflags = absolute_path_flags(_checked_flags("extra_ldflags", ldflags), linker=True)
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose: expected a bool, got {type(verbose).__name__}")
    return BuildRequest(checked_name, checked_sources, checked_includes, tuple(checked_cflags),
                        tuple(checked_cuda_cflags), tuple(checked_ldflags), _checked_with_cuda(with_cuda, languages),
                        verbose, languages, is_python_module=kinds[0], is_standalone=kinds[1],
                        keep_intermediates=kinds[2], use_pch=kinds[3])


def _checked_kind(is_python_module: object, is_standalone: object, keep_intermediates: object,
                  use_pch: object) -> tuple[bool, bool, bool, bool]:
    """The four bool arguments of what is built and kept, checked (torch's rule: a module or an executable)."""
    values = {"is_python_module": is_python_module, "is_standalone": is_standalone,
              "keep_intermediates": keep_intermediates, "use_pch": use_pch}
    for argument, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(f"{argument}: expected a bool, got {type(value).__name__}")
    if is_python_module and is_standalone:
        raise ValueError("is_python_module=True and is_standalone=True cannot go together (as in torch's load): "
                         "an executable is not a Python module; pass is_python_module=False with is_standalone=True")
    return bool(is_python_module), bool(is_standalone), bool(keep_intermediates), bool(use_pch)


def check_prebuilt_kind(request: BuildRequest) -> None:
    """A prebuilt binary in a wheel is always a Python module: refuse ``prebuilt_path`` for anything else."""
    if request.is_standalone:
        raise ValueError("prebuilt_path and is_standalone=True cannot go together: prebuilt binaries are Python "
                         "modules; drop prebuilt_path to build the executable")
    if not request.is_python_module:
        raise ValueError("prebuilt_path and is_python_module=False cannot go together: prebuilt binaries are "
                         "Python modules; drop prebuilt_path, or build a module (is_python_module=True)")


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"name: {name!r} is not a valid ASCII Python identifier "
                         "(it becomes the module's import name and the PyInit_<name> symbol)")
    if keyword.iskeyword(name):
        raise ValueError(f"name: {name!r} is a Python keyword and cannot be a module name")
    return name


def _checked_sources(sources: object) -> tuple[tuple[str, ...], frozenset[str]]:
    """(absolute, normalized source paths, their languages); raise naming ``sources`` when anything is off."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, (list, tuple, Iterable)):  # the ABC's check is slow: the usual types first
        raise TypeError(f"sources: expected a list of paths, got {type(sources).__name__}")
    result: list[str] = []
    seen: set[str] = set()
    languages: set[str] = set()
    for item in sources:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"sources: expected paths, got an item of type {type(item).__name__}")
        path = _checked_path("sources", os.path.abspath(os.fspath(item)))
        languages.add(language_of(path))
        try:
            mode = os.stat(path).st_mode  # one stat for both checks: this runs on every call
        except OSError:
            raise FileNotFoundError(f"sources: no such file: {path!r}") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"sources: {path!r} is not a regular file")
        if path in seen:
            raise ValueError(f"sources: {path!r} is listed twice")
        seen.add(path)
        result.append(path)
    if not result:
        raise ValueError("sources: the list is empty; pass at least one .c/.cc/.cpp/.cxx/.cu file")
    return tuple(result), frozenset(languages)


def _checked_include_paths(paths: object) -> tuple[str, ...]:
    if paths is None:
        return ()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, Iterable):
        raise TypeError(f"extra_include_paths: expected a list of paths, got {type(paths).__name__}")
    result = []
    for item in paths:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"extra_include_paths: expected paths, got an item of type {type(item).__name__}")
        path = _checked_path("extra_include_paths", os.path.abspath(os.fspath(item)))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"extra_include_paths: no such directory: {path!r}")
        result.append(path)
    return tuple(result)


def _checked_flags(argument: str, flags: object) -> list[str]:
    if flags is None:
        return []
    if isinstance(flags, str):
        raise TypeError(f"{argument}: expected a list of flags, got a single str {flags!r}; "
                        f"write [{flags!r}] or split it into separate flags")
    if not isinstance(flags, Iterable):
        raise TypeError(f"{argument}: expected a list of str, got {type(flags).__name__}")
    result = []
    for flag in flags:
        if not isinstance(flag, str):
            raise TypeError(f"{argument}: expected str flags, got an item of type {type(flag).__name__}")
        if "\n" in flag or "\0" in flag:
            raise ValueError(f"{argument}: flag {flag!r} contains a newline or NUL byte")
        result.append(flag.strip())
    return result


def _checked_with_cuda(with_cuda: object, languages: frozenset[str]) -> bool:
    has_cuda_sources = "cuda" in languages
    if with_cuda is None:
        return has_cuda_sources
    if not isinstance(with_cuda, bool):
        raise TypeError(f"with_cuda: expected a bool or None, got {type(with_cuda).__name__}")
    if has_cuda_sources and not with_cuda:
        raise ValueError("with_cuda: False, but sources include .cu files; pass with_cuda=None or True")
    return with_cuda


def _checked_path(argument: str, path: str) -> str:
    """A path that ninja files and shell commands can hold: no line break or NUL byte."""
    if "\n" in path or "\r" in path or "\0" in path:
        raise ValueError(f"{argument}: {path!r} contains a line break or NUL byte, which no build file can hold; "
                         "rename the file or folder")
    return path
