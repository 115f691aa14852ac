"""The validated arguments of one call: one immutable request, made by one validation function.

Everything downstream (the cache key, the build, the worker's spec, the ninja
file, the prebuilt builder, publication) reads the request; adding an argument
is one edit here plus its use. What the arguments mean lives here too: the
source suffixes of each language, the default flags, paths in flags made
absolute, and listing the sources of a folder.

(One module rather than three: each module on the warm import costs about as
much as the code it holds; see docs/benchmarks.md.)
"""

from __future__ import annotations

import keyword
import os
import stat
from collections.abc import Iterable
from typing import Any

__all__ = ["C_SUFFIXES", "CPP_SUFFIXES", "CUDA_SUFFIXES", "SOURCE_SUFFIXES", "BuildRequest", "absolute_path_flags",
           "check_prebuilt_kind", "get_cpp_sources_list_from_folder", "get_default_cpp_cflags",
           "get_default_cuda_cflags", "language_of", "validated_request"]

C_SUFFIXES = (".c",)
CPP_SUFFIXES = (".cc", ".cpp", ".cxx")
CUDA_SUFFIXES = (".cu",)
SOURCE_SUFFIXES = C_SUFFIXES + CPP_SUFFIXES + CUDA_SUFFIXES

# The arguments, in the order of the call's signature; a request also holds what validation derives.
_ARGUMENTS = ("name", "sources", "include_paths", "cflags", "cuda_cflags", "ldflags", "with_cuda", "verbose",
              "is_python_module", "is_standalone", "keep_intermediates", "use_pch")


class BuildRequest:
    """One call's arguments, checked and normalized (absolute paths, flags as words); read-only."""

    # Hand-written rather than @dataclass(frozen=True, slots=True): constructing either costs the same
    # (1-2 us: each slot is set through object.__setattr__), but the dataclass exec()s generated code when
    # its class is created, 1.2 ms of `import cpp_extension_tools` against 30 us for this one (timeit).
    __slots__ = (*_ARGUMENTS, "languages", "source_stats")

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
    # The stat of each source taken by validation (its check that the file exists), () when not taken: the
    # warm lookup compares the manifest's records of the sources with these instead of a second stat each.
    source_stats: tuple[os.stat_result, ...]

    def __init__(self, name: str, sources: tuple[str, ...], include_paths: tuple[str, ...], cflags: tuple[str, ...],
                 cuda_cflags: tuple[str, ...], ldflags: tuple[str, ...], with_cuda: bool, verbose: bool,
                 languages: frozenset[str] | None = None, source_stats: tuple[os.stat_result, ...] = (), *,
                 is_python_module: bool = True, is_standalone: bool = False, keep_intermediates: bool = True,
                 use_pch: bool = True) -> None:
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
        init(self, "source_stats", source_stats)

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
    checked_sources, languages, source_stats = _checked_sources(sources)
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
                        verbose, languages, source_stats, is_python_module=kinds[0], is_standalone=kinds[1],
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


def _checked_sources(sources: object) -> tuple[tuple[str, ...], frozenset[str], tuple[os.stat_result, ...]]:
    """(absolute, normalized source paths, their languages, their stats); raise naming ``sources`` when anything
    is off."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, (list, tuple, Iterable)):  # the ABC's check is slow: the usual types first
        raise TypeError(f"sources: expected a list of paths, got {type(sources).__name__}")
    result: list[str] = []
    seen: set[str] = set()
    languages: set[str] = set()
    stats: list[os.stat_result] = []
    for item in sources:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"sources: expected paths, got an item of type {type(item).__name__}")
        path = _checked_path("sources", os.path.abspath(os.fspath(item)))
        languages.add(language_of(path))
        try:
            info = os.stat(path)  # one stat for both checks, and for the lookup's (this runs on every call)
        except OSError:
            raise FileNotFoundError(f"sources: no such file: {path!r}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"sources: {path!r} is not a regular file")
        if path in seen:
            raise ValueError(f"sources: {path!r} is listed twice")
        seen.add(path)
        result.append(path)
        stats.append(info)
    if not result:
        raise ValueError("sources: the list is empty; pass at least one .c/.cc/.cpp/.cxx/.cu file")
    return tuple(result), frozenset(languages), tuple(stats)


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


# -- sources ---------------------------------------------------------------------------

def language_of(path: str) -> str:
    """Return "c", "c++" or "cuda" for a source path (suffixes are case-sensitive, as for gcc)."""
    suffix = os.path.splitext(path)[1]
    if suffix in C_SUFFIXES:
        return "c"
    if suffix in CPP_SUFFIXES:
        return "c++"
    if suffix in CUDA_SUFFIXES:
        return "cuda"
    raise ValueError(
        f"sources: unknown file extension for {path!r}; expected one of {', '.join(SOURCE_SUFFIXES)}")


def get_cpp_sources_list_from_folder(folder: str | os.PathLike[str], recursive: bool = False,
                                     exclude: Iterable[str] = ()) -> list[str]:
    """Return the sorted absolute paths of the C, C++ and CUDA sources in ``folder``.

    Files ending in .c, .cc, .cpp, .cxx or .cu are returned; headers and other
    files are not. With ``recursive=True`` sub-folders are searched too.

    ``exclude``: glob patterns (:mod:`fnmatch`: ``*`` also matches ``/``) matched against each
    source's path relative to ``folder``, with ``/`` between folders, e.g.
    ``exclude=("*_test.cpp", "other_module/*")``; a source that matches any of them is left out.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder: expected a path, got {type(folder).__name__}")
    patterns = _checked_patterns(exclude)
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder: no such directory: {folder!r}")
    found: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            found.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(SOURCE_SUFFIXES))
    else:
        with os.scandir(folder) as entries:
            found.extend(e.path for e in entries if e.is_file() and e.name.endswith(SOURCE_SUFFIXES))
    if patterns:
        found = [path for path in found if not _excluded(os.path.relpath(path, folder), patterns)]
    return sorted(found)


def _checked_patterns(exclude: object) -> tuple[str, ...]:
    if isinstance(exclude, str):
        raise TypeError(f"exclude: expected a list of glob patterns, got a single str {exclude!r}; write [{exclude!r}]")
    if not isinstance(exclude, Iterable):
        raise TypeError(f"exclude: expected a list of glob patterns, got {type(exclude).__name__}")
    patterns = tuple(exclude)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"exclude: expected str patterns, got an item of type {type(pattern).__name__}")
    return patterns


def _excluded(relative: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch  # only when patterns are given

    relative = relative.replace(os.sep, "/")
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns)


# -- flags -----------------------------------------------------------------------------

def get_default_cpp_cflags() -> list[str]:
    """Flags for C and C++ sources: optimized for this machine's CPU, with warnings on.

    ``-march=native`` ties the binary to this CPU's features; the cache key then
    includes the CPU's feature set so a shared cache never hands the binary to
    another CPU.
    """
    return ["-O3", "-march=native", "-Wall", "-Wextra", "-fno-strict-aliasing"]


def get_default_cuda_cflags() -> list[str]:
    """Flags for nvcc: optimized device code, host code tuned for this CPU."""
    # No --use_fast_math: it changes numerical results, which a default must not do.
    return ["-O3", "-Xcompiler", "-march=native", "-Xcompiler", "-Wall", "-lineinfo"]


# Flags whose value is a path, attached ("-Iinc") or as the next word ("-isystem inc").
_PATH_FLAGS = ("-I", "-isystem", "-idirafter", "-iquote", "-include", "-imacros", "-isysroot", "--sysroot", "-L",
               "-B")
_ATTACHED_ONLY = ("-I", "-L", "-B")  # "-isystem" as a prefix would also match "-isystemfoo": spelled apart


def absolute_path_flags(flags: list[str], linker: bool = False) -> list[str]:
    """``flags`` with relative paths made absolute against the current working directory.

    The compilers run in the build folder, where "-Iinc" would mean something else than the caller
    meant. With ``linker``, bare words that name existing files (objects, static libraries) count too.
    """
    result: list[str] = []
    expects_path = False
    for flag in flags:
        if expects_path:
            result.append(os.path.abspath(flag) if flag else flag)
            expects_path = False
            continue
        if flag in _PATH_FLAGS:
            expects_path = True
            result.append(flag)
            continue
        result.append(_absolute_attached(flag, linker))
    return result


def _absolute_attached(flag: str, linker: bool) -> str:
    for prefix in _PATH_FLAGS:
        if flag.startswith(prefix) and len(flag) > len(prefix) and (prefix in _ATTACHED_ONLY or
                                                                     flag[len(prefix)] == "="):
            value = flag[len(prefix):]
            separator = "=" if value.startswith("=") and prefix not in _ATTACHED_ONLY else ""
            path = value[len(separator):]
            if path.startswith("=") or os.path.isabs(path):  # "-I=dir" is relative to the sysroot: left as is
                return flag
            return prefix + separator + os.path.abspath(path)
    if linker and not flag.startswith("-") and not os.path.isabs(flag) and os.path.isfile(flag):
        return os.path.abspath(flag)
    return flag
