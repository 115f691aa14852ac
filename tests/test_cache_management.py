"""Cache management: last-used stamps, listing, pruning (LRU, busy modules, loaded binaries), the size
limit after builds, clear, and the list/prune/clear/build commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import filelock
import pytest
import torch

from cpp_extension_tools import _api as api_module
from cpp_extension_tools import cached_load_torch_cpp_extension
from cpp_extension_tools._cache.inventory import ArtifactInfo, ModuleInfo, list_modules
from cpp_extension_tools._cache.prune import prune, select
from cpp_extension_tools._cache.store import LAST_USED_FILE, last_used
from tests.conftest import CompilerLog, last_json, run_python, write_module

HOUR = 3600.0

LOAD = """
import json, sys
from cpp_extension_tools import cached_load_torch_cpp_extension
module = cached_load_torch_cpp_extension({name!r}, {sources!r})
print(json.dumps({{"answer": module.answer()}}))
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpp_extension_tools", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _build_variants(name: str, src: Path, values: list[int]) -> list[str]:
    """One artifact per value (same configuration, other sources), built in this order; the artifact ids."""
    ids = []
    for value in values:
        sources = write_module(src, functions={"answer": value})
        module = cached_load_torch_cpp_extension(name, sources)
        assert module.answer() == value
        (modules,) = list_modules(os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"], name)
        ids.append(max(modules.artifacts, key=lambda a: a.built_at).artifact_id)
    return ids


def _set_last_used(cache: Path, name: str, artifact_id: str, when: float) -> None:
    """Pose the artifact as built before ``when`` and last used then."""
    folder = cache / name / "artifacts" / artifact_id
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["created_at"] = min(manifest["created_at"], when - 60)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    stamp = folder / LAST_USED_FILE
    stamp.touch()
    os.utime(stamp, (when, when))


def _artifact_ids(cache: Path, name: str) -> set[str]:
    return {a.artifact_id for m in list_modules(str(cache), name) for a in m.artifacts}


# -- last use ------------------------------------------------------------------

def test_last_use_is_stamped_at_most_once_an_hour(tmp_path: Path, cache_root: Path) -> None:
    sources = write_module(tmp_path / "src")
    code = LOAD.format(name="stamped", sources=sources)
    run_python(code)  # builds; a fresh artifact counts as used now, so nothing is written
    (artifact,) = (cache_root / "stamped" / "artifacts").iterdir()
    assert not (artifact / LAST_USED_FILE).exists()

    two_hours_ago = time.time() - 2 * HOUR
    _set_last_used(cache_root, "stamped", artifact.name, two_hours_ago)
    run_python(code)
    stamped = (artifact / LAST_USED_FILE).stat().st_mtime
    assert time.time() - stamped < 60

    ten_minutes_ago = time.time() - 600
    _set_last_used(cache_root, "stamped", artifact.name, ten_minutes_ago)
    run_python(code)
    assert (artifact / LAST_USED_FILE).stat().st_mtime == pytest.approx(ten_minutes_ago, abs=1e-3)
    assert last_used(str(artifact), 0.0) == pytest.approx(ten_minutes_ago, abs=1e-3)


# -- listing -------------------------------------------------------------------

def test_list_shows_every_module_with_what_it_was_built_for(tmp_path: Path, cache_root: Path) -> None:
    cached_load_torch_cpp_extension("listed_a", write_module(tmp_path / "a", functions={"answer": 1}))
    cached_load_torch_cpp_extension("listed_b", write_module(tmp_path / "b", functions={"answer": 2}),
                                    extra_cflags=["-O2", "-march=x86-64-v2"])
    result = _cli("list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["root"] == str(cache_root)
    modules = {m["name"]: m for m in listing["modules"]}
    assert set(modules) == {"listed_a", "listed_b"}
    for module in modules.values():
        (artifact,) = module["artifacts"]
        files = list(Path(artifact["path"]).iterdir())
        assert artifact["size_bytes"] == sum(f.lstat().st_size for f in files)
        assert artifact["built_for"]["torch"] == torch.__version__
        assert artifact["built_for"]["python"] == sys.implementation.cache_tag
        assert len(module["builds"]) == 1
    assert modules["listed_a"]["artifacts"][0]["built_for"]["cpu"].startswith("native (")
    assert modules["listed_b"]["artifacts"][0]["built_for"]["cpu"] == "x86-64-v2"
    assert listing["size_bytes"] == sum(m["size_bytes"] for m in modules.values())

    text = _cli("list").stdout
    header = next(line for line in text.splitlines() if line.startswith("MODULE"))
    assert header.split()[:3] == ["MODULE", "ARTIFACT", "SIZE"]
    assert "listed_a" in text and "x86-64-v2" in text and torch.__version__ in text

    one = json.loads(_cli("list", "listed_b", "--json").stdout)
    assert [m["name"] for m in one["modules"]] == ["listed_b"]
    missing = _cli("list", "no_such_module")
    assert missing.returncode == 1 and "no_such_module" in missing.stderr


# -- pruning -------------------------------------------------------------------

def _artifact(module: str, artifact_id: str, size: int, used: float, damaged: str = "") -> ArtifactInfo:
    return ArtifactInfo(module, artifact_id, f"/c/{module}/artifacts/{artifact_id}", size, used, used, 1.0, {},
                        damaged)


def test_select_takes_least_recently_used_first_and_honours_protection() -> None:
    now = 10 * HOUR
    a = ModuleInfo("a", "/c/a", 60, (_artifact("a", "a1", 20, now - 5 * HOUR), _artifact("a", "a2", 20, now - HOUR),
                                     _artifact("a", "a3", 20, now)), ())
    b = ModuleInfo("b", "/c/b", 50, (_artifact("b", "b1", 30, now - 3 * HOUR),
                                     _artifact("b", "bad", 20, now, damaged="manifest missing")), ())
    ids = [e.entry_id for e in select([a, b], max_size=60, now=now)]
    assert ids == ["a1", "b1", "bad"]  # damaged always (110 -> 90), then oldest first until 60 fit
    assert [e.entry_id for e in select([a, b], max_size=70, now=now)] == ["a1", "bad"]
    assert [e.entry_id for e in select([a, b], max_size=60, protect={"a1"}, now=now)] == ["b1", "bad"]
    assert [e.entry_id for e in select([a, b], keep=1, now=now)] == ["a1", "a2", "bad"]  # b1 is b's newest usable
    assert [e.entry_id for e in select([a, b], older_than=2 * HOUR, now=now)] == ["a1", "b1", "bad"]
    assert select([a], max_size=1000, now=now) == []


def test_prune_keeps_the_most_recently_used_and_they_still_load(tmp_path: Path, cache_root: Path,
                                                                 compilers: CompilerLog) -> None:
    ids = _build_variants("pruned", tmp_path / "src", [1, 2, 3])
    now = time.time()
    # Used in another order than built: LRU follows use. The one built last (3) is in the sources now.
    for artifact_id, hours_ago in zip(ids, [1, 3, 2], strict=True):
        _set_last_used(cache_root, "pruned", artifact_id, now - hours_ago * HOUR)
    dry = json.loads(_cli("prune", "--keep", "1", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and [r["id"] for r in dry["removed"]] == [ids[1], ids[2]]
    assert _artifact_ids(cache_root, "pruned") == set(ids)

    result = _cli("prune", "--keep", "1")
    assert result.returncode == 0, result.stderr
    assert "2 artifact(s)" in result.stdout
    assert _artifact_ids(cache_root, "pruned") == {ids[0]}
    assert not list((cache_root / "pruned" / "artifacts").glob("*.tmp-*"))
    # The configuration's latest-* hint named the last built artifact, which was pruned: it goes too.
    assert not (cache_root / "pruned" / f"latest-{ids[0].split('-')[0]}").exists()

    compilers.reset()  # the kept one loads without a build; the pruned one (the current sources) is rebuilt
    assert last_json(run_python(LOAD.format(name="pruned", sources=write_module(
        tmp_path / "src", functions={"answer": 1}))).stdout) == {"answer": 1}
    assert compilers.compiles() == []
    assert last_json(run_python(LOAD.format(name="pruned", sources=write_module(
        tmp_path / "src", functions={"answer": 3}))).stdout) == {"answer": 3}
    assert len(compilers.compiles()) == 1  # only the edited source: the build folder was kept


def test_prune_to_a_size_and_by_age(tmp_path: Path, cache_root: Path) -> None:
    ids = _build_variants("sized", tmp_path / "src", [1, 2, 3])
    now = time.time()
    for artifact_id, days_ago in zip(ids, [30, 10, 1], strict=True):
        _set_last_used(cache_root, "sized", artifact_id, now - days_ago * 24 * HOUR)
    old = json.loads(_cli("prune", "--older-than", "20d", "--json").stdout)
    assert [r["id"] for r in old["removed"]] == [ids[0]]

    (module,) = list_modules(str(cache_root), "sized")
    newest = next(a for a in module.artifacts if a.artifact_id == ids[2])
    limit = module.size - 1  # one byte too many: the least recently used entry goes
    result = json.loads(_cli("prune", "--max-size", str(limit), "--json").stdout)
    assert [r["id"] for r in result["removed"]] == [ids[1]]
    (after,) = list_modules(str(cache_root), "sized")
    assert after.size <= limit
    assert [a.artifact_id for a in after.artifacts] == [newest.artifact_id]


def test_prune_skips_a_module_whose_build_lock_is_held(tmp_path: Path, cache_root: Path) -> None:
    _build_variants("busy", tmp_path / "src", [1, 2])
    lock = filelock.FileLock(str(cache_root / "busy" / ".lock"))
    with lock:
        result = _cli("prune", "--keep", "0")
    assert result.returncode == 3
    assert "busy" in result.stdout and "being built" in result.stdout
    assert len(_artifact_ids(cache_root, "busy")) == 2
    assert _cli("prune", "--keep", "0").returncode == 0
    assert _artifact_ids(cache_root, "busy") == set()
    assert (cache_root / "busy" / ".lock").exists()  # never deleted


def test_a_process_keeps_using_a_binary_pruned_under_it(tmp_path: Path, cache_root: Path) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 5})
    holder = subprocess.Popen([sys.executable, "-c", LOAD.format(name="held", sources=sources) + (
        "sys.stdin.readline()\nprint(json.dumps({'again': module.answer()}))\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert json.loads(holder.stdout.readline()) == {"answer": 5}
    assert _cli("clear").returncode == 0
    assert _artifact_ids(cache_root, "held") == set()
    out, _ = holder.communicate("\n", timeout=60)
    assert json.loads(out) == {"again": 5}
    assert last_json(run_python(LOAD.format(name="held", sources=sources)).stdout) == {"answer": 5}


def test_an_artifact_removed_between_lookup_and_load_is_rebuilt(tmp_path: Path, cache_root: Path,
                                                                 compilers: CompilerLog,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 6})
    run_python(LOAD.format(name="vanishing", sources=sources))
    real_open = api_module.open_trusted_stat  # the load opens the binary, then maps what it opened
    removed: list[Any] = []

    def prune_first(root: str, path: str) -> tuple[int, os.stat_result]:
        if not removed:
            removed.append(path)
            prune(str(cache_root), keep=0)  # what another process's prune could do at this moment
            removed.append(not os.path.exists(path))
        return real_open(root, path)

    monkeypatch.setattr(api_module, "open_trusted_stat", prune_first)
    compilers.reset()
    module = cached_load_torch_cpp_extension("vanishing", sources)
    assert module.answer() == 6
    assert removed[1] is True  # the binary was gone when it was loaded
    # So it was built again under the lock: ninja found the build folder (kept) up to date, and the
    # binary was published again, without a compile.
    assert compilers.compiles() == []
    assert len(_artifact_ids(cache_root, "vanishing")) == 1


def test_max_size_prunes_after_each_build_but_never_the_new_binary(tmp_path: Path, cache_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _build_variants("other_module", tmp_path / "other", [7])
    monkeypatch.setenv("CACHED_CPP_EXTENSION_MAX_SIZE", "1")  # smaller than any binary
    ids = _build_variants("limited", tmp_path / "src", [1, 2])
    assert _artifact_ids(cache_root, "limited") == {ids[1]}
    assert _artifact_ids(cache_root, "other_module") == set()  # least recently used, in another module
    (module,) = list_modules(str(cache_root), "limited")
    assert len(module.builds) == 1  # the build folder of the configuration just built stays


def test_an_invalid_max_size_fails_the_build_before_it_takes_the_lock(tmp_path: Path, cache_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHED_CPP_EXTENSION_MAX_SIZE", "lots")
    with pytest.raises(ValueError, match="CACHED_CPP_EXTENSION_MAX_SIZE='lots'"):
        _build_variants("badlimit", tmp_path / "src", [1])
    assert not (cache_root / "badlimit" / ".lock").exists()
    assert _artifact_ids(cache_root, "badlimit") == set()


# -- clear and build -----------------------------------------------------------

def test_clear_one_module_or_all(tmp_path: Path, cache_root: Path) -> None:
    _build_variants("clear_a", tmp_path / "a", [1])
    _build_variants("clear_b", tmp_path / "b", [2])
    result = _cli("clear", "clear_a")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (cache_root / "clear_a").iterdir()) == [".lock", "artifacts", "builds"]
    assert not list((cache_root / "clear_a" / "artifacts").iterdir())
    assert len(_artifact_ids(cache_root, "clear_b")) == 1
    unknown = _cli("clear", "no_such_module")
    assert unknown.returncode == 1 and "no_such_module" in unknown.stderr
    everything = json.loads(_cli("clear", "--json").stdout)
    assert [r["module"] for r in everything["removed"]] == ["clear_b", "clear_b"]
    assert _artifact_ids(cache_root, "clear_b") == set()


def test_build_command_fills_the_cache_ahead_of_time(tmp_path: Path, cache_root: Path,
                                                     compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 8})
    target = tmp_path / "uses_extension.py"
    target.write_text("from cpp_extension_tools import cached_load_torch_cpp_extension\n"
                      f"module = cached_load_torch_cpp_extension('prebuilt_ahead', {sources!r})\n"
                      "if __name__ == '__main__':\n    raise SystemExit('the script body must not run')\n")
    first = _cli("build", str(target), "--json")
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)["built"]
    assert [b["module"] for b in built] == ["prebuilt_ahead"]
    assert "building prebuilt_ahead" in first.stderr  # progress goes to stderr
    compilers.reset()
    second = _cli("build", str(target))
    assert second.returncode == 0 and "0 module(s) built" in second.stdout
    assert compilers.compiles() == []
    assert last_json(run_python(LOAD.format(name="prebuilt_ahead", sources=sources)).stdout) == {"answer": 8}
    assert compilers.compiles() == []

    missing = _cli("build", "no_such_package_anywhere")
    assert missing.returncode == 1 and "no_such_package_anywhere" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("from cpp_extension_tools import cached_load_torch_cpp_extension\n"
                      f"cached_load_torch_cpp_extension('broken_ext', [{str(tmp_path / 'nope.c')!r}])\n")
    failed = _cli("build", str(broken))
    assert failed.returncode == 1 and "nope.c" in failed.stderr and "Traceback" not in failed.stderr
