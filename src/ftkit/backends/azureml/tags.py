"""The tag ftkit puts on everything it creates in a workspace (``ftkit cleanup`` finds them by it).

A module of its own so that the pipeline, endpoint and backend modules share it without importing each other.
"""

from __future__ import annotations

__all__ = ["CREATED_BY_TAG"]

CREATED_BY_TAG = "ftkit.created_by"
