"""The on-disk layout of one module's cache, and artifact lookup and publication.

    <root>/<name>/
        .lock                   OS-level lock (filelock); never deleted
        .lock.owner             who holds .lock: pid, host, since (informative)
        builds/<key16>/         torch's ninja build folder for one configuration
        artifacts/<key16>-<content16>/
            <name>.so           the binary, written first
            manifest.json       the commit marker, written last
            last-used           its mtime: when the artifact was last loaded (for pruning);
                                touched at most once an hour, the only file ever
                                written after publication
        artifacts/<id>.tmp-<pid>-<random>/   an artifact being published; renamed to
                                <id> once complete, so a folder without its
                                manifest is always damage, never work in progress
        latest-<key16>          the newest artifact of a configuration (a hint)
        failure-<key16>.json    the last failed build of a configuration

This module is the layout's only home: inventory, pruning and the command line
ask a ModuleStore for every path (and module_names() which folders of a root are
modules); no other module spells these names.

Everything but the warm path's lookup happens under the module lock. Folders
are private to the user (see _trust) and every binary is checked for that
before it is loaded.

Artifacts are immutable and content-addressed: the same sources under the
same configuration always map to the same folder, so returning to earlier
sources (switching git branches) finds the earlier binary.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
import uuid
from typing import TYPE_CHECKING, Any

from .._errors import BuildError, ManifestError, cache_not_writable
from .._key import BuildConfig
from .hashing import FileRecord, digest_file, digest_value, file_matches, open_regular
from .manifest import MANIFEST_NAME, Manifest, read_manifest
from .trust import check_trusted, file_mode, folder_mode

# .fs (the writing half) is imported inside the functions that write: a warm call writes nothing but, rarely,
# a hint, and each module on the warm import costs as much as its code (docs/benchmarks.md).

if TYPE_CHECKING:
    from .._build.run import BuildOutcome

__all__ = ["LAST_USED_FILE", "FailureRecord", "FailureSnapshot", "ModuleStore", "last_used", "module_names",
           "note_use", "read_hint", "sources_digest"]

logger = logging.getLogger("cpp_extension_tools")

# The names of the layout above; no other module spells them (they ask a ModuleStore for paths).
_LOCK_FILE = ".lock"
_OWNER_FILE = ".lock.owner"
_LOCK_FILES = frozenset({_LOCK_FILE, _OWNER_FILE})
_ARTIFACTS = "artifacts"
_BUILDS = "builds"
_MODULE_MARKERS = (_ARTIFACTS, _BUILDS, _LOCK_FILE)  # any one of them makes a folder a module's
_HINT_PREFIX = "latest-"
_FAILURE_PREFIX = "failure-"
LAST_USED_FILE = "last-used"
# Warm loads write nothing but this stamp, and only when it is older than this: LRU pruning
# needs the hour a binary was last used, not the millisecond, and a write per load would cost
# more than the load (and wake up a network file system).
USE_STAMP_INTERVAL = 3600.0


class FailureRecord:
    """The last failed build of a configuration: which attempt, from which sources, what error."""

    __slots__ = ("attempt", "error", "sources_digest")

    def __init__(self, attempt: str, sources_digest: str, error: BuildError) -> None:
        self.attempt = attempt  # unique per failed build: tells a waiter whether it saw this one fail
        self.sources_digest = sources_digest
        self.error = error


class FailureSnapshot:
    """Which failed build of a configuration was on record when a caller began to wait for its lock.

    A failure recorded after it, from the same sources, is the build that caller waited for: it is
    re-raised (:meth:`ModuleStore.raise_if_failed_since`) instead of being compiled again.
    """

    __slots__ = ("attempt",)

    def __init__(self, attempt: str | None) -> None:
        self.attempt = attempt  # None: no failure on record


class ModuleStore:
    """One module's folder: the paths of its layout, lookup, publication and the failure protocol."""

    def __init__(self, root: str, name: str) -> None:
        self.root = root
        self.name = name
        self.folder = os.path.join(root, name)

    # -- paths ---------------------------------------------------------------
    @property
    def lock_path(self) -> str:
        return os.path.join(self.folder, _LOCK_FILE)

    @property
    def owner_path(self) -> str:
        return os.path.join(self.folder, _OWNER_FILE)

    @property
    def artifacts_folder(self) -> str:
        return os.path.join(self.folder, _ARTIFACTS)

    def artifact_folder(self, artifact_id: str) -> str:
        return os.path.join(self.folder, _ARTIFACTS, artifact_id)

    def manifest_path(self, artifact_id: str) -> str:
        return os.path.join(self.folder, _ARTIFACTS, artifact_id, MANIFEST_NAME)

    @property
    def builds_folder(self) -> str:
        return os.path.join(self.folder, _BUILDS)

    def build_folder(self, config: BuildConfig) -> str:
        return os.path.join(self.folder, _BUILDS, config.short_key)

    def _latest_path(self, config: BuildConfig) -> str:
        return os.path.join(self.folder, _HINT_PREFIX + config.short_key)

    def _failure_path(self, config: BuildConfig) -> str:
        return os.path.join(self.folder, f"{_FAILURE_PREFIX}{config.short_key}.json")

    def ensure_folders(self, config: BuildConfig) -> None:
        """Create this module's folders (cold path), refusing folders another user could tamper with.

        A plain file where one of them belongs (left by a tool or a person) is deleted with a warning.
        """
        from .fs import make_dirs

        for folder in (self.artifacts_folder, self.build_folder(config)):
            check_trusted(self.root, folder)  # before: never create anything through a symlink
            try:
                for level in _levels_below(self.root, folder):
                    _replace_file_with_folder(level)
                make_dirs(folder, folder_mode())
            except OSError as e:
                raise cache_not_writable(e, self.root) from e
            check_trusted(self.root, folder)  # and after: what we found is what we made

    # -- lookup --------------------------------------------------------------
    def find(self, config: BuildConfig, repair: bool = False) -> tuple[Manifest | None, str]:
        """Return (a verified artifact for the current inputs, or None; the reason when None).

        With ``repair`` (only under the module lock), damaged entries of this configuration are
        deleted with a warning, so that they are rebuilt and never looked at again.
        """
        latest = self._read_latest(config)
        if latest is not None and not latest.startswith(config.short_key + "-"):
            latest = None  # a hint never leads to another configuration's artifact
        reason = "no artifact for this configuration"
        if latest is not None:  # the warm path: one artifact checked, no folder listed
            manifest, reason = self._verify(os.path.join(self.artifacts_folder, latest), config, repair)
            if manifest is not None:
                return manifest, ""
        for folder in self._candidate_folders(config, skip=latest):
            manifest, _ = self._verify(folder, config, repair)
            if manifest is not None:
                self._write_latest(config, manifest.artifact_id)
                return manifest, ""
        return None, reason

    def _verify(self, folder: str, config: BuildConfig, repair: bool) -> tuple[Manifest | None, str]:
        manifest, why, damaged = self._inspect(folder, config, check_library=repair)
        if damaged:
            self._report_damage(folder, why, repair)
        return manifest, why

    def _inspect(self, folder: str, config: BuildConfig, check_library: bool) -> tuple[Manifest | None, str, bool]:
        """Verify one artifact folder: (its manifest if usable, why not, whether it is damaged).

        Without ``check_library`` (the warm path) the binary is not looked at: the loader checks the file it
        opens against the manifest anyway, and a mismatch there sends the call to the locked lookup, which
        checks it here and repairs.
        """
        try:
            manifest = read_manifest(os.path.join(folder, MANIFEST_NAME))
        except ManifestError as e:
            return None, str(e), os.path.isdir(folder)
        ours = os.path.basename(folder).startswith(config.short_key + "-")
        if (manifest.key != config.key or manifest.name != config.name
                or manifest.artifact_id != os.path.basename(folder)
                or manifest.library_file != f"{config.name}.so"):
            # Damage only in a folder named for this configuration; another one's is left alone.
            return None, "its manifest describes another artifact", ours
        if manifest.sources != config.sources:
            return None, "the list of sources changed", False
        # The warm lookup follows the argument checks of this call within microseconds: their stats of the
        # sources stand for them. Under the lock (check_library), after a wait of any length, stat again.
        known = {} if check_library else dict(zip(config.sources, config.request.source_stats, strict=False))
        for record in manifest.inputs:
            if not file_matches(record, known=known.get(record.path)):
                return None, f"{record.path} changed", False
        changed = manifest.changed_folder() or manifest.changed_tool()
        if changed:
            return None, changed, False
        library = os.path.join(folder, manifest.library_file)
        # The library's record names it relative to its artifact folder.
        if check_library and not file_matches(manifest.library, library):
            return None, f"the cached binary {library} is damaged (it differs from its manifest)", True
        return manifest, "", False  # trust is checked where it is loaded, on the file it loads

    def _report_damage(self, folder: str, why: str, repair: bool) -> None:
        if not repair:
            logger.debug("damaged cache entry %s: %s", folder, why)
            return
        logger.warning("deleting a damaged cache entry (it will be rebuilt): %s: %s", folder, why)
        from .fs import remove_tree

        remove_tree(folder)

    def remove_leftovers(self) -> None:
        """Delete what killed writers left behind. Called under the module lock.

        In artifacts/ only the lock holder writes, so every temporary entry there belongs to a
        writer that died. In the module folder, the warm path may update a latest-* hint without
        the lock; its temporary files live for milliseconds, so only old ones are deleted.
        """
        from .fs import TEMP_MARKER, remove_tree

        now = time.time()
        # builds/: build folders pruning had renamed to delete
        for folder, min_age in ((self.artifacts_folder, 0.0), (self.builds_folder, 0.0), (self.folder, 600.0)):
            try:
                with os.scandir(folder) as entries:
                    leftovers = [e.path for e in entries if TEMP_MARKER in e.name
                                 and now - e.stat(follow_symlinks=False).st_mtime >= min_age]
            except FileNotFoundError:
                continue
            for path in leftovers:
                logger.warning("deleting a leftover of an interrupted write: %s", path)
                remove_tree(path)

    def library_path(self, manifest: Manifest) -> str:
        return os.path.join(self.artifacts_folder, manifest.artifact_id, manifest.library_file)

    def note_use(self, manifest: Manifest) -> None:
        note_use(self.artifact_folder(manifest.artifact_id), manifest.created_at)

    # -- what the module folder holds (inventory and pruning) --------------------------
    def holds_only_locks(self) -> bool:
        """Whether the module folder holds nothing but its lock files and empty folders (what ``clear``
        leaves); False when a folder in it is unreadable."""
        pending, top = [self.folder], True
        while pending:
            try:
                with os.scandir(pending.pop()) as scanned:
                    entries = list(scanned)
            except OSError:
                return False
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not (top and entry.name in _LOCK_FILES):
                    return False
            top = False
        return True

    def record_files(self) -> list[str]:
        """The module's latest-* hints and failure records (complete ones: no temporary files)."""
        from .fs import TEMP_MARKER

        try:
            with os.scandir(self.folder) as scanned:
                return [e.path for e in scanned
                        if e.name.startswith((_HINT_PREFIX, _FAILURE_PREFIX)) and TEMP_MARKER not in e.name]
        except OSError:
            return []

    def dangling_hints(self) -> list[str]:
        """The latest-* hints that name no existing artifact (a hint that is not a regular file never does)."""
        return [path for path in self.record_files()
                if os.path.basename(path).startswith(_HINT_PREFIX) and not self._names_an_artifact(path)]

    def _names_an_artifact(self, hint: str) -> bool:
        try:
            if not stat.S_ISREG(os.lstat(hint).st_mode):  # never follow a link planted in the cache
                return False
        except OSError:
            return False
        target = read_hint(hint)
        return target is not None and os.path.isdir(self.artifact_folder(target))

    def _candidate_folders(self, config: BuildConfig, skip: str | None) -> list[str]:
        from .fs import TEMP_MARKER  # a scan: no hint, or a hint naming a damaged artifact

        prefix = config.short_key + "-"
        try:
            with os.scandir(self.artifacts_folder) as entries:
                found = [(e.stat().st_mtime_ns, e.path) for e in entries
                         if e.name.startswith(prefix) and e.name != skip and TEMP_MARKER not in e.name]
        except OSError:  # absent or unreadable: a miss; the build path reports what is wrong
            return []
        return [path for _, path in sorted(found, reverse=True)]

    def _read_latest(self, config: BuildConfig) -> str | None:
        return read_hint(self._latest_path(config))

    def _write_latest(self, config: BuildConfig, artifact_id: str) -> None:
        from .fs import atomic_write_bytes

        try:
            atomic_write_bytes(self._latest_path(config), artifact_id.encode("ascii"))
        except OSError as e:  # only a hint: the next lookup scans the artifacts instead
            logger.debug("could not update %s: %s", self._latest_path(config), e)

    # -- publication -----------------------------------------------------------
    def publish(self, config: BuildConfig, outcome: BuildOutcome) -> Manifest:
        """Install a finished binary: staged in a temporary folder (binary, then manifest), then renamed."""
        from .fs import atomic_copy, atomic_write_bytes, make_dirs, remove_tree, temporary_name

        content = digest_value([[r.path, r.sha256] for r in outcome.inputs])[:16]
        artifact_id = f"{config.short_key}-{content}"
        final = self.artifact_folder(artifact_id)
        staging = temporary_name(final)
        try:
            make_dirs(staging, folder_mode())
            library_file = f"{config.name}.so"
            destination = os.path.join(staging, library_file)
            atomic_copy(outcome.library, destination)
            st = os.stat(destination)
            # Stamps trusted at once, unlike inputs' (_hashing.trusted_stat): nothing but damage writes here.
            library = FileRecord(library_file, st.st_size, st.st_mtime_ns, digest_file(destination),
                                 st.st_ctime_ns, st.st_ino, st.st_dev)
            manifest = Manifest(
                name=config.name, key=config.key, artifact_id=artifact_id, library_file=library_file,
                library=library, sources=config.sources, inputs=tuple(outcome.inputs), created_at=time.time(),
                build_seconds=round(outcome.seconds, 3), details=outcome.details, folders=outcome.folders,
                tools=outcome.tools)
            atomic_write_bytes(os.path.join(staging, MANIFEST_NAME),
                               json.dumps(manifest.to_json(), indent=1).encode())
            _install_folder(staging, final)
        except OSError as e:
            remove_tree(staging)
            raise cache_not_writable(e, self.root) from e
        except BaseException:
            remove_tree(staging)
            raise
        self._write_latest(config, artifact_id)
        return manifest

    # -- failures ---------------------------------------------------------------
    # The protocol: failure_snapshot() before waiting for the lock; under it, raise_if_failed_since();
    # write_failure() when the build fails, clear_failure() once one succeeds.
    def failure_snapshot(self, config: BuildConfig) -> FailureSnapshot:
        record = self.read_failure(config)
        return FailureSnapshot(None if record is None else record.attempt)

    def raise_if_failed_since(self, config: BuildConfig, snapshot: FailureSnapshot, sources_digest: str) -> None:
        """Under the lock: re-raise the failure of a build from these sources that ended while we waited."""
        record = self.read_failure(config)
        if record is not None and record.sources_digest == sources_digest and record.attempt != snapshot.attempt:
            logger.info("%s: the build this process waited for failed; not building again", config.name)
            raise record.error

    def read_failure(self, config: BuildConfig) -> FailureRecord | None:
        """The last failed build of this configuration; None when absent, unreadable or another one's."""
        try:
            fd, _ = open_regular(self._failure_path(config))
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read(1 << 20).decode("utf-8"))
            if data["key"] != config.key:
                logger.debug("ignoring %s: it records another configuration", self._failure_path(config))
                return None
            return FailureRecord(_text(data["attempt"]), _text(data["sources_digest"]),
                                 BuildError.from_dict({k: _text(v) for k, v in data["error"].items()}))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.debug("ignoring unreadable failure record: %s", e)
            return None

    def write_failure(self, config: BuildConfig, sources_digest: str, error: BuildError) -> None:
        from .fs import atomic_write_bytes, remove_tree

        record = {"key": config.key, "attempt": uuid.uuid4().hex, "sources_digest": sources_digest,
                  "error": error.to_dict(), "time": time.time()}
        if os.path.isdir(self._failure_path(config)) and not os.path.islink(self._failure_path(config)):
            remove_tree(self._failure_path(config))  # damage: a record could never replace it
        try:
            atomic_write_bytes(self._failure_path(config), json.dumps(record).encode())
        except OSError as e:
            logger.warning("could not record the failed build in %s: %s", self._failure_path(config), e)

    def clear_failure(self, config: BuildConfig) -> None:
        from .fs import remove_tree

        remove_tree(self._failure_path(config))  # a folder there (damage) goes too


def module_names(root: str) -> list[str]:
    """The folders under ``root`` laid out as modules of this library, sorted; [] for a missing root."""
    from .fs import TEMP_MARKER

    try:
        with os.scandir(root) as entries:
            folders = [e for e in entries if e.is_dir(follow_symlinks=False) and TEMP_MARKER not in e.name]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in folders if _laid_out_as_module(e.path))


def _laid_out_as_module(folder: str) -> bool:
    for marker in _MODULE_MARKERS:
        try:
            os.lstat(os.path.join(folder, marker))
            return True
        except PermissionError:  # a folder of this user that lost its permissions: listed as damaged
            return _owned_by_me(folder)
        except OSError:
            continue
    return False


def _owned_by_me(path: str) -> bool:
    try:
        return os.lstat(path).st_uid == os.geteuid()
    except OSError:
        return False


def _install_folder(staging: str, final: str) -> None:
    """Rename a complete artifact folder into place, replacing an older (damaged) one if present."""
    from .fs import remove_tree, temporary_name

    try:
        os.rename(staging, final)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    # rename() cannot replace a non-empty folder: move the old one aside first. Readers outside the
    # lock may miss the entry in between; they then wait for the lock and look again.
    aside = temporary_name(final)
    os.rename(final, aside)
    os.rename(staging, final)
    remove_tree(aside)  # a process that has the old binary loaded keeps its mapping


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _levels_below(root: str, folder: str) -> list[str]:
    """The folders from the first one below ``root`` down to ``folder``, top first."""
    levels = []
    current = folder
    while current != root and current.startswith(root + os.sep):
        levels.append(current)
        current = os.path.dirname(current)
    return levels[::-1]


def _replace_file_with_folder(path: str) -> None:
    """Delete a plain file (never a link: check_trusted refuses those) where a folder belongs."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode):
        logger.warning("deleting %s: the cache expects a folder there", path)
        os.unlink(path)


def read_hint(path: str) -> str | None:
    """The artifact id a latest-* hint names, or None when it is absent, unreadable or not a plain name."""
    try:
        fd, _ = open_regular(path)  # a FIFO planted here must not block the warm path
        try:
            value = os.read(fd, 200).decode().strip()  # bytes, decoded after: no encodings import
        finally:
            os.close(fd)
    except (OSError, UnicodeDecodeError):
        return None
    # Only a plain folder name is accepted: the pointer must never lead outside the store.
    if not value or value != os.path.basename(value) or value in (".", ".."):
        return None
    return value


def last_used(artifact_folder: str, created_at: float) -> float:
    """When the artifact in ``artifact_folder`` was last loaded, to the hour (its creation if never)."""
    try:
        return max(created_at, os.stat(os.path.join(artifact_folder, LAST_USED_FILE)).st_mtime)
    except OSError:
        return created_at


def note_use(artifact_folder: str, created_at: float) -> None:
    """Record a load of the artifact: one stat, and a write at most once per USE_STAMP_INTERVAL."""
    now = time.time()
    if now - created_at < USE_STAMP_INTERVAL or now - last_used(artifact_folder, created_at) < USE_STAMP_INTERVAL:
        return  # the first test needs no stat: last_used is never older than the creation
    path = os.path.join(artifact_folder, LAST_USED_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, file_mode())
        try:
            os.fchmod(fd, file_mode())  # the umask cut the mode: team members must be able to touch it
        finally:
            os.close(fd)
        os.utime(path)
    except OSError as e:  # a read-only or pruned cache still loads; the artifact just looks older
        logger.debug("could not record the use of %s: %s", artifact_folder, e)


def sources_digest(config: BuildConfig) -> str:
    return digest_value([[path, digest_file(path)] for path in config.sources])

