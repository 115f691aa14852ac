"""Whether a path in the cache is safe to load code from, or to write into.

Loading a shared library runs its code. A binary that another account could
have replaced (a file or folder on the way to it that is writable by others,
owned by someone else, or a symlink leading out of the cache) is refused
rather than loaded: CuPy and torch load whatever they find, which turns a
shared /tmp cache into a code-injection path.

A deliberately shared team cache (CACHED_CPP_EXTENSION_SHARED_CACHE=1) accepts
folders that are group-writable and entries owned by other accounts of a group
this process is in; the group's members are then trusted with this process's
code. World-writable folders without the sticky bit are refused even then.

:func:`check_trusted` vets paths by name (for creating and deleting);
:func:`open_trusted` opens a binary for loading so that the check and the load
see the same file, whatever is renamed meanwhile.
"""

from __future__ import annotations

import errno
import os
import stat

from .. import _settings
from .._errors import UnsafeCacheError

__all__ = ["SHARED_CACHE_ENV", "binary_mode", "check_trusted", "data_file_mode", "file_mode", "folder_mode",
           "open_trusted", "open_trusted_stat", "shared_cache"]

SHARED_CACHE_ENV = _settings.SHARED_CACHE.name

# O_PATH: the root is only looked up in and fstat-ed, never read (Linux; elsewhere an ordinary open).
_ROOT_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a planted FIFO cannot hang us


def shared_cache() -> bool:
    return _settings.SHARED_CACHE.get()


def folder_mode() -> int:
    """Mode for new cache folders: private, or group-writable with setgid for a shared cache."""
    return 0o2770 if shared_cache() else 0o700


def file_mode() -> int:
    """Mode for files only this user reads and writes in a private cache (lock files): 0o600, 0o660 shared."""
    return 0o660 if shared_cache() else 0o600


def data_file_mode() -> int:
    """Mode for hints, manifests, failure records and build state: 0o644, 0o664 in a shared cache."""
    return 0o664 if shared_cache() else 0o644


def binary_mode() -> int:
    """Mode for binaries and scripts: 0o755, 0o775 in a shared cache."""
    return 0o775 if shared_cache() else 0o755


def check_trusted(root: str, path: str) -> None:
    """Raise UnsafeCacheError unless ``path`` and every folder between it and ``root`` are safe.

    Levels that do not exist yet are skipped, so this also vets where a path would be created.

    ``path`` lies inside ``root``. Entries below the root must not be symlinks (a link could lead
    anywhere); the root itself may be one (a cache placed on a scratch disk) and is checked where it
    points. One lstat per level. This checks names, so it cannot vet what a later open finds there:
    code is loaded through :func:`open_trusted`.
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


def open_trusted(root: str, path: str) -> int:
    """Open the binary ``path`` (inside ``root``) for loading; return a descriptor the caller closes.

    See :func:`open_trusted_stat`, which also returns the binary's fstat.
    """
    return open_trusted_stat(root, path)[0]


def open_trusted_stat(root: str, path: str) -> tuple[int, os.stat_result]:
    """Open the binary ``path`` (inside ``root``) for loading: (a descriptor the caller closes, its fstat).

    The root is opened and checked with fstat, then every level below it is checked (the rules of
    :func:`check_trusted`) by its name relative to that descriptor, top first, and the binary is
    opened relative to it too: the descriptor returned is the file that was checked, and loading
    through it (``_loader.import_from_fd``) cannot be redirected by renaming any folder. Entries
    below the root are never followed when they are symlinks; the root may be one.

    Checking a level by name and then opening through it is safe because of the order: a level is
    looked at only after its parent passed, and a folder that passed is one only this user (or root,
    or in a shared cache the group) can change, so nobody else can replace the next level between the
    check and the open. (One lookup per level and one open, instead of an open, an fstat and a close
    per level: the warm path's system calls.)

    The root's own parents need no check. Whatever the path of the root resolves to, the opened
    folder must be owned by this user (or by root, or in a shared cache by an account of a group
    this process is in) and not writable by others; nobody else can create such a folder, or
    change what is inside it. An attacker who can rename the root or a folder above it can only
    put another folder of ours in its place, never one holding their code; every level below is
    looked up inside that verified folder, not by path.

    Raises UnsafeCacheError naming the offending level; FileNotFoundError (or NotADirectoryError)
    when a level is missing (a pruned artifact); ImportError when the binary is not a regular file.
    """
    parts = _parts_below(root, path)
    shared = shared_cache()
    euid = os.geteuid()
    root_fd = os.open(root, _ROOT_FLAGS)
    try:
        _check_info(os.fstat(root_fd), root, path, shared, euid)
        for index in range(1, len(parts)):
            _check_folder_level(root_fd, os.sep.join(parts[:index]), root, path, shared, euid)
        fd = _open_binary(root_fd, os.sep.join(parts), path)
    finally:
        os.close(root_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImportError(f"cannot load {path}: it is not a regular file", path=path)
        _check_info(info, path, path, shared, euid)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _parts_below(root: str, path: str) -> list[str]:
    if not path.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafeCacheError(f"{path} is not inside the cache root {root}")
    parts = [p for p in path[len(root.rstrip(os.sep)) + 1:].split(os.sep) if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafeCacheError(f"{path} is not inside the cache root {root}")
    return parts


def _check_folder_level(root_fd: int, relative: str, root: str, path: str, shared: bool, euid: int) -> None:
    level = os.path.join(root, relative)
    try:
        info = os.stat(relative, dir_fd=root_fd, follow_symlinks=False)
    except OSError as error:
        error.filename = level
        raise
    if stat.S_ISLNK(info.st_mode):  # a link's own mode is 0777: say what it is
        raise UnsafeCacheError(_message(level, "is a symbolic link", path))
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", level)
    _check_info(info, level, path, shared, euid)


def _open_binary(root_fd: int, relative: str, path: str) -> int:
    try:
        return os.open(relative, _FILE_FLAGS, dir_fd=root_fd)
    except OSError as error:
        if error.errno != errno.ELOOP:
            error.filename = path
            raise
        # O_NOFOLLOW answers ELOOP for a symlink (the levels above were checked: it is the binary's own name).
        raise UnsafeCacheError(_message(path, "is a symbolic link", path)) from None


def _check_info(info: os.stat_result, level: str, path: str, shared: bool, euid: int) -> None:
    problem = _problem(info, shared, euid)
    if problem is not None:
        raise UnsafeCacheError(_message(level, problem, path))


def _problem(info: os.stat_result, shared: bool, euid: int | None = None) -> str | None:
    mode = info.st_mode
    if euid is None:
        euid = os.geteuid()
    if info.st_uid not in (euid, 0):
        if not shared:
            return f"is owned by uid {info.st_uid}, not by this user (uid {euid})"
        if not _in_group(info.st_gid):  # a team member's entry carries the team's group
            return (f"is owned by uid {info.st_uid} with group {info.st_gid}, a group this user "
                    f"(uid {euid}) is not in")
    sticky_folder = stat.S_ISDIR(mode) and mode & stat.S_ISVTX
    if mode & stat.S_IWOTH and not sticky_folder:
        return "is writable by every user"
    if mode & stat.S_IWGRP and not sticky_folder and not shared and not _private_group(info.st_gid):
        return f"is writable by the members of group {info.st_gid}"
    return None


_groups: dict[tuple[int, int], frozenset[int]] = {}
_private_groups: dict[tuple[int, int], bool] = {}


def _in_group(gid: int) -> bool:
    key = (os.geteuid(), os.getegid())
    groups = _groups.get(key)
    if groups is None:
        groups = _groups[key] = frozenset((key[1], *os.getgroups()))
    return gid in groups


def _private_group(gid: int) -> bool:
    """True for a user-private group: this user's primary group, and no other account is in it (as a
    listed member or by having it as its own primary group). With umask 002 everything is
    group-writable, harmlessly so when nobody else is in the group. Answered once per process."""
    key = (os.geteuid(), gid)
    answer = _private_groups.get(key)
    if answer is None:
        answer = _private_groups[key] = gid == os.getegid() and not _other_members(gid, key[0])
    return answer


def _other_members(gid: int, uid: int) -> list[str]:
    import grp  # rare path: only for group-writable entries
    import pwd

    try:
        me = pwd.getpwuid(uid).pw_name
    except KeyError:
        me = ""
    try:
        listed = [name for name in grp.getgrgid(gid).gr_mem if name != me]
    except KeyError:
        return ["(unknown group)"]  # a group nobody can vouch for is not private
    return listed + [user.pw_name for user in pwd.getpwall() if user.pw_gid == gid and user.pw_uid != uid]


def _message(offender: str, problem: str, path: str) -> str:
    return (f"refusing to load {path}: {offender} {problem}, so another user could have replaced the "
            "binary, and loading it would run their code in this process. Use a cache root only you can "
            "write to (set CACHED_CPP_EXTENSION_BUILD_DIR), fix the permissions (chmod go-w, chown), or, "
            f"for a cache deliberately shared by a team, set {SHARED_CACHE_ENV}=1 to trust its group.")
