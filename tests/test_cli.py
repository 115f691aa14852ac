"""The command line (``python -m cpp_extension_tools``, the ``cpp-extension-tools`` script) and _units."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cpp_extension_tools import __version__, _cli, _environment_info
from cpp_extension_tools._units import format_size, parse_age, parse_size

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


# -- units ---------------------------------------------------------------------
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
