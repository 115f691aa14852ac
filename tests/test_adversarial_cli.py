"""The command line on a damaged cache: never a traceback, never blocked, damage listed and then deleted.

Each case damages a copy of one real cache (built once) in its own root and runs the command line in
fresh processes. Permission cases run the command line as an ordinary user (root ignores permissions).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_template_cache, run_python, write_module

NAME = "adv_cli"
NOBODY = 65534


def _cli(*args: str, root: Path, env: dict[str, str] | None = None, as_nobody: bool = False,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    full_env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(root), **(env or {}))
    result = subprocess.run([*prefix, sys.executable, "-m", "cpp_extension_tools", *args], env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding one real module (an artifact, its build folder, a latest-* hint)."""
    return build_template_cache(tmp_path_factory.mktemp("template"), NAME)


@pytest.fixture
def cache(template: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the template, in a folder an unprivileged user can reach (for the permission cases)."""
    base = Path(tempfile.mkdtemp(prefix="adv-cli-", dir=tmp_path if os.geteuid() != 0 else "/tmp"))
    base.chmod(0o755)
    root = base / "cache"
    shutil.copytree(template, root, symlinks=True)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:  # give back what a case took away, so it can be deleted
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)
        shutil.rmtree(base)


def _hand_to_nobody(root: Path) -> bool:
    """Run as root: give the cache to an ordinary user, who then runs the command line; False otherwise."""
    if os.geteuid() != 0:
        return False
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    for path in [root, *root.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    return True


def _artifact(root: Path) -> Path:
    (artifact,) = (root / NAME / "artifacts").iterdir()
    return artifact


def _artifacts_left(root: Path) -> list[str]:
    folder = root / NAME / "artifacts"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _listing(root: Path, as_nobody: bool = False) -> dict[str, Any]:
    result = _cli("list", "--json", root=root, as_nobody=as_nobody)
    assert result.returncode == 0, result.stderr
    listing: dict[str, Any] = json.loads(result.stdout)
    return listing


def _check_listed_then_cleared(root: Path, damaged_text: str, as_nobody: bool = False) -> None:
    text = _cli("list", root=root, as_nobody=as_nobody)
    assert text.returncode == 0 and damaged_text in text.stdout, text.stdout + text.stderr
    (module,) = _listing(root, as_nobody)["modules"]
    assert any(entry["damaged"] for entry in module["artifacts"] + module["builds"])
    cleared = _cli("clear", root=root, as_nobody=as_nobody)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert _listing(root, as_nobody)["modules"] == []  # nothing but its lock file is left: not listed
    assert (root / NAME / ".lock").is_file()


# -- manifests of odd types ------------------------------------------------------------------------------------

def _edit(field: str, value: Any) -> Any:
    def edit(manifest: dict[str, Any]) -> Any:
        manifest[field] = value
        return manifest
    return edit


def _edit_details(details: Any) -> Any:
    return _edit("details", details)


MALFORMED = {  # rejected by the manifest's reader: listed as damaged
    "created_at-text": _edit("created_at", "x"), "library-list": _edit("library", []),
    "details-number": _edit("details", 5), "inputs-object": _edit("inputs", {}),
    "sources-text": _edit("sources", "a.c"), "name-null": _edit("name", None),
    "top-level-list": lambda manifest: [manifest], "missing-format": lambda manifest: {},
}
ODD_BUT_READABLE = {  # accepted by the reader; informative or arithmetic fields the listing must not trust
    "configuration-number": _edit_details({"configuration": 5}),
    "cflags-number": _edit_details({"configuration": {"cflags": 5}}),
    "cflags-numbers": _edit_details({"configuration": {"cflags": [1, 2]}}),
    "environment-text": _edit_details({"configuration": {"environment": "x"}}),
    "torch-list": _edit_details({"configuration": {"environment": {"torch": [], "python": 3, "cpu": 7}}}),
    "arch-list-object": _edit_details({"cuda_arch_list": {"a": 1}}),
    "created_at-huge": _edit("created_at", 1e300), "created_at-negative": _edit("created_at", -1e20),
    "created_at-nan": _edit("created_at", float("nan")), "build_seconds-inf": _edit("build_seconds", float("inf")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_listed_as_damaged_and_cleared(cache: Path, case: str) -> None:
    path = _artifact(cache) / "manifest.json"
    path.write_text(json.dumps(MALFORMED[case](json.loads(path.read_text()))))
    _check_listed_then_cleared(cache, "damaged")


@pytest.mark.parametrize("case", sorted(ODD_BUT_READABLE))
def test_a_manifest_of_odd_types_is_listed_pruned_and_cleared(cache: Path, case: str) -> None:
    path = _artifact(cache) / "manifest.json"
    path.write_text(json.dumps(ODD_BUT_READABLE[case](json.loads(path.read_text()))))
    listed = _cli("list", root=cache)
    assert listed.returncode == 0 and NAME in listed.stdout, listed.stderr
    (module,) = _listing(cache)["modules"]
    (artifact,) = module["artifacts"]
    assert 0 <= artifact["built_at"] <= 1e11 and 0 <= artifact["last_used"] <= 1e11
    assert isinstance(artifact["build_seconds"], float) and artifact["build_seconds"] < 1e9
    pruned = _cli("prune", "--keep", "0", root=cache)
    assert pruned.returncode == 0 and _artifacts_left(cache) == [], pruned.stdout + pruned.stderr


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf-8", b"{" * 100_000, b"NaN"])
def test_a_manifest_that_is_not_json_is_damaged(cache: Path, content: bytes) -> None:
    (_artifact(cache) / "manifest.json").write_bytes(content)
    _check_listed_then_cleared(cache, "damaged")


# -- entries of the wrong kind ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink", "longer"])
def test_a_binary_that_is_no_longer_the_one_built_is_damaged_and_cleared(cache: Path, kind: str) -> None:
    (binary,) = _artifact(cache).glob(f"{NAME}*.so")
    size = binary.stat().st_size
    if kind == "longer":
        with binary.open("ab") as f:
            f.write(b"\0")
    else:
        binary.unlink()
        {"fifo": lambda: os.mkfifo(binary), "folder": binary.mkdir,
         "symlink": lambda: binary.symlink_to("/bin/sh")}[kind]()
    text = "is not a regular file" if kind != "longer" else f"{size + 1} bytes, its manifest says {size}"
    _check_listed_then_cleared(cache, text)


def test_a_lock_of_another_kind_is_never_reported_as_being_built(cache: Path) -> None:
    lock = cache / NAME / ".lock"
    lock.unlink()
    lock.symlink_to(cache / "elsewhere.lock")
    (cache / "elsewhere.lock").touch()
    listing = _listing(cache)
    assert [m["being_built"] for m in listing["modules"]] == [False]
    assert lock.is_symlink() and not (cache / NAME / ".lock.owner").exists()


def test_a_lock_that_is_a_folder_is_replaced_and_the_module_cleared(cache: Path) -> None:
    lock = cache / NAME / ".lock"
    lock.unlink()
    (lock / "inside").mkdir(parents=True)
    assert _cli("list", root=cache).returncode == 0
    cleared = _cli("clear", root=cache)
    assert cleared.returncode == 0, cleared.stderr
    assert lock.is_file() and _artifacts_left(cache) == []


@pytest.mark.parametrize("entry", ["artifacts", "builds"])
def test_a_cache_folder_that_is_a_file_is_damaged_and_cleared(cache: Path, entry: str) -> None:
    folder = cache / NAME / entry
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    _check_listed_then_cleared(cache, "is not a folder")
    assert not folder.exists()


def test_a_module_folder_that_is_a_file_is_not_the_caches_and_is_left_alone(cache: Path) -> None:
    stray = cache / "not_a_module"
    stray.write_text("someone's file")
    listed = _cli("list", root=cache)
    assert listed.returncode == 0 and "not_a_module" not in listed.stdout
    missing = _cli("list", "not_a_module", root=cache)
    assert missing.returncode == 1 and missing.stderr.startswith("cpp-extension-tools: error: no module")
    assert _cli("clear", root=cache).returncode == 0
    assert stray.read_text() == "someone's file"


@pytest.mark.parametrize("where", ["manifest", "hint", "failure", "owner", "last-used", "lock"])
def test_a_fifo_in_the_cache_never_blocks_the_command_line(cache: Path, where: str) -> None:
    module = cache / NAME
    hint = next(module.glob("latest-*"))
    path = {"manifest": _artifact(cache) / "manifest.json", "hint": hint, "failure": module / "failure-x.json",
            "owner": module / ".lock.owner", "last-used": _artifact(cache) / "last-used",
            "lock": module / ".lock"}[where]
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    for args in (("list",), ("list", "--json"), ("prune", "--keep", "0"), ("clear",)):  # prune reads hints
        result = _cli(*args, root=cache, timeout=30)  # a blocked open is a TimeoutExpired here
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert _artifacts_left(cache) == []
    if where in ("manifest", "hint", "failure", "last-used"):
        assert not path.exists() or not stat.S_ISFIFO(path.lstat().st_mode)


_HOLDER = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(30)
"""


def test_a_fifo_as_the_lock_owner_record_never_blocks_a_prune_of_a_busy_module(cache: Path) -> None:
    owner = cache / NAME / ".lock.owner"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(cache / NAME / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        owner.unlink(missing_ok=True)
        os.mkfifo(owner)
        result = _cli("prune", "--keep", "0", root=cache, timeout=30)  # the message names the lock's owner
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.returncode == 3 and NAME in result.stdout, result.stdout + result.stderr
    assert len(_artifacts_left(cache)) == 1


@pytest.mark.parametrize("target", ["artifacts", "artifact", "builds", "module"])
def test_a_folder_without_permissions_is_listed_as_damaged_and_cleared(cache: Path, target: str) -> None:
    folder = {"artifacts": cache / NAME / "artifacts", "artifact": _artifact(cache),
              "builds": cache / NAME / "builds", "module": cache / NAME}[target]
    as_nobody = _hand_to_nobody(cache)
    folder.chmod(0)
    _check_listed_then_cleared(cache, "damaged", as_nobody=as_nobody)
    assert stat.S_IMODE((cache / NAME).stat().st_mode) & 0o700 == 0o700


# -- settings and pipes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "value"), [("CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL", "abc"),
                                                 ("CACHED_CPP_EXTENSION_LOCK_TIMEOUT", "nan"),
                                                 ("CACHED_CPP_EXTENSION_SHARED_CACHE", "maybe")])
def test_an_invalid_setting_lists_but_refuses_to_delete_with_one_error_line(cache: Path, variable: str,
                                                                              value: str) -> None:
    env = {variable: value}
    assert _cli("list", root=cache, env=env).returncode == 0
    for args in (("clear",), ("prune", "--keep", "0"), ("clear", "--dry-run")):
        result = _cli(*args, root=cache, env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.startswith("cpp-extension-tools: error: ") and f"{variable}={value!r}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert len(_artifacts_left(cache)) == 1


def test_list_into_a_reader_that_stops_early_ends_quietly(cache: Path) -> None:
    artifacts = cache / NAME / "artifacts"
    for i in range(3000):  # far more output than a pipe holds
        (artifacts / f"{i:016x}-{i:016x}").mkdir()
    env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(cache))
    process = subprocess.Popen([sys.executable, "-m", "cpp_extension_tools", "list"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    try:
        status = process.wait(timeout=60)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert first.startswith(b"cache root ")
    assert (status, stderr) == (141, "")


# -- a build with a size limit next to a damaged module --------------------------------------------------------

@pytest.mark.slow
def test_a_build_is_never_failed_by_another_modules_damage(cache: Path, tmp_path: Path) -> None:
    path = _artifact(cache) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["details"] = {"configuration": {"cflags": 5, "environment": "x"}}
    manifest["created_at"] = 1e300
    path.write_text(json.dumps(manifest))
    (cache / NAME / "latest-fifo").unlink(missing_ok=True)
    os.mkfifo(cache / NAME / "latest-fifo")
    (cache / NAME / ".lock").unlink()
    (cache / NAME / ".lock").mkdir()
    sources = write_module(tmp_path / "other", functions={"answer": 7})
    result = run_python(f"""
        from cpp_extension_tools import cached_load_torch_cpp_extension
        print(cached_load_torch_cpp_extension("adv_cli_other", {sources!r}).answer())
    """, env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(cache), "CACHED_CPP_EXTENSION_MAX_SIZE": "1"},
        timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("7"), result.stderr
    assert _artifacts_left(cache) == []  # the other module's artifact was pruned, damage and all
    assert len(list((cache / "adv_cli_other" / "artifacts").iterdir())) == 1
