"""What a cache root holds: modules, their artifacts and build folders, sizes and last use.

Read-only and lock-free: entries may vanish while they are listed (another
process pruning or clearing) and are then left out. Only folders laid out as
this library's modules (see _store, which owns the layout: every path here
comes from a ModuleStore) are listed; anything else under the root is not
the cache's and is never counted or touched.

Damage never raises: a manifest of odd types, an artifact that is not a plain
folder or whose binary is missing or of another size than its manifest says
(truncated), an ``artifacts/`` or ``builds/`` that is a file or unreadable are
listed as damaged entries (pruning deletes them). Nothing is opened that is
not a regular file, so a FIFO planted in the cache cannot block a listing.

Whether a module is being built (:func:`lock_is_held`) is asked of its lock
file with a non-blocking flock, released at once; the lock file is never
created here, nor deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

from .._env.cpu import target_cpu
from .._errors import ManifestError
from .fs import TEMP_MARKER, tree_size
from .manifest import Manifest, read_manifest
from .store import ModuleStore, last_used, module_names

__all__ = ["ArtifactInfo", "BuildFolderInfo", "ModuleInfo", "list_modules", "lock_is_held", "visible_modules"]


@dataclass(frozen=True)
class ArtifactInfo:
    """One published binary. ``damaged`` says why it cannot be used ("" when it can)."""

    module: str
    artifact_id: str
    path: str
    size: int
    built_at: float
    last_used: float
    build_seconds: float
    built_for: dict[str, Any]
    damaged: str = ""

    @property
    def entry_id(self) -> str:
        return self.artifact_id


@dataclass(frozen=True)
class BuildFolderInfo:
    """The ninja build folder of one configuration (object files, for incremental rebuilds).

    ``damaged``: why ``path`` (then the whole ``builds/`` folder) cannot be used ("" when it can)."""

    module: str
    key16: str
    path: str
    size: int
    last_used: float
    damaged: str = ""

    @property
    def entry_id(self) -> str:
        return self.key16


@dataclass(frozen=True)
class ModuleInfo:
    """One module folder. ``being_built``: its lock was held by another process when it was listed
    (only asked by ``list_modules(..., probe_locks=True)``); ``empty``: it holds nothing but lock files
    and empty folders (what ``clear`` leaves)."""

    name: str
    path: str
    size: int  # everything in the module folder, including hints, failure records and the lock
    artifacts: tuple[ArtifactInfo, ...]
    builds: tuple[BuildFolderInfo, ...]
    being_built: bool = False
    empty: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "size_bytes": self.size, "being_built": self.being_built,
                "artifacts": [_entry_json(a) for a in self.artifacts],
                "builds": [_entry_json(b) for b in self.builds]}


def _entry_json(entry: ArtifactInfo | BuildFolderInfo) -> dict[str, Any]:
    data = asdict(entry)
    data["size_bytes"] = data.pop("size")
    return data


def list_modules(root: str, name: str | None = None, probe_locks: bool = False) -> list[ModuleInfo]:
    """The modules under ``root`` (only ``name`` if given), sorted by name; [] for a missing root.

    ``probe_locks``: say which modules are being built (:func:`lock_is_held`; each lock is taken and
    released at once, so a caller that holds one of them sees it as being built)."""
    return [_module(root, module_name, probe_locks) for module_name in module_names(root)
            if name is None or module_name == name]


def visible_modules(root: str, name: str | None = None) -> list[ModuleInfo]:
    """What ``list`` shows: the modules with something in them, or being built (their locks probed)."""
    return [m for m in list_modules(root, name, probe_locks=True) if m.being_built or not m.empty]


def _module(root: str, name: str, probe_locks: bool) -> ModuleInfo:
    store = ModuleStore(root, name)
    artifacts = tuple(_artifacts(store))
    builds = tuple(_build_folders(store))
    busy = probe_locks and lock_is_held(store.lock_path)
    empty = not artifacts and not builds and store.holds_only_locks()
    return ModuleInfo(name, store.folder, tree_size(store.folder), artifacts, builds, being_built=busy, empty=empty)


def lock_is_held(lock_path: str) -> bool:
    """Whether another open file holds the flock on ``lock_path`` (a build or deletion in progress).

    Never creates, truncates or deletes the lock file, and never blocks: a missing lock, one that is
    no regular file or one on a file system without flock counts as not held.
    """
    try:
        fd = _open_existing(lock_path)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError as error:
        return error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def _open_existing(path: str) -> int:
    """A descriptor of ``path`` without creating it or following a link; read-write where allowed
    (flock emulated by fcntl on NFS needs it), else read-only. O_NONBLOCK: a FIFO never blocks."""
    flags = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, os.O_RDWR | flags)
    except (PermissionError, IsADirectoryError):
        return os.open(path, os.O_RDONLY | flags)


def _subfolders(folder: str) -> tuple[list[os.DirEntry[str]], str]:
    """Complete entries only (a name with TEMP_MARKER is work in progress or a deletion), and what is
    wrong with ``folder`` itself ("" when it is a readable folder or absent)."""
    try:
        with os.scandir(folder) as entries:
            found = [e for e in entries if e.is_dir(follow_symlinks=False) and TEMP_MARKER not in e.name]
    except FileNotFoundError:
        return [], ""
    except NotADirectoryError:
        return [], "is not a folder"
    except OSError as error:
        return [], f"is unreadable ({error.strerror or error})"
    if os.path.islink(folder):
        return [], "is a symbolic link"
    return sorted(found, key=lambda e: e.name), ""


def _artifacts(store: ModuleStore) -> list[ArtifactInfo]:
    folder = store.artifacts_folder
    entries, problem = _subfolders(folder)
    if problem:  # listed as one damaged entry named for the folder
        changed = _mtime(folder)
        return [ArtifactInfo(store.name, os.path.basename(folder), folder, tree_size(folder), changed, changed, 0.0,
                             {}, damaged=f"the artifacts folder {folder} {problem}")]
    return [_artifact(store, entry.name, entry.path) for entry in entries]


def _artifact(store: ModuleStore, artifact_id: str, path: str) -> ArtifactInfo:
    module = store.name
    created = _mtime(path)
    try:
        manifest = read_manifest(store.manifest_path(artifact_id))  # never blocks on a FIFO
    except ManifestError as error:
        return ArtifactInfo(module, artifact_id, path, tree_size(path), created, created, 0.0, {},
                            damaged=str(error))
    # Not trusted for arithmetic: a manifest may hold NaN, Infinity or years beyond time_t.
    created = _timestamp(manifest.created_at, created)
    seconds = manifest.build_seconds if math.isfinite(manifest.build_seconds) and manifest.build_seconds >= 0 else 0.0
    return ArtifactInfo(module, artifact_id, path, tree_size(path), created, _timestamp(last_used(path, created),
                        created), seconds, built_for(manifest), damaged=_binary_problem(path, manifest))


def _binary_problem(folder: str, manifest: Manifest) -> str:
    """Why the artifact's binary is unusable as its manifest describes it ("" when its size matches)."""
    binary = os.path.join(folder, manifest.library_file)
    try:
        info = os.lstat(binary)
    except FileNotFoundError:
        return f"its binary {binary} is missing"
    except OSError as error:
        return f"its binary {binary} cannot be read ({error.strerror or error})"
    if not stat.S_ISREG(info.st_mode):
        return f"its binary {binary} is not a regular file"
    if info.st_size != manifest.library.size:
        return (f"its binary {binary} is {info.st_size} bytes, its manifest says {manifest.library.size} "
                "(truncated or overwritten)")
    return ""


# Timestamps past this (year 5138) are damage; time.localtime() overflows on some of them.
_LATEST_TIMESTAMP = 1e11


def _timestamp(value: float, fallback: float) -> float:
    return value if math.isfinite(value) and 0 <= value <= _LATEST_TIMESTAMP else fallback


def _build_folders(store: ModuleStore) -> list[BuildFolderInfo]:
    folder = store.builds_folder
    entries, problem = _subfolders(folder)
    if problem:  # listed as one damaged entry named for the folder
        return [BuildFolderInfo(store.name, os.path.basename(folder), folder, tree_size(folder), _mtime(folder),
                                damaged=f"the builds folder {folder} {problem}")]
    return [BuildFolderInfo(store.name, entry.name, entry.path, tree_size(entry.path), _newest_mtime(entry.path))
            for entry in entries]


def built_for(manifest: Manifest) -> dict[str, Any]:
    """What a binary runs on: torch, Python, the CPU target and CUDA architectures (from its manifest).

    The details are informative and not validated by the manifest's reader: a field of another type is None.
    """
    configuration = _object(manifest.details.get("configuration"))
    environment = _object(configuration.get("environment"))
    torch = _object(environment.get("torch"))
    cflags = configuration.get("cflags")  # the host code's target (nvcc's -Xcompiler ones follow it)
    cflags = [flag for flag in cflags if isinstance(flag, str)] if isinstance(cflags, list) else []
    cpu = environment.get("cpu")
    return {
        "torch": _scalar(torch.get("version")),
        "cxx11_abi": _scalar(torch.get("cxx11_abi")),
        "python": _scalar(_object(environment.get("python")).get("cache_tag")),
        "cpu": cpu_target(cflags, cpu if isinstance(cpu, str) else None),
        "cuda_archs": _scalar(manifest.details.get("cuda_arch_list")),
    }


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _scalar(value: object) -> str | int | bool | None:
    if isinstance(value, float):
        return None
    return value if isinstance(value, (str, int, bool)) else None


def cpu_target(cflags: list[str], fingerprint: str | None) -> str:
    """The -march the flags ask for ("native" names the CPU's fingerprint), or "default"."""
    march = target_cpu(cflags)
    if march is None:
        return "default"
    if march == "native" and fingerprint:
        return f"native ({fingerprint[:8]})"
    return march


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _newest_mtime(folder: str) -> float:
    """The last build in a build folder: ninja rewrites its log and outputs at the top level."""
    newest = _mtime(folder)
    with contextlib.suppress(OSError), os.scandir(folder) as entries:  # removed while listed
        for entry in entries:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest
