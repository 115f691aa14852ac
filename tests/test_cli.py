"""The command line (``python -m cpp_extension_tools``, the ``cpp-extension-tools`` script) and _units."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from cpp_extension_tools import __version__
from cpp_extension_tools._cli import main as _cli
from cpp_extension_tools._cli.units import format_duration, format_size, parse_age, parse_size
from cpp_extension_tools._env import info as _environment_info
from tests.conftest import build_template_cache, write_module

ABI = str(int(torch._C._GLIBCXX_USE_CXX11_ABI))


def run_cli(*args: str, root: Path, env: dict[str, str] | None = None,
            program: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(root), **(env or {}))
    command = (program or [sys.executable, "-m", "cpp_extension_tools"]) + list(args)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=120)


def run_ok(*args: str, root: Path, env: dict[str, str] | None = None) -> str:
    result = run_cli(*args, root=root, env=env)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def info_json(root: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(run_ok("info", "--json", root=root, env=env))
    return info


# -- abi -----------------------------------------------------------------------
def test_abi_prints_torch_cxx11_abi_flag(tmp_path: Path) -> None:
    assert run_ok("abi", root=tmp_path) == ABI + "\n"


@pytest.mark.parametrize("args", [("abi", "--json"), ("--json", "abi")])
def test_abi_json(tmp_path: Path, args: tuple[str, ...]) -> None:
    assert json.loads(run_ok(*args, root=tmp_path)) == {"cxx11_abi": int(ABI)}


def test_console_script_runs_abi(tmp_path: Path) -> None:
    script = os.path.join(os.path.dirname(sys.executable), "cpp-extension-tools")
    if not os.path.exists(script):
        pytest.skip(f"{script} is not installed (pip install -e . creates it)")
    result = run_cli("abi", root=tmp_path, program=[script])
    assert (result.returncode, result.stdout) == (0, ABI + "\n"), result.stderr


# -- info ----------------------------------------------------------------------
def test_info_json_reports_torch_and_an_empty_cache(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    info = info_json(missing)
    assert info["library"]["version"] == __version__
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda"] == torch.version.cuda
    assert info["torch"]["cxx11_abi"] == int(ABI)
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cache"] == {"root": str(missing), "exists": False, "size_bytes": 0, "modules": 0}
    assert not missing.exists(), "info must not create the cache"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert info_json(empty)["cache"] == {"root": str(empty), "exists": True, "size_bytes": 0, "modules": 0}


def test_info_json_cache_size_is_the_bytes_of_the_files_and_links_follows_no_link(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 100_000)
    written = {"mod_a/artifacts/k1/mod_a.so": 5000, "mod_a/artifacts/k1/manifest.json": 321,
               "mod_a/.lock": 0, "mod_b/builds/k2/build.log": 1234, "stray-file": 7,
               "not-a-module/notes.txt": 11}  # a folder without a module's layout: counted in size only
    for relative, size in written.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"a" * size)
    (root / "mod_a" / "link-to-file").symlink_to(outside / "big.bin")
    (root / "link-to-folder").symlink_to(outside, target_is_directory=True)
    links = sum(os.lstat(root / name).st_size for name in ("mod_a/link-to-file", "link-to-folder"))

    cache = info_json(root)["cache"]
    assert cache == {"root": str(root), "exists": True, "size_bytes": sum(written.values()) + links,
                     "modules": 2}


def test_info_reports_environment_sections(tmp_path: Path) -> None:
    info = info_json(tmp_path, env={"TORCH_CUDA_ARCH_LIST": "8.0;9.0", "CACHED_CPP_EXTENSION_MAX_SIZE": "2G"})
    assert set(info) == {"library", "torch", "python", "compilers", "cpu", "cuda", "cache", "settings"}
    assert info["settings"] == {"CACHED_CPP_EXTENSION_MAX_SIZE": "2G"}
    assert info["compilers"]["cxx"]["path"] is not None and info["compilers"]["cxx"]["version"]
    assert info["cpu"]["fingerprint"]
    assert info["cuda"]["arch_list"] == "8.0;9.0"
    assert info["cuda"]["arch_list_source"] == "TORCH_CUDA_ARCH_LIST"
    assert info["cuda"]["available"] is (info["cuda"]["unavailable_reason"] is None)
    if torch.version.cuda is None:
        assert "CPU-only" in info["cuda"]["unavailable_reason"]


def test_info_human_output_shows_sections_torch_version_and_root(tmp_path: Path) -> None:
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "file").write_bytes(b"z" * 1536)
    output = run_ok("info", root=tmp_path)
    for section in ("library", "torch", "python", "compilers", "cpu", "cuda", "cache"):
        assert f"\n{section}\n" in f"\n{output}"
    assert torch.__version__ in output
    assert str(tmp_path) in output
    assert "1.5 KiB (1536 bytes)" in output
    assert not output.lstrip().startswith("{")


def test_info_with_a_missing_cxx_still_succeeds_and_says_not_found(tmp_path: Path) -> None:
    env = {"CXX": "no-such-compiler-xyz"}
    cxx = info_json(tmp_path, env=env)["compilers"]["cxx"]
    assert cxx == {"command": "no-such-compiler-xyz", "path": None, "version": None}
    lines = run_ok("info", root=tmp_path, env=env).splitlines()
    assert any(line.split()[:2] == ["cxx", "path"] and line.endswith("not found") for line in lines)


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "0,1"},
                                 {"TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX"}, {"CXX": "no-such-compiler-xyz"}],
                         ids=["default", "no-visible-devices", "visible-devices", "arch-list", "no-cxx"])
def test_info_prints_no_empty_field(tmp_path: Path, env: dict[str, str]) -> None:
    output = run_ok("info", root=tmp_path / "not-yet", env=env)
    for line in output.splitlines():
        assert not line.endswith((":", ": ", " ")), f"an empty field: {line!r}\n{output}"
        assert not line.startswith("  ") or len(line.split(None, 1)) == 2 or line == "  (none set)", line
    target = next(line.split(None, 1)[1] for line in output.splitlines() if line.split()[:1] == ["target"])
    assert not target.startswith(("gpus:", "arch_list:")), target
    if "TORCH_CUDA_ARCH_LIST" in env:
        assert target == "8.0 9.0+PTX (TORCH_CUDA_ARCH_LIST)"
    elif "CUDA_VISIBLE_DEVICES" in env:
        assert target.endswith(f"(CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES'] or 'empty'})")


# -- --version and usage errors ------------------------------------------------
def test_version_prints_the_library_version_and_exits_0(tmp_path: Path) -> None:
    result = run_cli("--version", root=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"cpp-extension-tools {__version__}\n", "")


# -- usage and errors ----------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["info"], ["abi"]])
def test_help_exits_0(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, "--help", root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: cpp-extension-tools {' '.join(command)}".rstrip())


@pytest.mark.parametrize("args", [["no-such-command"], [], ["abi", "--no-such-option"]])
def test_usage_errors_exit_2_with_a_message(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args, root=tmp_path)
    assert result.returncode == 2
    assert "cpp-extension-tools: error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_failure_prints_one_error_line_and_returns_1(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def no_torch() -> None:
        raise _cli.CommandError("torch cannot be imported")

    monkeypatch.setattr(_cli, "_import_torch", no_torch)
    assert _cli.main(["abi"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "cpp-extension-tools: error: torch cannot be imported\n")


def test_human_output_aligns_values_across_sections(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake = {"library": {"version": "9.9"},
            "cache": {"root": "/r", "exists": True, "size_bytes": 3 * 1024 * 1024, "modules": 4},
            "compilers": {"cc": {"path": None, "version": None}}}
    monkeypatch.setattr(_environment_info, "gather_info", lambda: fake)
    assert _cli.main(["info"]) == 0
    assert capsys.readouterr().out == (
        "library\n"
        "  version     9.9\n"
        "\n"
        "cache\n"
        "  root        /r\n"
        "  exists      yes\n"
        "  size        3.0 MiB (3145728 bytes)\n"
        "  modules     4\n"
        "\n"
        "compilers\n"
        "  cc path     not found\n"
        "  cc version  unknown\n")


# -- list, prune --dry-run, clear and build on a real cache -------------------------------------------------
NAME = "cli_listed"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding one real module, built once for the module."""
    return build_template_cache(tmp_path_factory.mktemp("cli-template"), NAME)


@pytest.fixture
def cache(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(template, root, symlinks=True)
    return root


def _artifact_folder(root: Path) -> Path:
    (artifact,) = (root / NAME / "artifacts").iterdir()
    return artifact


def _listing(root: Path) -> dict[str, Any]:
    listing: dict[str, Any] = json.loads(run_ok("list", "--json", root=root))
    return listing


def test_list_shows_each_artifacts_build_time(cache: Path) -> None:
    seconds = json.loads((_artifact_folder(cache) / "manifest.json").read_text())["build_seconds"]
    assert seconds > 0
    row = next(line for line in run_ok("list", root=cache).splitlines() if line.startswith(NAME))
    assert f"(in {format_duration(seconds)})" in row and "damaged" not in row
    (module,) = _listing(cache)["modules"]
    assert module["artifacts"][0]["build_seconds"] == seconds and module["being_built"] is False


@pytest.mark.parametrize("damage", ["truncated", "emptied", "missing", "manifest-unreadable"])
def test_list_marks_a_damaged_artifact_and_prune_deletes_it(cache: Path, damage: str) -> None:
    artifact = _artifact_folder(cache)
    binary = next(artifact.glob(f"{NAME}*.so"))
    if damage == "truncated":
        os.truncate(binary, binary.stat().st_size // 2)
    elif damage == "emptied":
        os.truncate(binary, 0)
    elif damage == "missing":
        binary.unlink()
    else:
        (artifact / "manifest.json").write_text('{"format": ')
    text = run_ok("list", root=cache)
    row = next(line for line in text.splitlines() if line.startswith(NAME) and artifact.name in line)
    assert "damaged" in row
    assert f"damaged {NAME}/{artifact.name}: " in text
    if damage in ("truncated", "emptied"):
        assert "its manifest says" in text
    (module,) = _listing(cache)["modules"]
    assert module["artifacts"][0]["damaged"]
    assert run_cli("prune", "--older-than", "30d", root=cache).returncode == 0  # damage goes whatever its age
    assert not artifact.exists()


_HOLDER = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def _lock_held(lock: Path) -> Iterator[None]:
    """Another process holds ``lock`` (as a build does) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_module_being_built_is_marked_and_prune_dry_run_skips_it(cache: Path) -> None:
    lock = cache / NAME / ".lock"
    artifact = _artifact_folder(cache)
    with _lock_held(lock):
        assert f"being built (their lock is held): {NAME}" in run_ok("list", root=cache)
        assert _listing(cache)["modules"][0]["being_built"] is True
        dry = run_cli("prune", "--keep", "0", "--dry-run", root=cache)
        assert dry.returncode == 3, dry.stdout + dry.stderr
        assert "would delete" not in dry.stdout and f"skipped (being built): {NAME}" in dry.stdout
        report = json.loads(run_cli("prune", "--keep", "0", "--dry-run", "--json", root=cache).stdout)
        assert (report["removed"], report["busy_modules"]) == ([], [NAME])
        assert "being built" in run_ok("list", root=cache)  # listing took and gave back nothing of the lock
    assert artifact.exists() and lock.is_file()
    assert "being built" not in run_ok("list", root=cache)
    assert _listing(cache)["modules"][0]["being_built"] is False
    dry = run_ok("prune", "--keep", "0", "--dry-run", root=cache)
    assert f"would delete  artifact  {NAME}/{artifact.name}" in dry and artifact.exists()


def test_list_never_creates_or_deletes_a_lock_file(cache: Path) -> None:
    lock = cache / NAME / ".lock"
    lock.unlink()
    assert "being built" not in run_ok("list", root=cache)
    assert not lock.exists()
    lock.touch()
    run_ok("list", root=cache)
    assert lock.is_file()


def test_a_cleared_module_is_not_listed_but_its_lock_file_stays(cache: Path) -> None:
    run_ok("clear", NAME, root=cache)
    assert (cache / NAME / ".lock").is_file()
    assert run_ok("list", root=cache).splitlines() == [f"cache root {cache}: 0 B in 0 module(s)"]
    assert _listing(cache)["modules"] == []
    assert info_json(cache)["cache"]["modules"] == 0
    named = run_cli("list", NAME, root=cache)
    assert named.returncode == 1 and str(cache) in named.stderr
    assert run_cli("clear", NAME, root=cache).returncode == 0  # clearing it again is no error
    (cache / NAME / "failure-0123456789abcdef.json").write_text("{}")  # something in it again: listed
    assert [m["name"] for m in _listing(cache)["modules"]] == [NAME]


def test_build_names_the_cache_root_it_filled_and_the_one_a_refusal_looked_in(tmp_path: Path) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 3})
    target = tmp_path / "uses_it.py"
    target.write_text("from cpp_extension_tools import cached_load_torch_cpp_extension\n"
                      f"cached_load_torch_cpp_extension('cli_built', {sources!r})\n")
    root = tmp_path / "filled"
    lines = run_ok("build", str(target), root=root).splitlines()
    assert lines[0].startswith("built cli_built (") and lines[-1] == f"cache root {root}"
    assert json.loads(run_ok("build", str(target), "--json", root=root))["root"] == str(root)
    empty = tmp_path / "empty"
    refused = run_cli("build", str(target), root=empty, env={"CACHED_CPP_EXTENSION_DISABLE_JIT": "1"})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert "is not cached" in line and f"cache root {empty}" in line


# -- output into a reader that stops early ---------------------------------------------------------------
def _many_entries(root: Path) -> None:
    artifacts = root / "many" / "artifacts"
    for i in range(3000):  # far more output than a pipe holds
        (artifacts / f"{i:016x}-{i:016x}").mkdir(parents=True)


@pytest.mark.parametrize("command", ["list", "info"])
def test_output_into_head_ends_quietly(tmp_path: Path, command: str) -> None:
    _many_entries(tmp_path)
    env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(tmp_path))
    script = (f"{sys.executable} -m cpp_extension_tools {command} | head -1; "
              'echo "status ${PIPESTATUS[0]}" >&2')
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith(f"cache root {tmp_path}: " if command == "list" else "library\n")
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr in ("status 0\n", "status 141\n"), result.stderr
    if command == "list":
        assert result.stderr == "status 141\n"  # more than a pipe holds: the writer saw the reader go


@pytest.mark.parametrize("command", ["list", "info", "abi"])
def test_output_into_a_closed_pipe_exits_141_without_a_traceback(tmp_path: Path, command: str) -> None:
    env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(tmp_path))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before anything was written
    try:
        result = subprocess.run([sys.executable, "-m", "cpp_extension_tools", command], env=env, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


# -- units ---------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0.0 s"), (0.04, "0.0 s"), (1.24, "1.2 s"), (59.9, "59.9 s"), (59.96, "1 min 0 s"), (125.0, "2 min 5 s"),
    (3599.4, "59 min 59 s"), (3600.0, "1 h 0 min"), (3780.0, "1 h 3 min"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_format_duration_rejects_what_is_no_duration(seconds: float) -> None:
    with pytest.raises(ValueError):
        format_duration(seconds)


@pytest.mark.parametrize(("n_bytes", "text"), [
    (0, "0 B"), (1, "1 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (int(23.4 * 2**20), "23.4 MiB"), (int(1.2 * 2**30), "1.2 GiB"), (2**40, "1.0 TiB"),
    (2**20 - 1, "1.0 MiB"), (5 * 2**60, "5120.0 PiB"),
])
def test_format_size(n_bytes: int, text: str) -> None:
    assert format_size(n_bytes) == text


def test_format_size_rejects_negative() -> None:
    with pytest.raises(ValueError, match="-1"):
        format_size(-1)


@pytest.mark.parametrize(("text", "n_bytes"), [
    ("123", 123), ("0", 0), ("123b", 123), ("100k", 102_400), ("100K", 102_400), ("100KB", 102_400),
    ("500M", 500 * 2**20), ("2G", 2 * 2**30), ("2Gi", 2 * 2**30), ("1.5GiB", 3 * 2**29),
    ("1.5 GiB", 3 * 2**29), (" 7 mib ", 7 * 2**20), ("1T", 2**40), (".5k", 512),
])
def test_parse_size(text: str, n_bytes: int) -> None:
    assert parse_size(text) == n_bytes


@pytest.mark.parametrize("n_bytes", [0, 1, 999, 1024, 1536, 10**6, 123_456_789, 5 * 2**30 + 12345, 2**45])
def test_parse_size_reads_format_size(n_bytes: int) -> None:
    # One decimal of the unit: exact below 1 KiB, within 5% above.
    assert parse_size(format_size(n_bytes)) == pytest.approx(n_bytes, rel=0.05, abs=0)


@pytest.mark.parametrize("text", ["", "abc", "-5M", "5X", "5 M B", "1e3", "M", "1.2.3k", "5MiBs", "9" * 400 + "P"])
def test_parse_size_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_size(text)
    assert repr(text) in str(excinfo.value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("45m", 2700.0), ("12h", 43_200.0), ("30d", 2_592_000.0), ("2w", 1_209_600.0),
    ("1.5h", 5400.0), ("10", 10.0), ("3D", 259_200.0), (" 5 m ", 300.0),
])
def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "10y", "-1d", "1 day", "1e3s", "9" * 400 + "w"])
def test_parse_age_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_age(text)
    assert repr(text) in str(excinfo.value)
