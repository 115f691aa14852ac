"""Atomic file publication: write to a temporary name, fsync, then os.replace.

A reader sees either the old file or the complete new one, never a torn
write, whatever happens to the writer (SIGKILL, full disk, power loss after
the fsync).

Modes are set with fchmod after creating, so they are exact whatever the
umask: in a team cache (CACHED_CPP_EXTENSION_SHARED_CACHE=1) the other members
must be able to replace what one member wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator

from .trust import binary_mode, data_file_mode

__all__ = ["TEMP_MARKER", "atomic_copy", "atomic_write_bytes", "make_dirs", "remove_tree", "temporary_name",
           "tree_size"]

# Every temporary file carries this marker so leftovers of a killed writer can
# be recognized (and are never mistaken for real entries).
TEMP_MARKER = ".tmp-"


def temporary_name(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f"{base}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def _cleanup_on_error(path: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def atomic_write_bytes(path: str, data: bytes, mode: int | None = None) -> None:
    """Publish ``data`` at ``path`` with exactly ``mode`` (default: ``_trust.data_file_mode()``)."""
    tmp = temporary_name(path)
    with _cleanup_on_error(tmp):
        fd = _create_exclusive(tmp, data_file_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_copy(source: str, destination: str, mode: int | None = None) -> None:
    """Publish a copy of ``source`` at ``destination`` with exactly ``mode`` (default: ``_trust.binary_mode()``)."""
    tmp = temporary_name(destination)
    with _cleanup_on_error(tmp):
        fd = _create_exclusive(tmp, binary_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, destination)


def _create_exclusive(path: str, mode: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is cut by the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(path: str, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode`` (mkdir's mode is cut by the umask)."""
    missing = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if os.path.isdir(folder):
                continue  # another process made it first
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", folder) from None
        _chmod_folder(folder, mode)


def _chmod_folder(folder: str, mode: int) -> None:
    """chmod, never through a symlink put in place of the folder just made (lchmod does not exist on Linux)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Delete a file or folder; what cannot be deleted is left (it is never loaded or trusted)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def tree_size(path: str) -> int:
    """Bytes of every file and symlink under ``path`` (lstat; links are not followed; unreadable folders count 0)."""
    total = 0
    pending = [path]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    else:
                        total += _lstat_size(entry)
        except OSError:
            continue
    return total


def _lstat_size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:  # removed while walking
        return 0
