"""Attacks on the cache by another account: swapping folders between the check and the load, groups
that are not as private as they look, a planted default root; and a team cache used by two accounts.

Multi-user tests create throwaway accounts (root only; skipped otherwise) and run their side as those
accounts in real processes. The venv's interpreter lives under /root (mode 700 here), so the other
accounts run the system interpreter of the same Python version with the venv's site-packages on
PYTHONPATH; a test skips, saying so, when that account cannot import the library.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cpp_extension_tools as c
from cpp_extension_tools import _loader
from cpp_extension_tools._cache import fs as _fsutil
from cpp_extension_tools._cache import root as _root
from cpp_extension_tools._cache import trust as _trust
from cpp_extension_tools._errors import UnsafeCacheError
from tests.conftest import REPO, CompilerLog, last_json, run_python, write_module

NAME = "adv_ext"
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
PYTHON_INCLUDE = f"/usr/include/python{sys.version_info.major}.{sys.version_info.minor}"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating throwaway accounts and chown need root")


# --------------------------------------------------------------------------- accounts and shared folders

class Account:
    def __init__(self, name: str) -> None:
        self.name = name
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
            groups: tuple[int, ...] = (), umask: int = 0o022, timeout: float = 300,
            background: bool = False) -> Any:
        """Run ``argv`` as this account: its own uid and gid, ``groups`` as the only supplementary ones."""
        group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", *group_args, "--",
                   "sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", *argv]
        full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
        full_env.update(env or {})
        if background:
            return subprocess.Popen(command, env=full_env, cwd=cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        return subprocess.run(command, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        full_env = {"PYTHONPATH": f"{SITE_PACKAGES}{os.pathsep}{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
        full_env.update(env or {})
        result: subprocess.CompletedProcess[str] = self.run([SYSTEM_PYTHON, "-c", textwrap.dedent(code)],
                                                            env=full_env, **kwargs)
        return result


@pytest.fixture
def accounts() -> Iterator[Callable[..., Account]]:
    """make(primary_group=None, groups=()) -> a new account, deleted (with its own group) afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating throwaway accounts needs root")
    missing = [p for p in ("useradd", "userdel", "groupadd", "groupdel", "setpriv") if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (passwd, util-linux; ./dev.sh test installs them as root)")
    made: list[str] = []
    made_groups: list[str] = []

    def make(primary_group: str | None = None) -> Account:
        name = f"cetadv{secrets.token_hex(3)}"
        group_args = ["-g", primary_group] if primary_group else ["-U"]
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", *group_args, name], check=True)
        made.append(name)
        return Account(name)

    def group() -> grp.struct_group:
        name = f"cetadvg{secrets.token_hex(3)}"
        subprocess.run(["groupadd", name], check=True)
        made_groups.append(name)
        return grp.getgrnam(name)

    make.group = group  # type: ignore[attr-defined]
    yield make
    for name in made:
        subprocess.run(["userdel", name], check=False, capture_output=True)
    for name in [*made, *made_groups]:  # userdel keeps a user's group that another account still uses
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def world() -> Iterator[Path]:
    """A fresh folder every account can read (pytest's tmp_path is private to root)."""
    folder = Path(f"/tmp/cet-adv-{secrets.token_hex(4)}")
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def require_python(account: Account) -> None:
    """Skip unless ``account`` can run the library (the system interpreter, the venv's packages)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing: other accounts cannot run the venv's interpreter under /root")
    probe = account.python("import torch, filelock, cpp_extension_tools")
    if probe.returncode != 0:
        pytest.skip(f"account {account.name} cannot import torch and the library from {SITE_PACKAGES} and "
                    f"{REPO} with {SYSTEM_PYTHON}: {probe.stderr[-500:]}")


def compile_module(account: Account | None, folder: Path, value: int, name: str = NAME) -> Path:
    """A module ``name`` whose answer() returns ``value``, compiled with plain gcc (by ``account``)."""
    sources = write_module(folder, functions={"answer": value})
    output = folder / f"{name}.so"
    argv = ["gcc", "-shared", "-fPIC", "-O2", f"-I{PYTHON_INCLUDE}", f"-DTORCH_EXTENSION_NAME={name}",
            *sources, "-o", str(output)]
    if account is None:
        subprocess.run(argv, check=True, capture_output=True)
    else:
        for path in (folder, *folder.iterdir()):
            os.chown(path, account.uid, account.gid)
        result = account.run(argv)
        if result.returncode != 0:
            raise AssertionError(f"gcc as {account.name} failed:\n{result.stdout}{result.stderr}")
    return output


# --------------------------------------------------------------------------- the same file for check and load

def test_two_binaries_through_one_descriptor_number(tmp_path: Path) -> None:
    """glibc knows a library by the string it was opened with: after closing /proc/self/fd/N, the next
    binary opened as N would come back as the first one. import_from_fd keeps that from happening."""
    first = compile_module(None, tmp_path / "one", 1)
    second = compile_module(None, tmp_path / "two", 2)
    out = run_python(f"""
        import ctypes, json, os
        from cpp_extension_tools._loader import import_from_fd
        fd = os.open({str(first)!r}, os.O_RDONLY)
        handle = ctypes.CDLL(f"/proc/self/fd/{{fd}}")._handle
        os.close(fd)
        fd2 = os.open({str(second)!r}, os.O_RDONLY)
        stale = fd2 == fd and ctypes.CDLL(f"/proc/self/fd/{{fd2}}")._handle == handle
        os.close(fd2)
        values, files, numbers = [], [], []
        for path in ({str(first)!r}, {str(second)!r}, {str(first)!r}):
            fd = os.open(path, os.O_RDONLY)
            numbers.append(fd)
            module = import_from_fd({NAME!r}, fd, path)
            values.append(module.answer())
            files.append(module.__file__)
        print(json.dumps({{"stale": stale, "values": values, "files": files}}))
    """)
    result = last_json(out.stdout)
    assert result == {"stale": True, "values": [1, 2, 1], "files": [str(first), str(second), str(first)]}, \
        "a raw reuse of the number hands back the old library; import_from_fd never does"


def _tree(root: Path) -> Path:
    library = root / NAME / "artifacts" / "key-content" / f"{NAME}.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF")
    for folder in (root, root / NAME, root / NAME / "artifacts", library.parent):
        folder.chmod(0o700)
    return library


@pytest.mark.parametrize("case", ["symlinked_level", "symlinked_file", "world_writable", "foreign_owner",
                                  "fifo", "missing", "outside"])
def test_open_trusted_refuses(tmp_path: Path, case: str) -> None:
    root = tmp_path / "cache"
    library = _tree(root)
    artifacts = root / NAME / "artifacts"
    expected: type[BaseException] = UnsafeCacheError
    if case == "symlinked_level":
        shutil.move(artifacts, tmp_path / "elsewhere")
        artifacts.symlink_to(tmp_path / "elsewhere")
    elif case == "symlinked_file":
        shutil.move(library, tmp_path / "elsewhere.so")
        library.symlink_to(tmp_path / "elsewhere.so")
    elif case == "world_writable":
        artifacts.chmod(0o777)
    elif case == "foreign_owner":
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(library.parent, 54321, -1)
    elif case == "fifo":
        library.unlink()
        os.mkfifo(library)  # opened without blocking, then refused
        expected = ImportError
    elif case == "missing":
        library.unlink()
        expected = FileNotFoundError
    else:
        library = tmp_path / "cache-other" / "x.so"
    with pytest.raises(expected) as info:
        os.close(_loader.open_trusted(str(root), str(library)))
    if expected is UnsafeCacheError and case != "outside":
        assert "another user" in str(info.value) and str(root) in str(info.value)


def test_open_trusted_follows_a_symlinked_root_and_returns_the_checked_file(tmp_path: Path) -> None:
    library = _tree(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = _loader.open_trusted(str(tmp_path / "link"), str(tmp_path / "link" / library.relative_to(tmp_path / "real")))
    try:
        assert os.path.sameopenfile(fd, os.open(library, os.O_RDONLY))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- swapping folders during loads

# The old code (check by path, then dlopen by path) loaded the attacker's binary in about 1 load in 75.
LOADS = 1500

_EXCHANGE_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
int main(int argc, char **argv) {
    if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) != 0) {
        perror("renameat2");
        return 1;
    }
    printf("swapping\n"); fflush(stdout);
    for (;;) syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
}
"""

_VICTIM = """
    import json, os, sys, time
    import cpp_extension_tools as c
    from cpp_extension_tools import _loader
    from cpp_extension_tools._errors import UnsafeCacheError
    mode, links, sources, artifact, name = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
    counts, started = {}, time.monotonic()
    for i in range(int(sys.argv[6])):
        if time.monotonic() - started > 60:
            break
        root = os.path.join(links, str(i))  # a path of its own per load: never a memo or a cached dlopen
        _loader._memo.clear()
        try:
            if mode == "api":
                module = c.cached_load_torch_cpp_extension(name, sources, build_directory=root)
            else:
                library = os.path.join(root, name, "artifacts", artifact, name + ".so")
                module = _loader.import_from_fd(name, _loader.open_trusted(root, library), library)
            outcome = str(module.answer())
        except UnsafeCacheError:
            outcome = "refused"
        except Exception as error:
            outcome = type(error).__name__
        counts[outcome] = counts.get(outcome, 0) + 1
    print(json.dumps(counts))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["loader", "api"])
def test_swapping_the_root_while_loading_never_runs_foreign_code(world: Path, accounts: Callable[..., Account],
                                                                 compilers: CompilerLog, mode: str) -> None:
    attacker = accounts()
    parent = world / "parent"  # the attacker's folder: they can rename anything in it, sticky bit or not
    parent.mkdir()
    os.chown(parent, attacker.uid, attacker.gid)
    cache = parent / "cache"
    sources = write_module(world / "src", functions={"answer": 42})
    run_python(f"import cpp_extension_tools as c; c.cached_load_torch_cpp_extension({NAME!r}, {sources!r})",
               env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(cache)})
    (artifact,) = (cache / NAME / "artifacts").iterdir()
    library = artifact / f"{NAME}.so"
    evil = _attackers_copy(cache, parent / "evil", library, compile_module(attacker, world / "attacker", 666))
    subprocess.run(["chown", "-R", f"{attacker.uid}:{attacker.gid}", str(evil)], check=True)
    links = world / "links"  # the victim's own symlinks to the root, one per load
    links.mkdir(mode=0o700)
    for i in range(LOADS):
        (links / str(i)).symlink_to(cache)
    (world / "attacker" / "swap.c").write_text(_EXCHANGE_C)
    os.chown(world / "attacker" / "swap.c", attacker.uid, attacker.gid)
    built = attacker.run(["gcc", "-O2", "-o", str(world / "attacker" / "swap"), str(world / "attacker" / "swap.c")])
    assert built.returncode == 0, built.stderr
    swapper = attacker.run([str(world / "attacker" / "swap"), str(cache), str(evil)], background=True)
    try:
        if swapper.stdout.readline().strip() != "swapping":
            pytest.skip(f"renameat2(RENAME_EXCHANGE) is not available here: {swapper.communicate()[0]}")
        out = _run_victim(mode, links, sources, artifact.name)
    finally:
        swapper.kill()
        swapper.wait()
    counts = json.loads(out)
    assert "666" not in counts, f"the attacker's binary was loaded: {counts}"
    assert counts.get("42", 0) > 0 and counts.get("refused", 0) > 0, f"the race did not happen: {counts}"


def _run_victim(mode: str, links: Path, sources: list[str], artifact: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_VICTIM), mode, str(links), json.dumps(sources),
                             artifact, NAME, str(LOADS)], env={**os.environ, "CACHED_CPP_EXTENSION_DISABLE_JIT": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def _attackers_copy(cache: Path, evil: Path, library: Path, their_binary: Path) -> Path:
    """The victim's tree as the attacker can rebuild it (same sources, same key), their binary inside,
    padded to the same size with the same mtime, so a check of size and mtime passes."""
    shutil.copytree(cache / NAME / "artifacts", evil / NAME / "artifacts", symlinks=True)
    for hint in (cache / NAME).glob("latest-*"):
        shutil.copy2(hint, evil / NAME / hint.name)
    data = their_binary.read_bytes()
    size = library.stat().st_size
    if len(data) > size:
        pytest.skip(f"the attacker's binary ({len(data)} bytes) is larger than the victim's ({size})")
    target = evil / library.relative_to(cache)
    target.write_bytes(data + b"\0" * (size - len(data)))
    os.utime(target, ns=(library.stat().st_atime_ns, library.stat().st_mtime_ns))
    return evil


# --------------------------------------------------------------------------- groups

_CHECK = """
    import json, os, sys
    from cpp_extension_tools._cache import trust as _trust
    from cpp_extension_tools._errors import UnsafeCacheError
    root, library = sys.argv[1], sys.argv[2]
    try:
        os.close(_trust.open_trusted(root, library))
        _trust.check_trusted(root, library)
        print(json.dumps("accepted"))
    except UnsafeCacheError as error:
        print(json.dumps(str(error)))
"""


@pytest.mark.parametrize("case", ["own_private_group", "primary_group_of_another_user", "listed_member"])
def test_group_writable_cache_is_trusted_only_for_a_private_group(world: Path, accounts: Callable[..., Account],
                                                                   case: str) -> None:
    victim = accounts()
    require_python(victim)
    if case == "primary_group_of_another_user":
        accounts(primary_group=victim.name)  # same primary group, not in the group's member list
    elif case == "listed_member":
        other = accounts()
        subprocess.run(["usermod", "-a", "-G", victim.name, other.name], check=True)
    root = world / "cache"
    library = _tree(root)
    subprocess.run(["chown", "-R", f"{victim.uid}:{victim.gid}", str(root)], check=True)
    (root / NAME).chmod(0o770)  # as with umask 002
    result = victim.run([SYSTEM_PYTHON, "-c", textwrap.dedent(_CHECK), str(root), str(library)],
                        env={"PYTHONPATH": f"{SITE_PACKAGES}{os.pathsep}{REPO}"})
    verdict = last_json(result.stdout + result.stderr)
    if case == "own_private_group":
        assert verdict == "accepted"
    else:
        assert isinstance(verdict, str) and f"writable by the members of group {victim.gid}" in verdict


# --------------------------------------------------------------------------- a team cache

_MEMBER = """
    import json, os, sys
    import cpp_extension_tools as c
    from cpp_extension_tools import _loader
    sources, step = json.loads(sys.argv[1]), sys.argv[2]
    result = {}
    try:
        if step == "lock":
            from cpp_extension_tools._errors import BuildError
            from cpp_extension_tools._cache.lock import module_lock
            from cpp_extension_tools._cache.store import ModuleStore
            (key,) = {n.split("-")[1] for n in os.listdir(os.path.join(os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"],
                                                                         "adv_ext")) if n.startswith("latest-")}
            store = ModuleStore(os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"], "adv_ext")
            with module_lock(store.lock_path, store.owner_path, "adv_ext", store.root, timeout=10):
                class Config:
                    short_key = key
                    key = short_key * 4  # what the failure record is checked against
                hint = store._latest_path(Config)
                artifact = open(hint).read()
                store._write_latest(Config, artifact)
                store.write_failure(Config, "digest", BuildError("a test failure"))
                result["failure"] = store.read_failure(Config) is not None
                store.clear_failure(Config)
                result["hint_owner"] = os.stat(hint).st_uid
        else:
            result["answer"] = c.cached_load_torch_cpp_extension("adv_ext", sources).answer()
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(result))
"""


@pytest.mark.slow
def test_team_cache_two_accounts_with_umask_022(world: Path, accounts: Callable[..., Account]) -> None:
    team = accounts.group()  # type: ignore[attr-defined]
    first, second = accounts(), accounts()
    require_python(first)
    root = world / "team-cache"
    root.mkdir()
    os.chown(root, 0, team.gr_gid)
    root.chmod(0o2770)
    sources = write_module(world / "src", functions={"answer": 42})
    env = {"CACHED_CPP_EXTENSION_SHARED_CACHE": "1", "CACHED_CPP_EXTENSION_BUILD_DIR": str(root)}

    def member(account: Account, step: str) -> dict[str, Any]:
        home = world / f"home-{account.name}"
        home.mkdir(exist_ok=True)
        os.chown(home, account.uid, account.gid)
        result = account.run([SYSTEM_PYTHON, "-c", textwrap.dedent(_MEMBER), json.dumps(sources), step],
                             env={**env, "HOME": str(home), "PYTHONPATH": f"{SITE_PACKAGES}{os.pathsep}{REPO}"},
                             groups=(team.gr_gid,), umask=0o022, timeout=600)
        found = last_json(result.stdout)
        assert isinstance(found, dict), result.stderr
        return found

    assert member(first, "load") == {"answer": 42}
    module_folder = root / NAME
    (artifact,) = (module_folder / "artifacts").iterdir()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (artifact / "manifest.json", artifact / f"{NAME}.so",
                                                              *module_folder.glob("latest-*"))}
    assert set(modes.values()) <= {0o664, 0o775}, {k: oct(v) for k, v in modes.items()}
    assert member(second, "load") == {"answer": 42}, "the second member trusts the first one's binary"
    locked = member(second, "lock")
    assert locked == {"failure": True, "hint_owner": second.uid}
    write_module(world / "src", functions={"answer": 43})
    assert member(second, "load") == {"answer": 43}, "the second member rebuilds after an edit"
    assert member(first, "load") == {"answer": 43}


# --------------------------------------------------------------------------- modes

@pytest.mark.parametrize("shared", [False, True])
def test_published_files_have_exact_modes_whatever_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             shared: bool) -> None:
    monkeypatch.setenv("CACHED_CPP_EXTENSION_SHARED_CACHE", "1" if shared else "0")
    source = tmp_path / "source"
    source.write_bytes(b"x")
    old = os.umask(0o077)
    try:
        _fsutil.atomic_write_bytes(str(tmp_path / "hint"), b"x")
        _fsutil.atomic_write_bytes(str(tmp_path / "lock-like"), b"x", mode=_trust.file_mode())
        _fsutil.atomic_copy(str(source), str(tmp_path / "binary"))
        _fsutil.make_dirs(str(tmp_path / "a" / "b"), _trust.folder_mode())
    finally:
        os.umask(old)
    modes = {name: oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) for name in ("hint", "lock-like", "binary",
                                                                                   "a/b")}
    expected = ({"hint": "0o664", "lock-like": "0o660", "binary": "0o775", "a/b": "0o2770"} if shared else
                {"hint": "0o644", "lock-like": "0o600", "binary": "0o755", "a/b": "0o700"})
    assert modes == expected


# --------------------------------------------------------------------------- the default root and BUILD_DIR

@pytest.mark.parametrize("planted", ["symlink", "foreign_folder"])
def test_planted_default_root_in_a_shared_folder_is_refused(world: Path, accounts: Callable[..., Account],
                                                            tmp_path: Path, compilers: CompilerLog,
                                                            monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    attacker = accounts()
    shared = world / "like-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    theirs = world / "theirs"
    theirs.mkdir()
    os.chown(theirs, attacker.uid, attacker.gid)
    theirs.chmod(0o777)  # so that a write through the link would succeed
    target = shared / _root.DEFAULT_ROOT_NAME
    argv = ["ln", "-s", str(theirs), str(target)] if planted == "symlink" else ["mkdir", "-m", "777", str(target)]
    made = attacker.run(argv)
    assert made.returncode == 0, made.stderr
    monkeypatch.chdir(shared)
    _loader._memo.clear()
    with pytest.raises(UnsafeCacheError, match="symbolic link" if planted == "symlink" else "owned by uid") as info:
        c.cached_load_torch_cpp_extension(NAME, write_module(tmp_path / "src"))
    assert "CACHED_CPP_EXTENSION_BUILD_DIR" in str(info.value)
    assert list(theirs.iterdir()) == [] and compilers.calls() == []
    if planted == "foreign_folder":
        assert list(target.iterdir()) == []


def test_own_default_root_in_a_shared_folder_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "like-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / _root.DEFAULT_ROOT_NAME).mkdir(mode=0o700)
    monkeypatch.chdir(shared)
    assert _root.resolve_root(None) == str(shared / _root.DEFAULT_ROOT_NAME)


@pytest.mark.parametrize("case", ["dev_null", "file", "newline"])
@pytest.mark.parametrize("through", ["environment", "argument"])
def test_build_dir_that_is_not_a_folder(tmp_path: Path, compilers: CompilerLog, monkeypatch: pytest.MonkeyPatch,
                                        case: str, through: str) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    value = {"dev_null": "/dev/null", "file": str(a_file), "newline": str(tmp_path / "a\nb")}[case]
    source = "CACHED_CPP_EXTENSION_BUILD_DIR" if through == "environment" else "build_directory"
    if through == "environment":
        monkeypatch.setenv(source, value)
    expected: type[Exception] = ValueError if case == "newline" else NotADirectoryError
    _loader._memo.clear()
    with pytest.raises(expected, match=source) as info:
        c.cached_load_torch_cpp_extension(NAME, write_module(tmp_path / "src"),
                                          build_directory=value if through == "argument" else None)
    assert ("line break" if case == "newline" else "not a folder") in str(info.value)
    assert a_file.read_text() == "keep" and compilers.calls() == []
    assert not (tmp_path / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "compilers",
                                                                                            "src"]


def test_root_is_checked_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    assert _root.resolve_root(root) == str(root)
    calls: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append("stat") or real_stat(*a, **k))
    monkeypatch.setattr(os, "lstat", lambda *a, **k: calls.append("lstat") or real_stat(*a, **k))
    started = time.perf_counter()
    for _ in range(1000):
        _root.resolve_root(root)
    assert calls == [] and time.perf_counter() - started < 0.5
