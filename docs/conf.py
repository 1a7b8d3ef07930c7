"""Sphinx configuration of rifscale's documentation site (``make docs``).

The API reference documents the public names as ``rifscale.NAME`` (``rifscale.__all__``),
never by module path: the modules are an implementation detail and will move. The
command-line reference is generated from rifscale.cli's argparse parser at build time
(docs/_ext/rifscale_cli.py), so it cannot go stale.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import rifscale  # noqa: E402

project = "rifscale"
author = "the rifscale developers"
copyright = "the rifscale developers, MIT licence"
release = version = rifscale.__version__

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_parser",
    "rifscale_cli",
]
exclude_patterns = ["_build", "_ext"]
root_doc = "index"

# Markdown pages: "#" headings get anchors up to level 3 so that pages can link to
# sections (`[text](design.md#4-validation-experiments)`).
myst_heading_anchors = 3

# Signatures without annotations: the types are in the numpydoc sections, and the
# annotations name private modules (rifscale.corpus.model.Corpus) that the reference does not
# document.
autodoc_typehints = "none"
autodoc_member_order = "bysource"

# numpydoc: members are listed by autodoc (:members:), not by numpydoc's autosummary
# tables; every documented object must document its parameters and returns, and show an
# example (warnings are errors in `make docs`).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = {
    "GL08",  # no docstring
    "SS01",  # no summary
    "PR01",  # a parameter not documented
    "PR02",  # a documented parameter that does not exist
    "RT01",  # no Returns section
    "EX01",  # no Examples section
}

# "--overwrite" stays two hyphens, quotes stay straight: the text is full of commands
smartquotes = False

html_theme = "furo"
html_title = f"rifscale {release}"
