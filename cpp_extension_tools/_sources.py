"""Source discovery and validation of the user's arguments.

Everything here runs before anything is built or written, so a bad call fails
fast with an error that names the offending argument.
"""

from __future__ import annotations

import keyword
import os
from collections.abc import Iterable

__all__ = [
    "C_SUFFIXES", "CPP_SUFFIXES", "CUDA_SUFFIXES", "SOURCE_SUFFIXES",
    "get_cpp_sources_list_from_folder", "language_of", "validate_flags", "validate_include_paths",
    "validate_name", "validate_sources",
]

C_SUFFIXES = (".c",)
CPP_SUFFIXES = (".cc", ".cpp", ".cxx")
CUDA_SUFFIXES = (".cu",)
SOURCE_SUFFIXES = C_SUFFIXES + CPP_SUFFIXES + CUDA_SUFFIXES


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


def get_cpp_sources_list_from_folder(folder: str | os.PathLike[str], recursive: bool = False) -> list[str]:
    """Return the sorted absolute paths of the C, C++ and CUDA sources in ``folder``.

    Files ending in .c, .cc, .cpp, .cxx or .cu are returned; headers and other
    files are not. With ``recursive=True`` sub-folders are searched too.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder: expected a path, got {type(folder).__name__}")
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
    return sorted(found)


def validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"name: {name!r} is not a valid ASCII Python identifier "
                         "(it becomes the module's import name and the PyInit_<name> symbol)")
    if keyword.iskeyword(name):
        raise ValueError(f"name: {name!r} is a Python keyword and cannot be a module name")
    return name


def validate_sources(sources: object) -> list[str]:
    """Return absolute, normalized source paths; raise naming ``sources`` when anything is off."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, Iterable):
        raise TypeError(f"sources: expected a list of paths, got {type(sources).__name__}")
    result: list[str] = []
    for item in sources:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"sources: expected paths, got an item of type {type(item).__name__}")
        path = _checked_path("sources", os.path.abspath(os.fspath(item)))
        language_of(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"sources: no such file: {path!r}")
        if not os.path.isfile(path):
            raise ValueError(f"sources: {path!r} is not a regular file")
        if path in result:
            raise ValueError(f"sources: {path!r} is listed twice")
        result.append(path)
    if not result:
        raise ValueError("sources: the list is empty; pass at least one .c/.cc/.cpp/.cxx/.cu file")
    return result


def validate_include_paths(paths: object) -> list[str]:
    if paths is None:
        return []
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
    return result


def validate_flags(argument: str, flags: object) -> list[str]:
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


def _checked_path(argument: str, path: str) -> str:
    """A path that ninja files and shell commands can hold: no line break or NUL byte."""
    if any(c in path for c in "\n\r\0"):
        raise ValueError(f"{argument}: {path!r} contains a line break or NUL byte, which no build file can hold; "
                         "rename the file or folder")
    return path
