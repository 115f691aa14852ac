"""What a build read, beyond the sources: header search folders, headers by kind, linker inputs.

The compiler reports the headers it opened (``-MD`` depfiles, through ninja);
what it does not report is where it looked and found nothing. A file created
later in a folder searched before the one a header came from would now be
found first, and ``__has_include`` of a file that did not exist may now be
true. Both need an entry to be created in a searched folder, which changes that
folder's mtime: so every folder the compiler or linker searched is recorded
with its mtime (cheap to check on a hit), and a digest of its listing (kept in
the build folder's state, to tell on the cold path whether an entry really
appeared or vanished).

Headers come in three kinds:
- torch's own (under torch's include folder): covered by torch's version and
  git commit in the key, never stat'ed (a C++ extension reads over a thousand);
- system headers (the compiler's built-in search folders, Python's and the CUDA
  toolkit's include folders): covered by their folders' mtimes, since package
  managers replace files by renaming (a new inode, a changed folder);
- everything else, the user's: recorded one by one with their content digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sysconfig
from collections.abc import Iterable, Sequence

__all__ = ["PendingProbe", "SearchPath", "folder_listing_digest", "header_kind", "link_inputs", "parse_search_path",
           "probe_search_path", "real_paths", "searched_folders", "start_search_probe", "system_prefixes",
           "torch_include_folder"]

_SEARCH_START = re.compile(r'^#include (?:"\.\.\."|<\.\.\.>) search starts here:$')
_IGNORED = re.compile(r'^ignoring (?:nonexistent|duplicate) directory "(?P<path>.*)"$')


class SearchPath:
    """The folders one compiler configuration searches for headers, in order, and the missing ones."""

    __slots__ = ("folders", "missing")

    def __init__(self, folders: tuple[str, ...], missing: tuple[str, ...]) -> None:
        self.folders = folders
        self.missing = missing


class PendingProbe:
    """A compiler probe started now and read later, so that it runs while the build does."""

    __slots__ = ("_process", "_stdout")

    def __init__(self, words: Sequence[str], cwd: str, env: dict[str, str] | None, stdout: bool) -> None:
        """``stdout``: read what the command prints there (else its stderr)."""
        self._stdout = stdout
        self._process: subprocess.Popen[str] | None
        try:
            self._process = subprocess.Popen(
                list(words), cwd=cwd, env=env, stdin=subprocess.DEVNULL, text=True, errors="replace",
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=subprocess.DEVNULL if stdout else subprocess.PIPE)
        except (OSError, subprocess.SubprocessError):
            self._process = None

    def output(self) -> str | None:
        """What the probe printed, once it has ended; None when it could not run or timed out."""
        if self._process is None:
            return None
        try:
            out, err = self._process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.cancel()
            return None
        return out if self._stdout else err

    def cancel(self) -> None:
        """Kill the probe (when the build failed and its answer is not needed) and reap it."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(OSError):
                self._process.kill()
            self._process.communicate()


def start_search_probe(command: Sequence[str], flags: Sequence[str], language: str, cwd: str,
                       env: dict[str, str] | None) -> PendingProbe:
    """Ask the compiler (``-E -v`` of an empty input) where it looks for headers with these flags."""
    words = [*command, *_without_dependency_flags(flags), "-E", "-v", "-x", language, os.devnull, "-o", os.devnull]
    return PendingProbe(words, cwd, env, stdout=False)


def probe_search_path(command: Sequence[str], flags: Sequence[str], language: str, cwd: str,
                      env: dict[str, str] | None) -> SearchPath:
    """The search path of a probe run now (see start_search_probe)."""
    return parse_search_path(start_search_probe(command, flags, language, cwd, env).output(), cwd)


def parse_search_path(output: str | None, cwd: str) -> SearchPath:
    """The folders (relative ones taken from ``cwd``) in the ``-E -v`` output of a search probe."""
    if output is None:
        return SearchPath((), ())
    folders: list[str] = []
    missing: list[str] = []
    inside = False
    for line in output.splitlines():
        ignored = _IGNORED.match(line)
        if ignored and "nonexistent" in line:
            missing.append(_absolute(ignored.group("path"), cwd))
        elif _SEARCH_START.match(line):
            inside = True
        elif line.startswith("End of search list."):
            inside = False
        elif inside and line.startswith(" "):
            folder = line.strip().removesuffix(" (framework directory)")
            folders.append(_absolute(folder, cwd))
    return SearchPath(tuple(dict.fromkeys(folders)), tuple(dict.fromkeys(missing)))


def _absolute(path: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(cwd, path))


def _without_dependency_flags(flags: Sequence[str]) -> list[str]:
    """The flags minus those that write depfiles or name outputs (-MD, -MF file, -o file, -c)."""
    result: list[str] = []
    skip_next = False
    for flag in flags:
        if skip_next:
            skip_next = False
        elif flag in ("-MF", "-MT", "-MQ", "-o"):
            skip_next = True
        elif flag not in ("-MD", "-MMD", "-M", "-MM", "-MP", "-c"):
            result.append(flag)
    return result


def torch_include_folder() -> str:
    import torch

    return os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "include"))


def system_prefixes(builtin_folders: Iterable[str], cuda_home: str | None) -> tuple[str, ...]:
    """Folders whose headers count as system headers: checked by their folders' mtimes, not one by one.

    Only the compiler's own search folders, Python's include folders and the CUDA toolkit's include
    folders: a project that lies under the toolkit's root (an nvcc wrapper in the project, a conda
    environment that holds both) keeps its headers tracked.
    """
    prefixes = set(builtin_folders)
    for name in ("include", "platinclude"):
        path = sysconfig.get_paths().get(name)
        if path:
            prefixes.add(path)
    if cuda_home:
        prefixes.add(os.path.join(cuda_home, "include"))
        with contextlib.suppress(OSError), os.scandir(os.path.join(cuda_home, "targets")) as targets:
            prefixes.update(os.path.join(t.path, "include") for t in targets)
    return tuple(sorted({os.path.realpath(p) + os.sep for p in prefixes}))


def real_paths(paths: Iterable[str]) -> dict[str, str]:
    """Each path's os.path.realpath, resolving each folder once: a build reads hundreds of headers from a
    few folders, and realpath costs a system call per path component."""
    folders: dict[str, str] = {}
    result: dict[str, str] = {}
    for path in paths:
        if path in result:
            continue
        if os.path.islink(path):
            result[path] = os.path.realpath(path)
            continue
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        result[path] = os.path.join(folders[folder], name)
    return result


def header_kind(path: str, torch_prefix: str, system: tuple[str, ...], user: tuple[str, ...],
                real: str | None = None) -> str:
    """ "torch", "system" or "user" for a header the compiler read (see the module docstring).

    ``real``: the path's realpath, when the caller has it (real_paths).
    """
    real = os.path.realpath(path) if real is None else real
    if real.startswith(user):
        return "user"
    if real.startswith(torch_prefix):
        return "torch"
    if real.startswith(system):
        return "system"
    return "user"


def searched_folders(search_paths: Iterable[SearchPath], headers: Iterable[str], sources: Iterable[str],
                     link_folders: Iterable[str], exclude: tuple[str, ...]) -> list[str]:
    """Every folder in which a new or removed entry could change what the build reads.

    - the search folders themselves, and for missing ones the nearest folder above that exists;
    - the folder of every source and header (``#include "..."`` looks beside the including file first);
    - for a header found as ``sub/dir/name.h`` below some search folder, ``sub/dir`` (or the part of it
      that exists) below every search folder: a new ``sub/dir/name.h`` there would be found first;
    - the linker's ``-L`` folders.
    Folders under ``exclude`` (torch's headers, the build folder) are left out.
    """
    paths = list(search_paths)
    search = list(dict.fromkeys(f for p in paths for f in p.folders))
    found: dict[str, None] = dict.fromkeys(search)
    for missing in (m for p in paths for m in p.missing):
        found[_nearest_existing(missing)] = None
    relative_folders: set[str] = set()
    for file in [*sources, *headers]:
        found[os.path.dirname(os.path.abspath(file))] = None
        for folder in search:
            if file.startswith(folder + os.sep):
                relative = os.path.dirname(file[len(folder) + 1:])
                if relative:
                    relative_folders.add(relative)
    for folder in search:
        for relative in relative_folders:
            found[_nearest_existing(os.path.join(folder, relative), stop=folder)] = None
    found.update(dict.fromkeys(link_folders))
    return sorted(f for f in found if f and not (f + os.sep).startswith(exclude) and os.path.isdir(f))


def _nearest_existing(path: str, stop: str = "/") -> str:
    current = os.path.normpath(path)
    while not os.path.isdir(current) and current not in (stop, os.path.dirname(current)):
        current = os.path.dirname(current)
    return current


def folder_listing_digest(path: str) -> str:
    """A digest of a folder's entry names ("" when it cannot be listed)."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return ""
    return hashlib.sha256("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest()


def link_inputs(ldflags: Sequence[str]) -> tuple[list[str], list[str]]:
    """(files the linker reads because of ``ldflags``, its ``-L`` folders).

    Object files and libraries named directly, and ``-lNAME`` / ``-l:FILE`` resolved through the
    ``-L`` folders as the linker does (per folder, the shared library before the static one, unless
    ``-static`` or ``-Wl,-Bstatic`` is in effect). Libraries found only in the linker's built-in
    folders are system libraries, like system headers.
    """
    folders = _link_folders(ldflags)
    files: list[str] = []
    static = False
    words = list(ldflags)
    for index, flag in enumerate(words):
        if flag in ("-static", "-Wl,-Bstatic") or flag.startswith("-Wl,-Bstatic"):
            static = True
        elif flag in ("-Wl,-Bdynamic",) or flag.startswith("-Wl,-Bdynamic"):
            static = False
        name = None
        if flag.startswith("-l") and len(flag) > 2:
            name = flag[2:]
        elif flag == "-l" and index + 1 < len(words):
            name = words[index + 1]
        if name is not None:
            found = _find_library(name, folders, static)
            if found:
                files.append(found)
        elif not flag.startswith("-") and _is_link_file(flag) and os.path.isfile(flag):
            files.append(os.path.abspath(flag))
    return list(dict.fromkeys(files)), folders


def _link_folders(ldflags: Sequence[str]) -> list[str]:
    folders: list[str] = []
    words = list(ldflags)
    for index, flag in enumerate(words):
        if flag == "-L" and index + 1 < len(words):
            folders.append(os.path.abspath(words[index + 1]))
        elif flag.startswith("-L") and len(flag) > 2:
            folders.append(os.path.abspath(flag[2:]))
    return list(dict.fromkeys(folders))


def _is_link_file(word: str) -> bool:
    return word.endswith((".a", ".o", ".so", ".lo")) or ".so." in os.path.basename(word)


def _find_library(name: str, folders: Sequence[str], static: bool) -> str | None:
    candidates = [name[1:]] if name.startswith(":") else (
        [f"lib{name}.a"] if static else [f"lib{name}.so", f"lib{name}.a"])
    for folder in folders:
        for candidate in candidates:
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None
