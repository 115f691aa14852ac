"""Whether a path in the cache is safe to load code from, or to write into.

Loading a shared library runs its code. A binary that another account could
have replaced (a file or folder on the way to it that is writable by others,
owned by someone else, or a symlink leading out of the cache) is refused
rather than loaded: CuPy and torch load whatever they find, which turns a
shared /tmp cache into a code-injection path.

A deliberately shared team cache (CACHED_CPP_EXTENSION_SHARED_CACHE=1) accepts
folders that are group-writable and entries owned by other accounts; the
group's members are then trusted with this process's code. World-writable
folders without the sticky bit are refused even then.
"""

from __future__ import annotations

import os
import stat

from ._errors import UnsafeCacheError

__all__ = ["SHARED_CACHE_ENV", "check_trusted", "folder_mode", "shared_cache"]

SHARED_CACHE_ENV = "CACHED_CPP_EXTENSION_SHARED_CACHE"


def shared_cache() -> bool:
    return os.environ.get(SHARED_CACHE_ENV, "") not in ("", "0")


def folder_mode() -> int:
    """Mode for new cache folders: private, or group-writable with setgid for a shared cache."""
    return 0o2770 if shared_cache() else 0o700


def check_trusted(root: str, path: str) -> None:
    """Raise UnsafeCacheError unless ``path`` and every folder between it and ``root`` are safe.

    Levels that do not exist yet are skipped, so this also vets where a path would be created.

    ``path`` lies inside ``root``. Entries below the root must not be symlinks (a link could lead
    anywhere); the root itself may be one (a cache placed on a scratch disk) and is checked where it
    points. One lstat per level: this runs on every warm load.
    """
    shared = shared_cache()
    current = path
    while True:
        is_root = current == root
        try:
            info: os.stat_result | None = os.stat(current) if is_root else os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            info = None  # not created yet, or cannot be (creating it reports why); the parents still count
        if info is not None and not is_root and stat.S_ISLNK(info.st_mode):  # a link's own mode is 0777
            raise UnsafeCacheError(_message(current, "is a symbolic link", path))
        problem = _problem(info, shared) if info is not None else None
        if problem is not None:
            raise UnsafeCacheError(_message(current, problem, path))
        if is_root:
            return
        parent = os.path.dirname(current)
        if parent != root and not parent.startswith(root + os.sep):
            raise UnsafeCacheError(f"{path} is not inside the cache root {root}")
        current = parent


def _problem(info: os.stat_result, shared: bool) -> str | None:
    mode = info.st_mode
    if info.st_uid not in (os.geteuid(), 0) and not shared:
        return f"is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
    sticky_folder = stat.S_ISDIR(mode) and mode & stat.S_ISVTX
    if mode & stat.S_IWOTH and not sticky_folder:
        return "is writable by every user"
    if mode & stat.S_IWGRP and not sticky_folder and not shared and not _private_group(info.st_gid):
        return f"is writable by the members of group {info.st_gid}"
    return None


def _private_group(gid: int) -> bool:
    """True for a user-private group (this user's primary group with no other members): with umask 002,
    everything is group-writable, harmlessly so when nobody else is in the group."""
    if gid != os.getegid():
        return False
    import grp  # rare path: only for group-writable entries

    try:
        return not grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def _message(offender: str, problem: str, path: str) -> str:
    return (f"refusing to load {path}: {offender} {problem}, so another user could have replaced the "
            "binary, and loading it would run their code in this process. Use a cache root only you can "
            "write to (set CACHED_CPP_EXTENSION_BUILD_DIR), fix the permissions (chmod go-w, chown), or, "
            f"for a cache deliberately shared by a team, set {SHARED_CACHE_ENV}=1 to trust its group.")
