"""Deleting cached artifacts and build folders: least recently used first, each under its module's lock.

Safe next to running processes:
- a module whose lock is held (a build or publication in progress) is skipped
  (or waited for, up to ``lock_timeout``), never deleted from under the build;
- an entry is renamed away first, then deleted, so readers see it whole or
  not at all; a process that has the binary loaded keeps its mapping, and one
  between its lookup and its dlopen looks again under the lock (_api);
- lock files are never deleted: deleting a lock file another process holds or
  waits on splits the lock in two.

A damaged cache never stops it: a module it cannot lock or an entry it cannot
delete is logged and skipped, so pruning after a build never fails that build
because of another module. Folders of this user that lost their permissions
(``chmod 000``) get them back so that they can be deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import _settings
from .._cli.units import format_size
from .._errors import LockTimeoutError, UnsafeCacheError
from .fs import remove_tree, temporary_name
from .inventory import ArtifactInfo, BuildFolderInfo, ModuleInfo, list_modules, lock_is_held
from .lock import module_lock
from .store import ModuleStore
from .trust import check_trusted

__all__ = ["MAX_SIZE_ENV", "PruneReport", "clear", "max_size_from_env", "prune"]

logger = logging.getLogger("cpp_extension_tools")

MAX_SIZE_ENV = _settings.MAX_SIZE.name  # an alias of the registry's name, for modules that import it

Entry = ArtifactInfo | BuildFolderInfo


@dataclass
class PruneReport:
    removed: list[Entry] = field(default_factory=list)
    busy_modules: list[str] = field(default_factory=list)  # skipped: their lock was held
    failed_modules: list[str] = field(default_factory=list)  # skipped: their lock could not be taken
    size_before: int = 0
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.removed)

    def summary(self) -> str:
        artifacts = sum(isinstance(entry, ArtifactInfo) for entry in self.removed)
        verb = "would free" if self.dry_run else "freed"
        text = (f"{artifacts} artifact(s) and {len(self.removed) - artifacts} build folder(s), {verb} "
                f"{format_size(self.freed)} of {format_size(self.size_before)}")
        if self.busy_modules:
            text += f"; skipped (being built): {', '.join(self.busy_modules)}"
        if self.failed_modules:
            text += f"; skipped (cannot be locked, see the warnings): {', '.join(self.failed_modules)}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"removed": [{"module": e.module, "kind": _kind(e), "id": e.entry_id, "path": e.path,
                             "size_bytes": e.size, "last_used": e.last_used} for e in self.removed],
                "busy_modules": self.busy_modules, "failed_modules": self.failed_modules, "freed_bytes": self.freed,
                "size_before_bytes": self.size_before, "dry_run": self.dry_run}


def _kind(entry: Entry) -> str:
    return "artifact" if isinstance(entry, ArtifactInfo) else "build"


def max_size_from_env() -> int | None:
    """CACHED_CPP_EXTENSION_MAX_SIZE in bytes, None when unset; SettingError (a ValueError) naming the variable."""
    return _settings.MAX_SIZE.get()


def select(modules: list[ModuleInfo], *, max_size: int | None = None, older_than: float | None = None,
           keep: int | None = None, protect: Iterable[str] = (), now: float | None = None) -> list[Entry]:
    """The entries to delete, least recently used first. ``protect`` lists entry ids never selected.

    ``older_than`` (seconds): unused for longer; ``keep``: beyond the N most recently used artifacts of
    each module; ``max_size`` (bytes): then the least recently used, until the modules fit.
    Damaged artifacts are always selected: they are never loaded again.
    """
    now = time.time() if now is None else now
    protected = set(protect)
    entries = [e for m in modules for e in _entries(m) if e.entry_id not in protected]
    chosen = {e.path for e in entries if e.damaged}
    if older_than is not None:
        chosen |= {e.path for e in entries if now - e.last_used > older_than}
    if keep is not None:
        for module in modules:
            usable = [a for a in module.artifacts if not a.damaged]  # a damaged one must not count as kept
            newest_first = sorted(usable, key=lambda a: a.last_used, reverse=True)
            chosen |= {a.path for a in newest_first[keep:] if a.entry_id not in protected}
    by_age = sorted(entries, key=lambda e: e.last_used)
    if max_size is not None:
        remaining = sum(m.size for m in modules) - sum(e.size for e in entries if e.path in chosen)
        for entry in by_age:
            if remaining <= max_size:
                break
            if entry.path not in chosen:
                chosen.add(entry.path)
                remaining -= entry.size
    return [e for e in by_age if e.path in chosen]


def _entries(module: ModuleInfo) -> list[Entry]:
    return [*module.artifacts, *module.builds]


def prune(root: str, *, max_size: int | None = None, older_than: float | None = None, keep: int | None = None,
          name: str | None = None, protect: Iterable[str] = (), held_module: str | None = None,
          lock_timeout: float = 0.0, dry_run: bool = False) -> PruneReport:
    """Delete what :func:`select` picks. ``held_module``: the caller holds that module's lock already."""
    modules = list_modules(root, name)
    victims = select(modules, max_size=max_size, older_than=older_than, keep=keep, protect=protect)
    report = PruneReport(size_before=sum(m.size for m in modules), dry_run=dry_run)
    for module in modules:
        entries = [e for e in victims if e.module == module.name]
        if entries:
            _remove_under_lock(root, module.name, entries, report, held_module, lock_timeout)
    return report


def clear(root: str, name: str | None = None, lock_timeout: float = 10.0, dry_run: bool = False) -> PruneReport:
    """Delete every artifact and build folder (of module ``name``, or all), and their hints and failure records."""
    modules = list_modules(root, name)
    report = PruneReport(size_before=sum(m.size for m in modules), dry_run=dry_run)
    for module in modules:
        _remove_under_lock(root, module.name, _entries(module), report, None, lock_timeout,
                           remove_records=True)
    return report


def _remove_under_lock(root: str, module: str, entries: list[Entry], report: PruneReport,
                       held_module: str | None, lock_timeout: float, remove_records: bool = False) -> None:
    store = ModuleStore(root, module)
    if report.dry_run:
        _plan(store, entries, report, held_module, lock_timeout)
        return
    _restore_access(store.folder)  # a module folder of this user that lost its permissions
    if module == held_module:
        _remove(store, entries, report, remove_records)
        return
    try:
        with module_lock(store.lock_path, store.owner_path, f"{module!r} ({store.folder})", root,
                         timeout=lock_timeout):
            _remove(store, entries, report, remove_records)
    except LockTimeoutError:
        logger.info("not pruning %s: it is being built (its lock is held)", module)
        report.busy_modules.append(module)
    except OSError as error:  # its lock cannot be taken (a damaged or unwritable module folder)
        logger.warning("not pruning %s: %s", module, error)
        report.failed_modules.append(module)


def _plan(store: ModuleStore, entries: list[Entry], report: PruneReport, held_module: str | None,
          lock_timeout: float) -> None:
    """A dry run: what the real one would delete. A module being built is skipped as the real run skips it
    (one that does not wait for the lock); one that waits (clear) would delete once the build is done."""
    if store.name != held_module and lock_timeout <= 0 and lock_is_held(store.lock_path):
        report.busy_modules.append(store.name)
        return
    report.removed.extend(entries)


def _remove(store: ModuleStore, entries: list[Entry], report: PruneReport, remove_records: bool) -> None:
    for entry in entries:
        try:
            check_trusted(store.root, entry.path)  # never delete through a symlink planted in the cache
            aside = temporary_name(entry.path)
            os.rename(entry.path, aside)  # gone at once for readers; a killed rmtree leaves a leftover only
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        except (UnsafeCacheError, OSError) as error:
            logger.warning("not deleting %s: %s", entry.path, error)
            continue
        remove_owned_tree(aside)
        report.removed.append(entry)
        logger.debug("deleted %s (%s, last used %s)", entry.path, format_size(entry.size), _when(entry.last_used))
    _remove_stale_records(store, remove_records)


def _when(timestamp: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
    except (OverflowError, ValueError, OSError):
        return "at an unknown time"


def remove_owned_tree(path: str) -> None:
    """Delete ``path``, first giving this user's folders in it back the permissions deleting needs."""
    pending = [path]
    while pending:
        folder = pending.pop()
        if not _restore_access(folder):
            continue
        with contextlib.suppress(OSError), os.scandir(folder) as entries:  # unreadable: rmtree leaves it
            pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    remove_tree(path)


def _restore_access(folder: str) -> bool:
    """Give a folder of this user without owner rwx its owner rwx back; False when ``folder`` is no folder."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if info.st_uid == os.geteuid() and info.st_mode & 0o700 != 0o700:
        try:
            os.chmod(folder, stat.S_IMODE(info.st_mode) | 0o700)
        except OSError as error:
            logger.debug("cannot restore the permissions of %s: %s", folder, error)
    return True


def _remove_stale_records(store: ModuleStore, remove_all: bool) -> None:
    """latest-* hints naming a deleted artifact (or all hints and failure records when clearing)."""
    for path in store.record_files() if remove_all else store.dangling_hints():
        remove_owned_tree(path)
