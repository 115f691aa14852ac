"""The store: the single owner of the on-disk layout, and the failure protocol's typed methods."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import filelock
import pytest

import cpp_extension_tools
from cpp_extension_tools._cache.inventory import list_modules, visible_modules
from cpp_extension_tools._cache.prune import clear
from cpp_extension_tools._cache.store import FailureSnapshot, ModuleStore, module_names
from cpp_extension_tools._errors import BuildError

PACKAGE = Path(cpp_extension_tools.__file__).parent
# The names of the layout (see _store's docstring); only the module defining ModuleStore spells them.
LAYOUT_NAMES = (".lock", ".lock.owner", "artifacts", "builds", "last-used")
LAYOUT_PREFIXES = ("latest-", "failure-")


def _config(short_key: str = "0123456789abcdef", name: str = "stored") -> Any:
    """What the store reads of a configuration: its name and key (the full key is checked on records)."""
    return SimpleNamespace(name=name, short_key=short_key, key=short_key * 4)


def _string_literals(path: Path) -> list[str]:
    """The strings a module spells (an f-string with ``{}`` for its fields), but its docstrings and dictionary
    keys (JSON output: ``"artifacts": [...]``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node.body[0].value) for node in ast.walk(tree)
               if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
               and node.body and isinstance(node.body[0], ast.Expr)}
    skipped |= {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skipped |= {id(part) for part in node.values}
            texts.append("".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            texts.append(node.value)
    return texts


def _spells_the_layout(text: str) -> bool:
    return text in LAYOUT_NAMES or text.startswith(LAYOUT_PREFIXES)


def test_no_module_but_the_store_spells_the_layout() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    (store,) = [path for path in modules if "class ModuleStore" in path.read_text(encoding="utf-8")]
    assert any(_spells_the_layout(text) for text in _string_literals(store)), "the check looks for nothing"
    offenders = {str(path.relative_to(PACKAGE)): [t for t in _string_literals(path) if _spells_the_layout(t)]
                 for path in modules if path != store}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_every_path_of_a_module_is_below_its_folder(tmp_path: Path) -> None:
    store, config = ModuleStore(str(tmp_path), "stored"), _config()
    paths = [store.lock_path, store.owner_path, store.artifacts_folder, store.builds_folder,
             store.build_folder(config), store.artifact_folder("id"), store.manifest_path("id")]
    assert all(p.startswith(store.folder + os.sep) for p in paths)
    assert len(set(paths)) == len(paths)
    assert store.manifest_path("id").startswith(store.artifact_folder("id") + os.sep)
    assert store.build_folder(config).startswith(store.builds_folder + os.sep)


def test_module_names_are_the_folders_laid_out_as_modules(tmp_path: Path) -> None:
    store = ModuleStore(str(tmp_path), "locked_only")
    os.makedirs(store.folder)
    Path(store.lock_path).touch()
    os.makedirs(ModuleStore(str(tmp_path), "with_artifacts").artifacts_folder)
    os.makedirs(ModuleStore(str(tmp_path), "with_builds").builds_folder)
    (tmp_path / "not_a_module").mkdir()
    (tmp_path / "not_a_module" / "data.txt").write_text("someone else's")
    (tmp_path / "a_file").write_text("")
    assert module_names(str(tmp_path)) == ["locked_only", "with_artifacts", "with_builds"]
    assert module_names(str(tmp_path / "missing")) == []


def test_holds_only_locks_counts_lock_files_at_the_top_only(tmp_path: Path) -> None:
    store = ModuleStore(str(tmp_path), "stored")
    os.makedirs(store.build_folder(_config()))
    os.makedirs(store.artifacts_folder)
    Path(store.lock_path).touch()
    Path(store.owner_path).write_text("{}")
    assert store.holds_only_locks()
    Path(store.build_folder(_config()), ".lock").touch()  # a lock file's name below the top is content
    assert not store.holds_only_locks()


def test_hints_and_failure_records_are_the_store_s_to_find(tmp_path: Path) -> None:
    store, config = ModuleStore(str(tmp_path), "stored"), _config()
    os.makedirs(store.artifact_folder(config.short_key + "-kept"))
    store._write_latest(config, config.short_key + "-kept")
    gone = _config("fedcba9876543210")
    store._write_latest(gone, gone.short_key + "-deleted")  # names no artifact
    store.write_failure(config, "digest", BuildError("failed"))
    assert sorted(os.path.basename(p) for p in store.record_files()) == [
        f"failure-{config.short_key}.json", f"latest-{config.short_key}", f"latest-{gone.short_key}"]
    assert [os.path.basename(p) for p in store.dangling_hints()] == [f"latest-{gone.short_key}"]


def test_a_hint_that_is_a_link_names_no_artifact(tmp_path: Path) -> None:
    store, config = ModuleStore(str(tmp_path), "stored"), _config()
    os.makedirs(store.artifact_folder(config.short_key + "-kept"))
    (tmp_path / "elsewhere").write_text(config.short_key + "-kept")
    os.symlink(tmp_path / "elsewhere", store._latest_path(config))
    assert store.dangling_hints() == [store._latest_path(config)]


def test_a_failure_recorded_while_waiting_is_raised_once_per_attempt(tmp_path: Path) -> None:
    store, config = ModuleStore(str(tmp_path), "stored"), _config()
    os.makedirs(store.folder)
    before = store.failure_snapshot(config)
    assert isinstance(before, FailureSnapshot) and before.attempt is None
    store.raise_if_failed_since(config, before, "digest")  # nothing recorded: nothing raised
    store.write_failure(config, "digest", BuildError("the build we waited for", name=config.name))
    with pytest.raises(BuildError, match="the build we waited for"):
        store.raise_if_failed_since(config, before, "digest")
    store.raise_if_failed_since(config, before, "other sources")  # failed from other sources: build again
    seen = store.failure_snapshot(config)
    assert seen.attempt is not None
    store.raise_if_failed_since(config, seen, "digest")  # seen before waiting: this caller builds again
    store.write_failure(config, "digest", BuildError("a second attempt"))
    with pytest.raises(BuildError, match="a second attempt"):
        store.raise_if_failed_since(config, seen, "digest")
    store.clear_failure(config)
    store.raise_if_failed_since(config, before, "digest")
    assert store.failure_snapshot(config).attempt is None


def test_a_failure_record_of_another_configuration_is_never_raised(tmp_path: Path) -> None:
    store, config = ModuleStore(str(tmp_path), "stored"), _config()
    os.makedirs(store.folder)
    before = store.failure_snapshot(config)
    other = SimpleNamespace(name=config.name, short_key=config.short_key, key="another key")
    store.write_failure(other, "digest", BuildError("another configuration's"))  # same file, another key
    store.raise_if_failed_since(config, before, "digest")
    assert store.failure_snapshot(config).attempt is None


def test_clear_leaves_only_lock_files_which_list_then_hides(tmp_path: Path) -> None:
    store, config = ModuleStore(str(tmp_path), "stored"), _config()
    os.makedirs(store.build_folder(config))
    os.makedirs(store.artifact_folder(config.short_key + "-kept"))
    store._write_latest(config, config.short_key + "-kept")
    store.write_failure(config, "digest", BuildError("failed"))
    clear(str(tmp_path), "stored")
    assert store.record_files() == [] and os.path.isfile(store.lock_path)
    (module,) = list_modules(str(tmp_path))
    assert module.empty and not module.artifacts and not module.builds
    assert visible_modules(str(tmp_path)) == []  # what `list` and `info`'s module count show
    with filelock.FileLock(store.lock_path):  # being built again: shown, though it holds nothing yet
        assert [(m.name, m.being_built) for m in visible_modules(str(tmp_path))] == [("stored", True)]
