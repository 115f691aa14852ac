"""Sphinx configuration: Markdown pages (myst-parser), the furo theme, the API reference from docstrings.

Build: ./dev.sh docs (or .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html).
Nothing is fetched at build or view time: no intersphinx, no Mermaid, no web fonts.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's cpp_extension_tools, for autodoc

from cpp_extension_tools import __version__  # noqa: E402

project = "cpp_extension_tools"
author = "cpp_extension_tools contributors"
copyright = "cpp_extension_tools contributors"
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"cpp_extension_tools {release}"
html_static_path: list[str] = []
