"""Where the cache lives.

The root is the ``build_directory`` argument, else CACHED_CPP_EXTENSION_BUILD_DIR,
else a folder in the current working directory. A root found through the
environment or the default is written back to the environment as an absolute
path, so spawn/forkserver workers and subprocesses use the same cache even
after a chdir.
"""

from __future__ import annotations

import os

__all__ = ["BUILD_DIR_ENV", "DEFAULT_ROOT_NAME", "resolve_root"]

BUILD_DIR_ENV = "CACHED_CPP_EXTENSION_BUILD_DIR"
DEFAULT_ROOT_NAME = "cached_cpp_extensions"


def resolve_root(build_directory: str | os.PathLike[str] | None) -> str:
    if build_directory is not None:
        if not isinstance(build_directory, (str, os.PathLike)):
            raise TypeError(f"build_directory: expected a path or None, got {type(build_directory).__name__}")
        root = os.fspath(build_directory)
        if not root:
            raise ValueError("build_directory: empty path; pass None to use the default cache root")
        return os.path.abspath(os.path.expanduser(root))
    configured = os.environ.get(BUILD_DIR_ENV)
    root = os.path.abspath(os.path.expanduser(configured)) if configured else \
        os.path.join(os.getcwd(), DEFAULT_ROOT_NAME)
    if configured != root:
        os.environ[BUILD_DIR_ENV] = root
    return root
