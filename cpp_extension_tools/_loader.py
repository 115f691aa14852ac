"""Importing a published binary, and the in-process memo of loaded modules."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
from types import ModuleType

from ._cache.hashing import file_matches
from ._cache.manifest import Manifest
from ._cache.trust import open_trusted, open_trusted_stat
from ._forksafe import ForkSafeLock

__all__ = ["import_extension", "import_from_fd", "load_library_from_fd", "memo_get", "memo_put", "open_trusted",
           "open_trusted_stat"]

logger = logging.getLogger("cpp_extension_tools")

# A module, or the path of a library (is_python_module=False) or executable (is_standalone=True).
_memo: dict[tuple[str, str], tuple[ModuleType | str, Manifest]] = {}
_memo_lock = ForkSafeLock()

# (st_dev, st_ino) of each binary loaded through a descriptor -> that descriptor, kept open for the life
# of the process. glibc and CPython know a loaded library by the path string it was opened with
# (/proc/self/fd/N) before they compare inodes: if N were closed and reused for another binary, loading
# that one would hand back the first. An open descriptor's number is never reused, and it pins the
# inode, so its number cannot come to mean another file either.
_pinned: dict[tuple[int, int], int] = {}
_pinned_lock = ForkSafeLock()
_proc_fd: list[bool] = []  # [whether /proc/self/fd works], once per process


def import_extension(name: str, path: str) -> ModuleType:
    """Import the extension module ``name`` from the binary at ``path``, by name.

    For binaries the caller trusts by where they are (a prebuilt binary inside an installed
    package): nothing is checked, and a folder renamed between a check and this call would be
    followed. Cache entries are loaded with :func:`open_trusted` and :func:`import_from_fd`.
    Each artifact has a path of its own, so a rebuilt module is a new dlopen (the dynamic loader
    and CPython both cache by path: reusing one path would hand back the old code).
    """
    import torch  # noqa: F401  # the binary links to torch's libraries, loaded by this import

    return _exec_extension(name, path)


def import_from_fd(name: str, fd: int, path: str, info: os.stat_result | None = None) -> ModuleType:
    """Import the extension module ``name`` from the open binary ``fd`` (from :func:`open_trusted`).

    The dynamic loader opens ``/proc/self/fd/<fd>``, the very file that was checked, whatever has
    been renamed since. This call owns ``fd``: it is closed, or kept open for the life of the
    process as the name under which the library stays loaded (one descriptor per distinct binary
    loaded; loading the same file again reuses it). ``path`` is the binary's real path, shown as
    the module's ``__file__``. Without /proc (a chroot or a container without it), ``path`` is
    loaded by name instead, as :func:`import_extension` does. ``info``: the fstat of ``fd`` when the
    caller has it (:func:`open_trusted_stat`), which saves a system call.
    """
    import torch  # noqa: F401  # the binary links to torch's libraries, loaded by this import

    if not _have_proc_fd():
        os.close(fd)
        logger.debug("/proc/self/fd is not available; loading %s by its path", path)
        return _exec_extension(name, path)
    # Stays pinned even when the import fails: dlopen may have succeeded (a missing PyInit_ function).
    module = _exec_extension(name, f"/proc/self/fd/{_pin(fd, info)}", path)
    module.__file__ = path
    if module.__spec__ is not None:
        module.__spec__.origin = path
    return module


def _pin(fd: int, info: os.stat_result | None) -> int:
    """The descriptor number under which the file open at ``fd`` is loaded; ``fd`` is closed if not that."""
    if info is None:
        try:
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
    with _pinned_lock:
        pinned = _pinned.setdefault((info.st_dev, info.st_ino), fd)
    if pinned != fd:
        os.close(fd)  # the same file is already loaded under ``pinned``: the same module comes back
    return pinned


def _have_proc_fd() -> bool:
    if not _proc_fd:
        _proc_fd.append(os.path.isdir("/proc/self/fd"))
    return _proc_fd[0]


_imported_from: dict[str, str] = {}  # module name -> the binary this process imported it from last


def _exec_extension(name: str, location: str, shown: str | None = None) -> ModuleType:
    """Import ``name`` from ``location``; ``shown``: the path its ``__file__`` is set to afterwards."""
    loader = importlib.machinery.ExtensionFileLoader(name, location)
    spec = importlib.util.spec_from_file_location(name, location, loader=loader)
    if spec is None:  # only for paths without an extension-module suffix
        raise ImportError(f"cannot import {name!r} from {location!r}", name=name, path=location)
    previous = _imported_from.get(name)
    if previous is not None and previous != location:
        _forget_pybind11_module(name)  # another binary of the same name: a rebuild in this process
    module = importlib.util.module_from_spec(spec)
    earlier = getattr(module, "__file__", location)
    if earlier != location and earlier != shown:  # the same binary loaded again is the same module
        raise ImportError(_stale_module_message(name, shown or location, earlier), name=name, path=location)
    loader.exec_module(module)
    _imported_from[name] = location
    return module


def _forget_pybind11_module(name: str) -> None:
    """Drop ``name`` from pybind11 3's per-interpreter module cache, so a rebuilt binary makes a new module.

    pybind11 3's Py_mod_create slot returns the module it cached under the spec's name, whatever binary
    asks: without this, the rebuilt module would be the old one. torch avoids it by renaming each
    rebuild name_v<N>; a C module's init hard-codes its name, so renaming cannot be the general answer.
    """
    import ctypes  # a rebuild in this process only

    # Private function objects: setting restype on ctypes.pythonapi's would change them for everyone.
    get_state = ctypes.PYFUNCTYPE(ctypes.c_void_p)(("PyInterpreterState_Get", ctypes.pythonapi))
    get_dict = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(("PyInterpreterState_GetDict", ctypes.pythonapi))
    pointer = get_dict(get_state())
    if not pointer:  # no per-interpreter dict: pybind11 cannot have cached anything in it
        return
    # A borrowed reference: read through a cast (which takes a reference of its own), never as a
    # py_object result, which ctypes would release once more than it was taken.
    state = ctypes.cast(pointer, ctypes.py_object).value
    cache = state.get("__pybind11_module_cache") if isinstance(state, dict) else None
    if isinstance(cache, dict) and cache.pop(name, None) is not None:
        logger.debug("%s: forgot pybind11's cached module of that name before importing its rebuild", name)


def _stale_module_message(name: str, location: str, earlier: object) -> str:
    # The safety net behind _forget_pybind11_module: an init that hands back a module made before (CPython
    # sets __file__ only on new modules) would make the new code silently invisible.
    return (f"{name}: the rebuilt binary {location} was loaded, but its module init handed back the module "
            f"this process imported before from {earlier} (pybind11 keeps one module per name per process), "
            "so the new code would not be visible. Restart the process to use the new build (it is cached: "
            "the restart compiles nothing), or give the edited module another name.")


_libraries: set[int] = set()  # the pinned descriptors of the libraries torch.ops.load_library loaded
_libraries_lock = ForkSafeLock()


def load_library_from_fd(fd: int, path: str, info: os.stat_result | None = None) -> str:
    """Load the open shared library ``fd`` with ``torch.ops.load_library`` (once per process), return ``path``.

    Its operators (``TORCH_LIBRARY``) register as it loads. Like :func:`import_from_fd`, the loader
    opens the checked file through ``/proc/self/fd`` and this call owns ``fd``.
    """
    import torch

    if not _have_proc_fd():
        os.close(fd)
        location, number = path, -1
    else:
        number = _pin(fd, info)
        location = f"/proc/self/fd/{number}"
    with _libraries_lock:
        if number in _libraries and number >= 0:
            return path
        torch.ops.load_library(location)  # type: ignore[no-untyped-call]
        _libraries.add(number)
    return path


def memo_get(folder: str, key: str) -> ModuleType | str | None:
    """The module this process loaded for a configuration, if its inputs are unchanged."""
    with _memo_lock:
        entry = _memo.get((folder, key))
    if entry is None:
        return None
    module, manifest = entry
    if all(file_matches(record) for record in manifest.inputs) and not manifest.changed_folder():
        return module
    return None


def memo_put(folder: str, key: str, module: ModuleType | str, manifest: Manifest) -> None:
    with _memo_lock:
        _memo[(folder, key)] = (module, manifest)
