"""Sphinx configuration of the bertjax docs (built by `tests/test_docs.py` with -W -n)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "bertjax"
author = "the bertjax authors"
copyright = "2026, the bertjax authors"

extensions = [
    "myst_nb",                 # Markdown pages and the notebooks (committed outputs, never executed)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",     # the Google-style "Args:" / "Returns:" / "Raises:" docstrings
    "bertjax_docs",            # the generated pages: activation sites, CLI, API, notebooks
]

html_theme = "furo"
html_title = "bertjax"
exclude_patterns = ["README.md", "_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"      # render what the notebooks hold; tests/test_notebooks.py runs them
nb_output_stderr = "show"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Strict cross-references (-n): every reference to bertjax must resolve; types of other libraries
# (jax.Array, np.ndarray, ...) have no inventory offline and are not checked.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!bertjax\b).*")]
suppress_warnings = ["myst.xref_missing"] if os.environ.get("BERTJAX_DOCS_LAX") else []
