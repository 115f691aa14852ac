"""What a cache root holds: modules, their artifacts and build folders, sizes and last use.

Read-only and lock-free: entries may vanish while they are listed (another
process pruning or clearing) and are then left out. Only folders laid out as
this library's modules (see _store) are listed; anything else under the root
is not the cache's and is never counted or touched.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import Any

from ._errors import ManifestError
from ._flags import target_cpu
from ._fsutil import TEMP_MARKER, tree_size
from ._manifest import MANIFEST_NAME, Manifest, read_manifest
from ._store import last_used

__all__ = ["ArtifactInfo", "BuildFolderInfo", "ModuleInfo", "list_modules", "module_names"]

_MODULE_MARKERS = ("artifacts", "builds", ".lock")


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
    """The ninja build folder of one configuration (object files, for incremental rebuilds)."""

    module: str
    key16: str
    path: str
    size: int
    last_used: float

    @property
    def entry_id(self) -> str:
        return self.key16


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    path: str
    size: int  # everything in the module folder, including hints, failure records and the lock
    artifacts: tuple[ArtifactInfo, ...]
    builds: tuple[BuildFolderInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "size_bytes": self.size,
                "artifacts": [_entry_json(a) for a in self.artifacts],
                "builds": [_entry_json(b) for b in self.builds]}


def _entry_json(entry: ArtifactInfo | BuildFolderInfo) -> dict[str, Any]:
    data = asdict(entry)
    data["size_bytes"] = data.pop("size")
    return data


def list_modules(root: str, name: str | None = None) -> list[ModuleInfo]:
    """The modules under ``root`` (only ``name`` if given), sorted by name; [] for a missing root."""
    modules = []
    for module_name in module_names(root):
        if name is not None and module_name != name:
            continue
        folder = os.path.join(root, module_name)
        modules.append(ModuleInfo(module_name, folder, tree_size(folder), tuple(_artifacts(module_name, folder)),
                                  tuple(_build_folders(module_name, folder))))
    return modules


def module_names(root: str) -> list[str]:
    """The folders under ``root`` laid out as modules of this library, sorted; [] for a missing root."""
    try:
        with os.scandir(root) as entries:
            folders = [e for e in entries if e.is_dir(follow_symlinks=False) and TEMP_MARKER not in e.name]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in folders
                  if any(os.path.lexists(os.path.join(e.path, marker)) for marker in _MODULE_MARKERS))


def _subfolders(folder: str) -> list[os.DirEntry[str]]:
    """Complete entries only: a name with TEMP_MARKER is work in progress or a deletion."""
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if e.is_dir(follow_symlinks=False) and TEMP_MARKER not in e.name),
                          key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _artifacts(module: str, module_folder: str) -> list[ArtifactInfo]:
    found = []
    for entry in _subfolders(os.path.join(module_folder, "artifacts")):
        try:
            manifest = read_manifest(os.path.join(entry.path, MANIFEST_NAME))
        except ManifestError as error:
            created = _mtime(entry.path)
            found.append(ArtifactInfo(module, entry.name, entry.path, tree_size(entry.path), created, created,
                                      0.0, {}, damaged=str(error)))
            continue
        found.append(ArtifactInfo(module, entry.name, entry.path, tree_size(entry.path), manifest.created_at,
                                  last_used(entry.path, manifest.created_at), manifest.build_seconds,
                                  built_for(manifest)))
    return found


def _build_folders(module: str, module_folder: str) -> list[BuildFolderInfo]:
    return [BuildFolderInfo(module, entry.name, entry.path, tree_size(entry.path), _newest_mtime(entry.path))
            for entry in _subfolders(os.path.join(module_folder, "builds"))]


def built_for(manifest: Manifest) -> dict[str, Any]:
    """What a binary runs on: torch, Python, the CPU target and CUDA architectures (from its manifest)."""
    configuration = manifest.details.get("configuration", {})
    environment = configuration.get("environment", {})
    torch = environment.get("torch", {})
    cflags = list(configuration.get("cflags", []))  # the host code's target (nvcc's -Xcompiler ones follow it)
    return {
        "torch": torch.get("version"),
        "cxx11_abi": torch.get("cxx11_abi"),
        "python": environment.get("python", {}).get("cache_tag"),
        "cpu": cpu_target(cflags, environment.get("cpu")),
        "cuda_archs": manifest.details.get("cuda_arch_list"),
    }


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
