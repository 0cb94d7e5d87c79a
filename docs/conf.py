"""Sphinx configuration for ftkit's documentation (``nox -s docs``)."""

project = "ftkit"
author = "The ftkit developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_heading_anchors = 3
html_theme = "furo"
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
# Azure and torch are optional at doc-build time; document ftkit's own objects only.
autodoc_mock_imports = ["torch", "transformers", "peft", "mlflow", "fastapi", "uvicorn", "matplotlib"]
suppress_warnings = ["myst.header", "myst.xref_missing"]
