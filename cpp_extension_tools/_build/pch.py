"""A precompiled torch header shared by every module of a cache root (cold path only).

Compiling a C++ source that includes ``torch/extension.h`` is mostly parsing torch's headers.
torch's own ``use_pch`` writes its ``.gch`` into torch's install folder, unlocked. Here the header
is built once per compiler, torch and compile flags into ``<root>/_shared-pch/<stem>-<key16>/``
(published as a whole folder with ``os.replace``, under a lock of its own), and each build
hard-links it into its build folder and compiles the qualifying sources with
``-include <build folder>/pch/<stem>.h``: gcc uses ``<stem>.h.gch`` beside it when the flags
match and reads the header itself otherwise, silently (``-Winvalid-pch`` is off by default). The
link keeps the file alive while that build runs even if the shared copy is replaced or cleared,
and is removed after the build.

Why the artifact key need not hold the PCH's key: gcc accepts a ``.gch`` only where the result is
the same as parsing the header, the objects are compiled with ``-fpch-deps`` so their depfiles
list every header inside the PCH (what the artifact records does not change), and a PCH is used
only while every file it was built from has the stat it had then (else it is built again). The
PCH is a speed-up, never an input.

Only gcc is supported (clang needs ``-include-pch``, which fails instead of falling back); any
failure here (a failed or killed PCH build, a lock timeout, no hard links) means no PCH for this
build, logged once per process, never a failed module build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
from collections.abc import Sequence
from typing import Any

from .. import _settings
from .._cache.fs import TEMP_MARKER, atomic_write_bytes, make_dirs, remove_tree
from .._cache.hashing import digest_value
from .._cache.trust import data_file_mode, folder_mode
from .._env.toolchain import Toolchain
from .._key import BuildConfig

__all__ = ["PCH_FOLDER", "PCH_HEADERS", "build_shared_pch", "clear_shared_pch", "first_include", "pch_flags", "release_links",
           "shared_pch_flags"]

logger = logging.getLogger("cpp_extension_tools")

PCH_FOLDER = "_shared-pch"  # not an identifier, so never a module's folder
PCH_HEADERS = ("torch/extension.h", "torch/torch.h", "ATen/ATen.h")
_LINK_FOLDER = "pch"  # inside a build folder
_RECORD = "pch.json"
_WANTED = ".wanted"  # beside a PCH folder: a build could have used it (see _pays_off)
_FORMAT = 2  # 2: input signatures with ctime and device
_CXX_SUFFIXES = (".cc", ".cpp", ".cxx", ".c++", ".C")
_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')
_SKIPPED_DIRECTIVE = re.compile(r"^\s*#\s*pragma\s+once\b")
# Flags that change neither the PCH nor gcc's check of it; everything else must match.
_IRRELEVANT = re.compile(r"^-(W(?!l,|a,|p,).*|w|H|MMD|MD|fdiagnostics-.*|DTORCH_EXTENSION_NAME=.*)$")
_BUILD_TIMEOUT_S = 1800.0
_warned: set[str] = set()


def shared_pch_flags(config: BuildConfig, toolchain: Toolchain, build_folder: str, cache_root: str,
                     sources: Sequence[str], ninja_sources: Sequence[str], flags: Sequence[str]) -> dict[str, list[str]]:
    """Per source as ninja compiles it (``ninja_sources``, in the order of ``sources``): the words that make
    the compiler use the shared PCH. Empty where no source qualifies or the PCH is off or unavailable.

    ``flags``: the C++ compile flags written in build.ninja.
    """
    if not _wanted(config):
        return {}
    by_header: dict[str, list[str]] = {}
    for source, compiled in zip(sources, ninja_sources, strict=True):
        header = first_include(source) if source.endswith(_CXX_SUFFIXES) else None
        if header in PCH_HEADERS:
            by_header.setdefault(header, []).append(compiled)
    if not by_header or not _is_gcc(toolchain.cxx_command):
        return {}
    result: dict[str, list[str]] = {}
    for header, compiled_sources in sorted(by_header.items()):
        words = _linked_pch(config, toolchain, build_folder, cache_root, header, pch_flags(flags),
                            len(compiled_sources))
        for compiled in compiled_sources:
            if words:
                result[compiled] = words
    return result


def _wanted(config: BuildConfig) -> bool:
    request = config.request
    if _settings.DISABLE_PCH.get() or not request.use_pch:
        return False
    return not request.with_cuda  # torch's load() writes CUDA builds' ninja file: their flags are not ours


def first_include(source: str) -> str | None:
    """The header named by the file's first preprocessor line, when only comments, blank lines and
    ``#pragma once`` come before it; else None."""
    try:
        with open(source, encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return None
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    for line in text.splitlines():
        line = line.split("//", 1)[0].strip()
        if not line or _SKIPPED_DIRECTIVE.match(line):
            continue
        match = _INCLUDE.match(line)
        return match.group(1).strip() if match else None
    return None


def pch_flags(flags: Sequence[str]) -> list[str]:
    """The compile flags that must be the same for gcc to accept a PCH (the module's name is not one)."""
    return [word for word in flags if not _IRRELEVANT.match(word)]


def _is_gcc(cxx: Sequence[str]) -> bool:
    try:
        output = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=30,
                                check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    first = output.splitlines()[0] if output else ""
    return "clang" not in output.lower() and ("Free Software Foundation" in output or "g++" in first
                                              or "gcc" in first.lower())


def _pch_key(config: BuildConfig, toolchain: Toolchain, header: str, flags: list[str]) -> str:
    from .inputs import torch_include_folder

    return digest_value({"format": _FORMAT, "header": header, "flags": flags, "compiler": toolchain.cxx.as_key(),
                         "compiler_command": toolchain.cxx_command, "torch": config.environment.get("torch"),
                         "torch_include": torch_include_folder(), "cpu": config.environment.get("cpu")})


def _stem(header: str) -> str:
    return header.replace("/", "_").removesuffix(".h")


def _linked_pch(config: BuildConfig, toolchain: Toolchain, build_folder: str, cache_root: str, header: str,
                flags: list[str], qualifying: int) -> list[str]:
    stem = _stem(header)
    folder = os.path.join(cache_root, PCH_FOLDER, f"{stem}-{_pch_key(config, toolchain, header, flags)[:16]}")
    try:
        if not _usable(folder):
            if not _pays_off(folder, qualifying):
                return []
            build_shared_pch(folder, toolchain.cxx_command, header, flags)
        if not _usable(folder):
            return []
        return _link_into(folder, build_folder, stem)
    except OSError as error:
        _warn_once(folder, f"the shared precompiled header {folder} is not usable ({error}); building without it")
        return []


def _pays_off(folder: str, qualifying: int) -> bool:
    """Whether building the missing PCH now pays for itself.

    Building it takes longer than compiling one source without it, so a one-off module of one source
    would be slower for it: such a build only leaves a note (``<folder>.wanted``), and the next build that
    could use this PCH (another module, a rebuild) builds it. Two qualifying sources pay at once.
    """
    marker = folder + _WANTED
    if qualifying >= 2 or os.path.exists(marker):
        return True
    make_dirs(os.path.dirname(folder), folder_mode())
    atomic_write_bytes(marker, b"")
    logger.debug("%s: not building the shared precompiled header for one source yet (next time)", folder)
    return False


def _usable(folder: str) -> bool:
    """Whether ``folder`` holds a built PCH whose inputs all have the stat they had when it was built."""
    record = _read_record(folder)
    if not record.get("ok"):
        return False
    for path, signature in record.get("inputs", {}).items():
        if _signature(path) != signature:
            logger.info("%s changed since the shared precompiled header %s was built: building it again", path,
                        folder)
            return False
    return True


def _read_record(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, _RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]


def build_shared_pch(folder: str, cxx: Sequence[str], header: str, flags: Sequence[str]) -> None:
    """Build the PCH into ``folder`` unless another process has (under its lock); OSError when the lock
    cannot be had. A failed compile is published as such, so that other builds do not repeat it."""
    from .._cache.lock import module_lock

    parent = os.path.dirname(folder)
    make_dirs(parent, folder_mode())
    lock = folder + ".pch-lock"
    with module_lock(lock, lock + ".owner", f"the shared precompiled header {os.path.basename(folder)}",
                     os.path.dirname(parent)):
        _remove_leftovers(folder)
        if _usable(folder) or (_read_record(folder) and not _read_record(folder).get("ok")
                               and not _inputs_changed(folder)):
            return
        staging = f"{folder}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
        make_dirs(staging, folder_mode())
        try:
            _compile_into(staging, cxx, header, flags)
            if os.path.lexists(folder):
                remove_tree(folder)  # stale: builds that use it hold hard links of their own
            os.replace(staging, folder)
        finally:
            if os.path.lexists(staging):
                remove_tree(staging)


def _inputs_changed(folder: str) -> bool:
    record = _read_record(folder)
    return any(_signature(p) != s for p, s in record.get("inputs", {}).items())


def _remove_leftovers(folder: str) -> None:
    """Staging folders and half-written owner files of killed builders (we hold the lock: none is being
    written)."""
    parent, base = os.path.split(folder)
    with os.scandir(parent) as entries:
        for entry in entries:
            if (entry.name.startswith(base) and TEMP_MARKER in entry.name
                    and not entry.name.startswith(base + _WANTED)):  # markers are written without the lock
                logger.debug("deleting %s, left by a killed precompiled-header build", entry.path)
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)


def _compile_into(staging: str, cxx: Sequence[str], header: str, flags: Sequence[str]) -> None:
    stem = _stem(header)
    wrapper = os.path.join(staging, f"{stem}.h")
    atomic_write_bytes(wrapper, f"#include <{header}>\n".encode())
    depfile = os.path.join(staging, "pch.d")
    command = [*cxx, *flags, "-x", "c++-header", wrapper, "-o", wrapper + ".gch", "-MD", "-MF", depfile]
    logger.info("building the shared precompiled header for %s (once per compiler, torch and flags)", header)
    ok, output = _run(command)
    record: dict[str, Any] = {"format": _FORMAT, "header": header, "command": command, "ok": ok}
    if ok:
        with open(wrapper + ".gch", "rb+") as f:
            os.fsync(f.fileno())
            # The other members of a shared cache hard-link it too, which fs.protected_hardlinks allows
            # only to those who may write it: the mode of the cache's data files (0o664 shared, 0o644).
            os.fchmod(f.fileno(), data_file_mode())
        own = os.path.abspath(staging) + os.sep  # the wrapper: renamed with the folder, and ours
        inputs = [p for p in _depfile_inputs(depfile) if not os.path.abspath(p).startswith(own)]
        record["inputs"] = {path: _signature(path) for path in inputs}
    else:
        record["output"] = output[-4000:]
        record["inputs"] = {}
        _warn_once(staging, f"building the shared precompiled header for {header} failed; modules build without "
                   f"it. The compiler said:\n{output[-2000:]}")
    atomic_write_bytes(os.path.join(staging, _RECORD), json.dumps(record, indent=1).encode())


def _run(command: list[str]) -> tuple[bool, str]:
    # In our process group: a signal to the caller's group reaches it too. A compiler orphaned by a
    # SIGKILL of the caller alone can only write into its staging folder, never the published one.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # recorded as a failed PCH build: modules build without it
        process.kill()
        process.wait()
        return False, f"the compiler did not finish within {_BUILD_TIMEOUT_S:.0f} s"
    except BaseException:  # interrupted: stop the compiler before the staging folder goes
        process.kill()
        process.wait()
        raise
    return process.returncode == 0, output


def _depfile_inputs(depfile: str) -> list[str]:
    with open(depfile, encoding="utf-8", errors="replace") as f:
        text = f.read().replace("\\\n", " ")
    _, _, body = text.partition(": ")
    # make's escapes: "\\ " is a space inside a path; a lone "\\" ends a continued line
    return [word.replace("\0", " ") for word in body.replace("\\ ", "\0").split() if word != "\\"]


def _link_into(folder: str, build_folder: str, stem: str) -> list[str]:
    """Hard-link the PCH into the build folder; the words that make gcc use it."""
    links = os.path.join(build_folder, _LINK_FOLDER)
    make_dirs(links, folder_mode())
    for name in (f"{stem}.h", f"{stem}.h.gch"):
        target = os.path.join(links, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        os.link(os.path.join(folder, name), target)
    return ["-include", os.path.join(links, f"{stem}.h"), "-fpch-deps"]


def release_links(build_folder: str) -> None:
    """Remove the build's links to ``.gch`` files (the wrapper headers stay: depfiles name them)."""
    links = os.path.join(build_folder, _LINK_FOLDER)
    with contextlib.suppress(FileNotFoundError), os.scandir(links) as entries:
        for entry in entries:
            if entry.name.endswith(".gch"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning("%s", message)


def clear_shared_pch(root: str, dry_run: bool = False) -> tuple[int, int]:
    """Delete the shared precompiled headers under ``root`` (``cpp-extension-tools clear``): (how many, bytes).

    Each under its lock, skipped while it is being built; builds using one hold hard links of their own,
    so deleting it under them is safe. Lock files stay.
    """
    from .._cache.fs import tree_size
    from .._cache.lock import module_lock

    parent = os.path.join(root, PCH_FOLDER)
    try:
        names = sorted(e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    count = size = 0
    for name in names:
        folder = os.path.join(parent, name)
        if TEMP_MARKER in name:
            continue  # a builder's staging folder: the next builder deletes it under the lock
        try:
            with module_lock(folder + ".pch-lock", folder + ".pch-lock.owner", f"the shared precompiled header {name}",
                             root, timeout=0):
                size += tree_size(folder)
                count += 1
                if not dry_run:
                    remove_tree(folder)
        except OSError as error:  # held by a builder (LockTimeoutError), or not ours to delete
            logger.warning("kept the shared precompiled header %s: %s", folder, error)
    return count, size
