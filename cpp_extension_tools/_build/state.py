"""What the last successful build in a build folder recorded, and the objects it no longer vouches for.

ninja decides what to rebuild by timestamps alone. Before it runs, content and
stat decide here: an object whose recorded inputs changed content (a source
restored with an old mtime), an object or linked binary replaced or rewritten
since it was built (garbage with its old mtime restored: a new inode or ctime),
every object once a searched folder gained or lost an entry (a header that
would now be found first) or the compilers changed, and the linked binary once a library or object named
in the link flags changed are deleted, so ninja builds them again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from .._cache.fs import atomic_write_bytes
from .._cache.hashing import digest_file, open_regular, stat_signature
from .inputs import folder_listing_digest

__all__ = ["BuildState", "invalidate_outdated", "read_state", "save_state"]

logger = logging.getLogger("cpp_extension_tools")

STATE_FILE = "cpp_extension_tools_state.json"
BuildState = dict[str, Any]


def read_state(build_folder: str) -> BuildState:
    """The state recorded by the last successful build here ({} when nothing usable was)."""
    try:
        fd, _ = open_regular(os.path.join(build_folder, STATE_FILE))
        with os.fdopen(fd, "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(build_folder: str, state: BuildState) -> None:
    atomic_write_bytes(os.path.join(build_folder, STATE_FILE), json.dumps(state).encode())


def object_digests(deps: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """Each object's inputs with their content digests (inputs that vanished are left out)."""
    digests: dict[str, str | None] = {}  # the objects share most headers: each is opened once
    for path in {p for paths in deps.values() for p in paths}:
        try:
            digests[path] = digest_file(path)
        except OSError:
            digests[path] = None
    objects: dict[str, dict[str, str]] = {}
    for obj, paths in deps.items():
        found = {p: digests[p] for p in paths}
        if None not in found.values():
            objects[obj] = {p: d for p, d in found.items() if d is not None}
    return objects


def output_signatures(paths: list[str]) -> dict[str, list[int]]:
    signatures: dict[str, list[int]] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            signatures[path] = list(stat_signature(os.stat(path)))
    return signatures


def invalidate_outdated(build_folder: str, state: BuildState, compiler_identity: dict[str, Any]) -> None:
    """Delete the outputs in ``build_folder`` that the recorded state no longer vouches for.

    ``compiler_identity``: the compilers of this build; other compilers than the last build's (an
    upgrade in place) recompile everything.
    """
    here = os.path.abspath(build_folder)
    why = ("the compilers changed" if state.get("compiler_identity", compiler_identity) != compiler_identity
           else "a searched folder gained or lost an entry" if _folders_changed(state) else "")
    if why:
        removed = [p for p in _outputs_in(here) if _remove(p)]
        logger.info("%s: recompiling every object in %s (%d files removed)", why, build_folder, len(removed))
        return
    relink = False
    for path, signature in _dict(state.get("outputs")).items():
        if os.path.dirname(os.path.abspath(path)) == here and not _same_stat(path, signature):
            relink = _remove(path) or relink
            if path.endswith(".o.d"):  # a changed depfile (cut short by a full disk) no longer says what
                relink = _remove(path[:-2]) or relink  # its object read: the object is compiled again
    depfiles = state.get("kept_depfiles") is True  # CPU builds keep them; torch's CUDA builds let ninja eat them
    for obj, deps in _dict(state.get("objects")).items():
        if os.path.dirname(os.path.abspath(obj)) != here or not isinstance(deps, dict):
            continue
        if (depfiles and not os.path.isfile(obj + ".d")) or not all(_same_content(p, d) for p, d in deps.items()):
            relink = _remove(obj) or relink
    if relink or not all(_same_content(p, d) for p, d in _dict(state.get("link_inputs")).items()):
        # ninja does not know the libraries named in the flags, and a build.ninja damaged to hold no
        # rules would not relink after an object was removed: the binary is linked again either way.
        # The recorded outputs that are not objects: the binary, also when it is an executable without ".so".
        linked = [p for p in _dict(state.get("outputs")) if not p.endswith((".o", ".d"))
                  and os.path.dirname(os.path.abspath(p)) == here]
        for library in dict.fromkeys([*(p for p in _outputs_in(here) if p.endswith(".so")), *linked]):
            _remove(library)


def _folders_changed(state: BuildState) -> bool:
    return any(folder_listing_digest(path) != digest for path, digest in _dict(state.get("folders")).items())


def _outputs_in(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.path for e in entries if e.name.endswith((".o", ".so"))]
    except OSError:
        return []


def _same_stat(path: str, signature: Any) -> bool:
    try:
        return bool(list(stat_signature(os.stat(path))) == signature)
    except OSError:
        return True  # missing: ninja builds it anyway


def _same_content(path: str, digest: Any) -> bool:
    try:
        return bool(digest_file(path) == digest)
    except OSError:
        return False


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
