"""The on-disk layout of one module's cache, and artifact lookup and publication.

    <root>/<name>/
        .lock                   OS-level lock (filelock); never deleted
        .lock.owner             who holds .lock: pid, host, since (informative)
        builds/<key16>/         torch's ninja build folder for one configuration
        artifacts/<key16>-<content16>/
            <name>.so           the binary, written first
            manifest.json       the commit marker, written last
        latest-<key16>          the newest artifact of a configuration (a hint)
        failure-<key16>.json    the last failed build of a configuration

Artifacts are immutable and content-addressed: the same sources under the
same configuration always map to the same folder, so returning to earlier
sources (switching git branches) finds the earlier binary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from typing import Any

from ._config import BuildConfig
from ._errors import BuildError, ManifestError
from ._fsutil import TEMP_MARKER, atomic_copy, atomic_write_bytes, make_private_dirs
from ._hashing import FileRecord, digest_file, digest_value, file_matches
from ._manifest import MANIFEST_NAME, Manifest, read_manifest

__all__ = ["FailureRecord", "ModuleStore", "sources_digest"]

logger = logging.getLogger("cpp_extension_tools")


class FailureRecord:
    """The last failed build of a configuration: which attempt, from which sources, what error."""

    __slots__ = ("attempt", "error", "sources_digest")

    def __init__(self, attempt: str, sources_digest: str, error: BuildError) -> None:
        self.attempt = attempt
        self.sources_digest = sources_digest
        self.error = error


class ModuleStore:
    def __init__(self, root: str, name: str) -> None:
        self.root = root
        self.name = name
        self.folder = os.path.join(root, name)

    # -- paths ---------------------------------------------------------------
    @property
    def lock_path(self) -> str:
        return os.path.join(self.folder, ".lock")

    @property
    def owner_path(self) -> str:
        return os.path.join(self.folder, ".lock.owner")

    @property
    def artifacts_folder(self) -> str:
        return os.path.join(self.folder, "artifacts")

    def build_folder(self, config: BuildConfig) -> str:
        return os.path.join(self.folder, "builds", config.short_key)

    def _latest_path(self, config: BuildConfig) -> str:
        return os.path.join(self.folder, f"latest-{config.short_key}")

    def _failure_path(self, config: BuildConfig) -> str:
        return os.path.join(self.folder, f"failure-{config.short_key}.json")

    def ensure_folders(self) -> None:
        make_private_dirs(self.artifacts_folder)

    # -- lookup --------------------------------------------------------------
    def find(self, config: BuildConfig) -> tuple[Manifest | None, str]:
        """Return (a verified artifact for the current inputs, or None; the reason when None)."""
        latest = self._read_latest(config)
        reason = "no artifact for this configuration"
        if latest is not None:
            manifest, reason = self.check(os.path.join(self.artifacts_folder, latest), config)
            if manifest is not None:
                return manifest, ""
        for folder in self._candidate_folders(config, skip=latest):
            manifest, _ = self.check(folder, config)
            if manifest is not None:
                self._write_latest(config, manifest.artifact_id)
                return manifest, ""
        return None, reason

    def check(self, folder: str, config: BuildConfig) -> tuple[Manifest | None, str]:
        """Verify one artifact folder against the current configuration and inputs."""
        try:
            manifest = read_manifest(os.path.join(folder, MANIFEST_NAME))
        except ManifestError as e:
            if os.path.isdir(folder) and os.path.exists(os.path.join(folder, MANIFEST_NAME)):
                logger.warning("ignoring a damaged cache entry (it will be rebuilt): %s", e)
            return None, str(e)
        if manifest.key != config.key or manifest.name != config.name:
            logger.warning("ignoring cache entry %s: its manifest belongs to another configuration", folder)
            return None, "manifest belongs to another configuration"
        if manifest.sources != config.sources:
            return None, "the list of sources changed"
        for record in manifest.inputs:
            if not file_matches(record):
                return None, f"{record.path} changed"
        library = os.path.join(folder, manifest.library_file)
        if not _library_intact(library, manifest.library):
            logger.warning("cache entry %s is damaged (%s differs from its manifest); rebuilding",
                           folder, manifest.library_file)
            return None, "the cached binary is damaged"
        return manifest, ""

    def library_path(self, manifest: Manifest) -> str:
        return os.path.join(self.artifacts_folder, manifest.artifact_id, manifest.library_file)

    def _candidate_folders(self, config: BuildConfig, skip: str | None) -> list[str]:
        prefix = config.short_key + "-"
        try:
            with os.scandir(self.artifacts_folder) as entries:
                found = [(e.stat().st_mtime_ns, e.path) for e in entries
                         if e.name.startswith(prefix) and e.name != skip and TEMP_MARKER not in e.name]
        except FileNotFoundError:
            return []
        return [path for _, path in sorted(found, reverse=True)]

    def _read_latest(self, config: BuildConfig) -> str | None:
        try:
            # Bytes, decoded after: open(encoding="ascii") would import encodings.ascii on the warm path.
            with open(self._latest_path(config), "rb") as f:
                value = f.read(200).decode().strip()
        except (OSError, UnicodeDecodeError):
            return None
        # Only a plain folder name is accepted: the pointer must never lead outside the store.
        if not value or value != os.path.basename(value) or value in (".", ".."):
            return None
        return value

    def _write_latest(self, config: BuildConfig, artifact_id: str) -> None:
        try:
            atomic_write_bytes(self._latest_path(config), artifact_id.encode("ascii"))
        except OSError as e:  # only a hint: the next lookup scans the artifacts instead
            logger.debug("could not update %s: %s", self._latest_path(config), e)

    # -- publication -----------------------------------------------------------
    def publish(self, config: BuildConfig, built_library: str, inputs: list[FileRecord],
                build_seconds: float, details: dict[str, Any]) -> Manifest:
        """Copy a finished binary into the store; the manifest is written last."""
        content = digest_value([[r.path, r.sha256] for r in inputs])[:16]
        artifact_id = f"{config.short_key}-{content}"
        folder = os.path.join(self.artifacts_folder, artifact_id)
        make_private_dirs(folder)
        library_file = f"{config.name}.so"
        destination = os.path.join(folder, library_file)
        atomic_copy(built_library, destination)
        st = os.stat(destination)
        library = FileRecord(library_file, st.st_size, st.st_mtime_ns, digest_file(destination))
        manifest = Manifest(
            name=config.name, key=config.key, artifact_id=artifact_id, library_file=library_file,
            library=library, sources=config.sources, inputs=tuple(inputs), created_at=time.time(),
            build_seconds=round(build_seconds, 3), details=details)
        atomic_write_bytes(os.path.join(folder, MANIFEST_NAME),
                           json.dumps(manifest.to_json(), indent=1).encode())
        self._write_latest(config, artifact_id)
        return manifest

    # -- failures ---------------------------------------------------------------
    def read_failure(self, config: BuildConfig) -> FailureRecord | None:
        try:
            with open(self._failure_path(config), encoding="utf-8") as f:
                data = json.load(f)
            return FailureRecord(str(data["attempt"]), str(data["sources_digest"]),
                                 BuildError.from_dict(data["error"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.debug("ignoring unreadable failure record: %s", e)
            return None

    def write_failure(self, config: BuildConfig, sources_digest: str, error: BuildError) -> None:
        record = {"attempt": uuid.uuid4().hex, "sources_digest": sources_digest, "error": error.to_dict(),
                  "time": time.time()}
        try:
            atomic_write_bytes(self._failure_path(config), json.dumps(record).encode())
        except OSError as e:
            logger.warning("could not record the failed build in %s: %s", self._failure_path(config), e)

    def clear_failure(self, config: BuildConfig) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._failure_path(config))


def _library_intact(path: str, record: FileRecord) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != record.size:
        return False
    if st.st_mtime_ns == record.mtime_ns:
        return True
    # Same size, other mtime (copied, touched, or bytes overwritten in place): read it.
    try:
        return digest_file(path) == record.sha256
    except OSError:
        return False


def sources_digest(config: BuildConfig) -> str:
    return digest_value([[path, digest_file(path)] for path in config.sources])

