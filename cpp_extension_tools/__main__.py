"""``python -m cpp_extension_tools``: the command line (see _cli)."""

from __future__ import annotations

from ._cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
