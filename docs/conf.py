"""Sphinx configuration of the admm-mpi documentation.

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
The CLI reference, the configuration reference, the solvers' settings tables and the benchmark
pages are written at build time by ``_ext/generated.py`` (into ``generated/`` and
``benchmarks/``, both ignored by git): nothing there is edited by hand.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))  # the package, when it is not installed

from admm_mpi import __version__  # noqa: E402

project = "admm-mpi"
author = "the admm-mpi authors"
copyright = "the admm-mpi authors, BSD-3-Clause"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "generated",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "generated/settings", "Thumbs.db", ".DS_Store"]

# Markdown (the pages in docs/ are plain Markdown, read as they are)
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

# API reference from the numpydoc docstrings
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# doctest: examples run with `sphinx-build -b doctest docs DIR`
doctest_global_setup = """
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
"""

html_theme = "alabaster"
html_title = f"admm-mpi {version}"
html_theme_options = {
    "description": "Neural networks trained by ADMM, without backpropagation, over MPI ranks",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path = []
