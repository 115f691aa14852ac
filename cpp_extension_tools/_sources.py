"""Source files: the suffixes of each language, and listing the sources of a folder.

The arguments naming sources are checked in _arguments.
"""

from __future__ import annotations

import os

__all__ = ["C_SUFFIXES", "CPP_SUFFIXES", "CUDA_SUFFIXES", "SOURCE_SUFFIXES", "get_cpp_sources_list_from_folder",
           "language_of"]

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
