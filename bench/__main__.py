"""python -m bench: this library against torch.utils.cpp_extension.load, side by side.

Every scenario runs both tools on the same generated module (8 C sources, a declarations header
and a shared header included by half of them; the cold build uses the same code as C++ sources),
each call in a fresh process, repeated; compile counts come from logging compilers. A full run writes
bench/results/results.json, results.md and PNG plots; a --quick run writes them to a new temporary
folder (printed), so the committed full results stay as they are, unless --out names a folder.

    .venv/bin/python -m bench             # the full suite (about 15 minutes on 2 cores)
    .venv/bin/python -m bench --quick     # a smoke run: 2 sources, 1 repetition, small sizes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ._report import markdown, plot, write_json
from ._run import Workspace
from ._scenarios import Settings, run_all

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repetition (for tests)")
    parser.add_argument("--repeat", type=int, help="repetitions per scenario (default 5, --quick 1)")
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT}; with --quick, a new "
                                                  "temporary folder)")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.repeat < 1 or (not args.quick and args.repeat < 5):
        parser.error("--repeat: at least 5 (1 with --quick)")
    return args


def output_folder(args: argparse.Namespace) -> Path:
    """--out, else the committed results' folder for a full run, else a new temporary folder: a smoke run's
    numbers must never replace the full run's."""
    if args.out is not None:
        return Path(args.out)
    if args.quick:
        return Path(tempfile.mkdtemp(prefix="cpp_extension_tools_bench_quick_"))
    return DEFAULT_OUT


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = output_folder(args)
    settings = Settings(args.quick, args.repeat)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    log(f"results go to {out}")

    with tempfile.TemporaryDirectory(prefix="cpp_extension_tools_bench_") as scratch:
        rows = run_all(Workspace(Path(scratch)), settings, log)
    out.mkdir(parents=True, exist_ok=True)
    description = {"quick": args.quick, "repeat": args.repeat, "n_sources": settings.n_sources,
                   "workers": settings.workers, "seconds": round(time.monotonic() - started, 1)}
    write_json(out / "results.json", rows, description)
    table = markdown(rows, description)
    (out / "results.md").write_text(table)
    plots = plot(rows, out)
    print(table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {', '.join(p.name for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
