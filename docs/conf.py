"""Sphinx configuration of the documentation site.

Built by the test command with warnings as errors:
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The API reference is generated from the docstrings; the specs, the
architecture and the benchmarks are the Markdown files beside this one.
"""

project = "stream-fabric"
author = "the stream-fabric authors"
copyright = "2026, the stream-fabric authors"
extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Links in the Markdown files that point outside docs/ (tests, sources)
# are references for readers of the repository, not pages of the site.
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]
html_theme = "alabaster"
html_title = "stream-fabric"
