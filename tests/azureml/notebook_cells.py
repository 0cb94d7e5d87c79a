"""Read the seed notebook's Python cells (``../shared/seed/FineTuning_MLSDK.pl.md``) for the notebook test."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

FENCE = re.compile(r"^[ \t]*```python[ \t]*\n(.*?)^[ \t]*```", re.S | re.M)


def python_cells(markdown: Path) -> list[str]:
    """Return the notebook's ```python blocks, dedented, in order."""
    text = markdown.read_text(encoding="utf-8")
    return [textwrap.dedent(block) for block in FENCE.findall(text)]
