"""Where the cache lives.

The root is the ``build_directory`` argument, else CACHED_CPP_EXTENSION_BUILD_DIR,
else a folder in the current working directory. A root found through the
environment or the default is written back to the environment as an absolute
path, so spawn/forkserver workers and subprocesses use the same cache even
after a chdir.

A root is checked the first time this process sees it (one lstat, or one stat):
it must be a folder, or not exist yet. The default root, whose name anyone can
guess, is refused when it is a symlink or another user's folder in a current
folder that others can write to (another user pre-created
/tmp/cached_cpp_extensions to receive our writes, or to serve us their code).
"""

from __future__ import annotations

import errno
import os
import stat

from .. import _settings
from .._errors import UnsafeCacheError
from .trust import _private_group

__all__ = ["BUILD_DIR_ENV", "DEFAULT_ROOT_NAME", "resolve_root"]

BUILD_DIR_ENV = _settings.BUILD_DIR.name
DEFAULT_ROOT_NAME = "cached_cpp_extensions"

# (root, is the default) that passed the checks in this process: the warm path makes no system call.
_checked: set[tuple[str, bool]] = set()


def resolve_root(build_directory: str | os.PathLike[str] | None) -> str:
    """The absolute cache root; TypeError, ValueError, NotADirectoryError or UnsafeCacheError say what is wrong."""
    if build_directory is not None:
        root = _absolute(_argument(build_directory), "build_directory")
        _check_once(root, "build_directory", default=False)
        return root
    configured = _settings.BUILD_DIR.get()
    if configured:
        root = _absolute(configured, BUILD_DIR_ENV)
        _check_once(root, BUILD_DIR_ENV, default=False)
    else:
        root = _absolute(os.path.join(os.getcwd(), DEFAULT_ROOT_NAME), "the default cache root")
        _check_once(root, "the default cache root", default=True)
    if os.environ.get(BUILD_DIR_ENV) != root:
        os.environ[BUILD_DIR_ENV] = root
    return root


def _argument(build_directory: object) -> str:
    if not isinstance(build_directory, (str, os.PathLike)):
        raise TypeError(f"build_directory: expected a path or None, got {type(build_directory).__name__}")
    root = os.fspath(build_directory)
    if not isinstance(root, str):
        raise TypeError("build_directory: expected a str path, got bytes")
    if not root:
        raise ValueError("build_directory: empty path; pass None to use the default cache root")
    return root


def _absolute(root: str, source: str) -> str:
    if "\0" in root or "\n" in root or "\r" in root:
        raise ValueError(f"{source}: {root!r}: a path cannot contain a NUL byte or a line break")
    return os.path.abspath(os.path.expanduser(root))


def _check_once(root: str, source: str, default: bool) -> None:
    if (root, default) in _checked:
        return
    try:
        info = os.lstat(root) if default else os.stat(root)
    except (FileNotFoundError, NotADirectoryError):
        return  # created by the first build (which reports a parent that is a file); checked again later
    if default and (stat.S_ISLNK(info.st_mode) or info.st_uid not in (os.geteuid(), 0)):
        _refuse_foreign_default(root, info)
        try:
            info = os.stat(root)
        except FileNotFoundError:
            return  # a dangling link in a private folder: creating the root reports it
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"{source}: the cache root is not a folder", root)
    _checked.add((root, default))


def _refuse_foreign_default(root: str, info: os.stat_result) -> None:
    """A link or another user's folder as the default root: fine in a private folder, refused in a shared one."""
    parent = os.stat(os.path.dirname(root))
    group_writable = parent.st_mode & stat.S_IWGRP and not _private_group(parent.st_gid)
    if not parent.st_mode & stat.S_IWOTH and not group_writable:
        return  # only this user (or root) could have put it there
    what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else f"owned by uid {info.st_uid}"
    raise UnsafeCacheError(
        f"refusing the default cache root {root}: it is {what}, in a folder other users can write to, so "
        "another user may have put it there to receive this process's builds or to serve it their code. "
        f"Set {BUILD_DIR_ENV} (or pass build_directory=) to a folder of your own, or run from another folder.")
