"""Sphinx configuration for ftkit's documentation (``nox -s docs``)."""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # document this checkout, not whatever ftkit is installed

project = "ftkit"
author = "The ftkit developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_heading_anchors = 3
html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["ftkit.css"]
# Published beside the pages, so editors can load it: `# yaml-language-server: $schema=.../jobfile.schema.json`.
html_extra_path = ["jobfile.schema.json"]
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = True
exclude_patterns = ["_build"]
# Azure and torch are optional at doc-build time; document ftkit's own objects only.
autodoc_mock_imports = ["torch", "transformers", "peft", "mlflow", "fastapi", "uvicorn", "matplotlib"]
suppress_warnings = ["myst.header", "myst.xref_missing"]


def _write_cli_reference(app: object) -> None:
    """Generate cli.md from the argparse parser, so the reference cannot drift from the code."""
    del app  # Sphinx passes it; the page depends on the parser alone
    from ftkit.cli.reference import markdown

    target = HERE / "cli.md"
    text = markdown()
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


def _attrs_defaults(app, what, name, obj, options, signature, return_annotation):  # type: ignore[no-untyped-def]
    """attrs factories show as ``=NOTHING`` in signatures; say what they are instead."""
    del app, what, name, obj, options  # the event's other arguments
    if signature and "NOTHING" in signature:
        signature = re.sub(r"=NOTHING\b", "=<factory>", signature)
    return signature, return_annotation


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("builder-inited", _write_cli_reference)
    app.connect("autodoc-process-signature", _attrs_defaults)
