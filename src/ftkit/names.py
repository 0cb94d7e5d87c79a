"""Random name suffixes: names that stay unique when two runs start in the same second."""

from __future__ import annotations

import secrets
import string

__all__ = ["random_suffix"]

_ALPHABET = string.ascii_lowercase + string.digits


def random_suffix(length: int = 6) -> str:
    """Return ``length`` random lowercase letters and digits (6 give about 2 billion names).

    Args:
        length: How many characters.

    Returns:
        The suffix, valid in Azure ML resource names and in file names.
    """
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
