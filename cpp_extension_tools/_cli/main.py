"""The ``cpp-extension-tools`` command line: argument parsing, dispatch and output formatting.

Each command is one :class:`Command` in ``COMMANDS``: its name, help text, a
function adding its arguments and a handler ``_cmd_<name>(args) -> int``.
Every command takes ``--json`` (also accepted before the command name): one
JSON document on stdout for scripts; without it, aligned text for people.
What the commands report is gathered elsewhere (_env/info.py); torch is
imported only by the commands that need it, so ``--help`` stays fast.

Exit status: 0 success, 1 failure (a :class:`CommandError`, or an invalid
setting), 2 usage error, 3 modules skipped by prune or clear, 130 interrupted,
141 output cut short (``| head``: the reader of stdout went away).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import _settings
from .._version import __version__
from .units import format_duration, format_size, parse_age, parse_size

__all__ = ["main"]

PROG = "cpp-extension-tools"


class CommandError(Exception):
    """An expected failure: reported as ``cpp-extension-tools: error: <message>``, without a traceback."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    handler: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


# -- abi ---------------------------------------------------------------------
def _cmd_abi(args: argparse.Namespace) -> int:
    torch = _import_torch()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    if args.json:
        _print_json({"cxx11_abi": abi})
    else:
        print(abi)
    return 0


# -- info --------------------------------------------------------------------
def _cmd_info(args: argparse.Namespace) -> int:
    _import_torch()  # fail with a clear message before gathering anything
    from .._env.info import gather_info

    info = gather_info()
    if _settings.REMOTE_CACHE.is_set():
        info["remote cache"] = _remote_call(lambda: _remote_inventory().remote_summary())
    if args.json:
        _print_json(info)
    else:
        print(_format_sections(info), end="")
    return 0


# What None means, by key, in the text output (the JSON keeps null); rows of _OMITTED_WHEN_NONE keys are left
# out instead (where a CUDA arch list comes from, when there is none; why CUDA is unavailable, when it is).
_NONE_TEXT = {"path": "not found", "version": "unknown", "march_native": "unknown",
              "model_name": "unknown", "cuda": "none (CPU-only build)", "arch_list": "none"}
_OMITTED_WHEN_NONE = frozenset({"arch_list_source", "unavailable_reason"})


def _format_sections(info: dict[str, Any]) -> str:
    sections = {name: list(_flatten(values)) for name, values in info.items()}
    width = max(len(key) for rows in sections.values() for key, _ in rows)
    blocks = []
    for name, rows in sections.items():
        blocks.append(name + "\n" + (format_table(rows, width=width, indent="  ") if rows else "  (none set)\n"))
    return "\n".join(blocks)


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """("cc path", "/usr/bin/cc") rows from {"cc": {"path": ...}}; values in words."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key} ")
        elif value is None and key in _OMITTED_WHEN_NONE:
            continue
        else:
            # "size_bytes" reads "size": the value says its unit.
            yield prefix + key.removesuffix("_bytes"), _human_value(key, value)


def _human_value(key: str, value: Any) -> str:
    """``value`` in words; never empty (an empty value reads as its None text)."""
    if value is None or value == "" or value == [] or value == {}:
        return _NONE_TEXT.get(key, "none")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_bytes") and isinstance(value, int):
        return f"{format_size(value)} ({value} bytes)"
    if key == "target" and isinstance(value, str):
        return _cuda_target_text(value)
    return str(value)


def _cuda_target_text(target: str) -> str:
    """_cuda.cuda_target()'s "arch_list:8.0 9.0" or "gpus:<names>[;visible=<devices>]" in words."""
    kind, _, rest = target.partition(":")
    if kind == "arch_list":
        return f"{rest or 'none'} (TORCH_CUDA_ARCH_LIST)"
    if kind != "gpus":
        return target
    names, _, visible = rest.partition(";visible=")
    text = ", ".join(names.split(",")) if names else "no NVIDIA GPU found"
    if ";visible=" in rest:
        text += f" (CUDA_VISIBLE_DEVICES={visible or 'empty'})"
    return text


# -- list --------------------------------------------------------------------
def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="only this module")
    parser.add_argument("--remote", action="store_true",
                        help="list the entries of the remote cache (CACHED_CPP_EXTENSION_REMOTE_CACHE) instead")


def _remote_inventory() -> Any:
    from .._remote import inventory

    return inventory


def _remote_call(action: Callable[[], Any]) -> Any:
    """Run a remote-cache action; its failure (no client, no answer) is a CommandError saying why."""
    from .._errors import RemoteClientMissingError
    from .._remote.client import RemoteUnavailable

    try:
        return action()
    except (RemoteUnavailable, RemoteClientMissingError) as error:
        url = _settings.REMOTE_CACHE.get()
        from .._remote.url import redacted

        raise CommandError(f"the remote cache {redacted(url) if url else ''} failed: {error}") from None


def _cmd_list_remote(args: argparse.Namespace) -> int:
    entries = _remote_call(lambda: _remote_inventory().list_entries(args.name))
    if args.json:
        _print_json({"remote": _remote_inventory().redacted_url(), "size_bytes": sum(e.size for e in entries),
                     "entries": [e.to_json() for e in entries]})
        return 0
    print(f"remote cache {_remote_inventory().redacted_url()}: {format_size(sum(e.size for e in entries))} in "
          f"{len(entries)} entries")
    if entries:
        print()
        print(format_columns(("MODULE", "CONFIGURATION", "SOURCES", "SIZE", "PUSHED BY", "REFRESHED"),
                             [(e.module, e.configuration, e.sources, format_size(e.size), e.host, _when(e.touched))
                              for e in entries]), end="")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.remote:
        return _cmd_list_remote(args)
    from .._cache.inventory import visible_modules

    root = _cache_root()
    modules = visible_modules(root, args.name)  # not those clear left with nothing but their lock files
    if args.name is not None and not modules:
        raise CommandError(f"no module {args.name!r} in the cache at {root}")
    if args.json:
        _print_json({"root": root, "size_bytes": sum(m.size for m in modules),
                     "modules": [m.to_json() for m in modules]})
        return 0
    print(f"cache root {root}: {format_size(sum(m.size for m in modules))} in {len(modules)} module(s)")
    busy = [m.name for m in modules if m.being_built]
    if busy:
        print(f"being built (their lock is held): {', '.join(busy)}")
    artifacts = [a for m in modules for a in m.artifacts]
    if artifacts:
        print()
        print(format_columns(("MODULE", "ARTIFACT", "SIZE", "BUILT", "LAST USED", "TORCH", "PYTHON", "CPU",
                              "CUDA ARCHS"), [_artifact_row(a) for a in artifacts]), end="")
    builds = [b for m in modules for b in m.builds]
    if builds:
        print()
        print(format_columns(("MODULE", "BUILD FOLDER", "SIZE", "LAST BUILD"),
                             [_build_row(b) for b in builds]), end="")
    _print_damage([*artifacts, *builds])
    return 0


def _print_damage(entries: list[Any]) -> None:
    """Why each damaged entry cannot be used (the tables only mark them)."""
    damaged = [e for e in entries if e.damaged]
    if damaged:
        print()
        print("".join(f"damaged {e.module}/{e.entry_id}: {e.damaged}\n" for e in damaged), end="")


def _build_row(build: Any) -> tuple[str, ...]:
    when = "damaged: deleted by the next prune" if build.damaged else _when(build.last_used)
    return (build.module, build.key16, format_size(build.size), when)


def _artifact_row(artifact: Any) -> tuple[str, ...]:
    built_for = artifact.built_for
    built = _when(artifact.built_at)
    if artifact.damaged:
        return (artifact.module, artifact.artifact_id, format_size(artifact.size), built,
                "-", "damaged: deleted by the next build or prune", "", "", "")
    return (artifact.module, artifact.artifact_id, format_size(artifact.size),
            f"{built} (in {format_duration(artifact.build_seconds)})", _when(artifact.last_used),
            str(built_for.get("torch") or "-"), str(built_for.get("python") or "-"),
            str(built_for.get("cpu") or "-"), str(built_for.get("cuda_archs") or "-"))


def _when(timestamp: float) -> str:
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
    except (OverflowError, ValueError, OSError):  # a damaged manifest's time
        return "?"


# -- prune and clear -----------------------------------------------------------
def _size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _age_argument(text: str) -> float:
    try:
        return parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count_argument(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number, 0 or more")
    return int(text)


def _add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size", type=_size_argument, metavar="SIZE",
                        help="delete the least recently used entries until the cache fits, e.g. 2G, 500M")
    parser.add_argument("--older-than", type=_age_argument, metavar="AGE",
                        help="delete entries unused for longer than AGE, e.g. 30d, 12h")
    parser.add_argument("--keep", type=_count_argument, metavar="N",
                        help="keep only the N most recently used artifacts of each module")
    parser.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")


def _cmd_prune(args: argparse.Namespace) -> int:
    from .._cache.prune import prune

    if args.max_size is None and args.older_than is None and args.keep is None:
        raise CommandError("nothing to prune by: give --max-size, --older-than or --keep", status=2)
    _settings.check()  # as the library does before it takes a lock: before anything is deleted
    report = prune(_cache_root(), max_size=args.max_size, older_than=args.older_than, keep=args.keep,
                   dry_run=args.dry_run)
    return _print_report(report, args.json)


def _add_clear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="only this module (default: every module)")
    parser.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    parser.add_argument("--remote", action="store_true",
                        help="delete the entries of the remote cache (CACHED_CPP_EXTENSION_REMOTE_CACHE) instead")


def _cmd_clear_remote(args: argparse.Namespace) -> int:
    inventory = _remote_inventory()
    action = inventory.list_entries if args.dry_run else inventory.delete_entries
    entries = _remote_call(lambda: action(args.name))
    verb = "would delete" if args.dry_run else "deleted"
    if args.json:
        _print_json({"remote": inventory.redacted_url(), "dry_run": args.dry_run,
                     "removed": [e.to_json() for e in entries]})
        return 0
    print(f"{verb} {len(entries)} entries ({format_size(sum(e.size for e in entries))}) from the remote cache "
          f"{inventory.redacted_url()}")
    return 0


def _cmd_clear(args: argparse.Namespace) -> int:
    if args.remote:
        return _cmd_clear_remote(args)
    from .._cache.inventory import list_modules
    from .._cache.prune import clear

    root = _cache_root()
    if args.name is not None and not list_modules(root, args.name):
        raise CommandError(f"no module {args.name!r} in the cache at {root}")
    _settings.check()  # as the library does before it takes a lock: before anything is deleted
    status = _print_report(clear(root, args.name, dry_run=args.dry_run), args.json)
    if args.name is None:
        _clear_shared_pch(root, args.dry_run, args.json)
    return status


def _clear_shared_pch(root: str, dry_run: bool, as_json: bool) -> None:
    from .._build.pch import clear_shared_pch

    count, size = clear_shared_pch(root, dry_run)
    if count and not as_json:
        print(f"{'would delete' if dry_run else 'deleted'} {count} shared precompiled header"
              f"{'' if count == 1 else 's'} ({format_size(size)})")


def _print_report(report: Any, as_json: bool) -> int:
    if as_json:
        _print_json(report.to_json())
    else:
        verb = "would delete" if report.dry_run else "deleted"
        rows = [(verb, "artifact" if hasattr(e, "artifact_id") else "build folder", f"{e.module}/{e.entry_id}",
                 format_size(e.size), "last used " + _when(e.last_used)) for e in report.removed]
        print(format_columns(None, rows), end="")
        print(report.summary())
    if report.failed_modules:
        print(f"{PROG}: error: could not lock {', '.join(report.failed_modules)} (see the warnings above)",
              file=sys.stderr)
        return 1
    return 3 if report.busy_modules else 0


# -- build ---------------------------------------------------------------------
def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="an importable module or package name (example_package), or the path of a .py "
                             "file or package folder; importing it builds its extensions")


def _cmd_build(args: argparse.Namespace) -> int:
    import logging
    import time

    from .._cache.inventory import list_modules

    _import_torch()
    _settings.check()  # every setting a build reads: one message for all invalid ones, before any import
    root = _cache_root()
    before = {a.path for m in list_modules(root) for a in m.artifacts}
    handler = logging.StreamHandler(sys.stderr)  # progress: cache hits, builds, lock waits
    handler.setFormatter(logging.Formatter("[cpp_extension_tools] %(message)s"))
    logger = logging.getLogger("cpp_extension_tools")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        for target in args.targets:
            _import_target(target, root)
    finally:
        logger.removeHandler(handler)
    seconds = time.perf_counter() - started
    built = [a for m in list_modules(root) for a in m.artifacts if a.path not in before]
    if args.json:
        _print_json({"root": root, "targets": args.targets, "seconds": round(seconds, 3),
                     "built": [{"module": a.module, "artifact": a.artifact_id, "size_bytes": a.size,
                                "build_seconds": a.build_seconds} for a in built]})
        return 0
    for artifact in built:
        print(f"built {artifact.module} ({artifact.artifact_id}, {format_size(artifact.size)}) "
              f"in {format_duration(artifact.build_seconds)}")
    print(f"{len(built)} module(s) built, the others were cached; {format_duration(seconds)} in all")
    print(f"cache root {root}")
    return 0


def _import_target(target: str, root: str) -> None:
    from .._errors import BuildError

    try:
        _run_target(target)
    except CommandError as error:
        if isinstance(error.__cause__, BuildError):  # e.g. "is not cached and building it is disabled"
            raise CommandError(f"{error} (looked in the cache root {root})", error.status) from error.__cause__
        raise


def _run_target(target: str) -> None:
    import importlib
    import os
    import runpy

    path = os.path.abspath(target)
    try:
        if target.endswith(".py") and os.path.isfile(path):
            runpy.run_path(path, run_name="__cpp_extension_tools_build__")  # not "__main__": no script body
        elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py")):
            sys.path.insert(0, os.path.dirname(path))
            importlib.import_module(os.path.basename(path))
        else:
            importlib.import_module(target)
    except ModuleNotFoundError as error:
        if error.name is not None and target.startswith(error.name):
            raise CommandError(f"cannot import {target!r}: {error}; give an importable module name, "
                               "or the path of a .py file or package folder") from error
        raise CommandError(f"importing {target!r} failed: {error}") from error
    except Exception as error:  # the target's own failure (a BuildError, an ImportError...): say which
        raise CommandError(f"importing {target!r} failed: {type(error).__name__}: {error}") from error


def _cache_root() -> str:
    from .._cache.root import resolve_root

    return resolve_root(None)


# -- registry ----------------------------------------------------------------
COMMANDS: list[Command] = [
    Command("info", "show the environment builds depend on",
            "Show this library's version, torch, Python, the compilers, the CPU, CUDA and the cache root "
            "(its size and module count): everything a cache key depends on.", _cmd_info),
    Command("abi", "print torch's C++11 ABI flag (0 or 1)",
            "Print 1 when torch was built with the C++11 ABI (_GLIBCXX_USE_CXX11_ABI=1), else 0; "
            "for build scripts that link other C++ code against torch.", _cmd_abi),
    Command("list", "list cached modules and artifacts",
            "List each module in the cache root (CACHED_CPP_EXTENSION_BUILD_DIR): its artifacts with size, "
            "build and last-use times and what they were built for, and its build folders. With --remote, the "
            "remote cache's entries of this library instead.",
            _cmd_list, _add_list_arguments),
    Command("prune", "delete least recently used cache entries",
            "Delete artifacts and build folders, least recently used first: those unused for longer than "
            "--older-than, those beyond the --keep most recent of each module, then the oldest until the "
            "cache fits --max-size. Modules being built are skipped (exit status 3). Binaries that running "
            "processes have loaded keep working.", _cmd_prune, _add_prune_arguments),
    Command("clear", "delete every cache entry (of one module)",
            "Delete all artifacts, build folders, hints and failure records of every module (or NAME), "
            "waiting up to 10 s for a build in progress. Lock files stay (deleting a lock another process "
            "holds would split it). With --remote, the remote cache's entries of this library instead.",
            _cmd_clear, _add_clear_arguments),
    Command("build", "fill the cache ahead of time",
            "Import each TARGET, which builds (or finds cached) every extension it loads, in this "
            "environment and cache root: run it in a container image build, or before starting many "
            "workers. With a remote cache configured, what it builds is pushed there too, for the cluster.",
            _cmd_build, _add_build_arguments),
]


# -- parsing and output ------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Inspect and manage the cache of PyTorch C/C++/CUDA extensions.")
    parser.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print this library's version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description)
        # SUPPRESS: an absent per-command flag must not override a --json given before the command.
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print one JSON document (indent 2, sorted keys), for scripts")
        command.add_arguments(sub)
        sub.set_defaults(handler=command.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed by argparse
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it would print a traceback
        return status
    except CommandError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    except _settings.SettingError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS


BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE, as for a program the signal ends (`ls | head`)


def _silence_stdout() -> None:
    """After the reader of stdout went away: later writes (the flush at exit) go nowhere, silently."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError) as error:  # stdout is no file descriptor (embedded use)
        print(f"{PROG}: {error}", file=sys.stderr)


def format_table(rows: Iterable[tuple[str, str]], width: int | None = None, indent: str = "") -> str:
    """Two columns, keys left-aligned and padded to ``width`` (default: the longest key), two spaces apart."""
    rows = list(rows)
    width = max((len(key) for key, _ in rows), default=0) if width is None else width
    return "".join(f"{indent}{key:<{width}}  {value}\n" for key, value in rows)


def format_columns(headers: tuple[str, ...] | None, rows: Iterable[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart, with an optional header line; no trailing spaces."""
    table = ([headers] if headers else []) + [tuple(row) for row in rows]
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in table)


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise CommandError(f"torch cannot be imported ({error}); install PyTorch in this environment") from error
    return torch
