"""Names ftkit gives what it creates: random suffixes (unique when two runs start in the same second), endpoints."""

from __future__ import annotations

import re
import secrets
import string

__all__ = ["endpoint_name", "random_suffix"]

_ALPHABET = string.ascii_lowercase + string.digits


def random_suffix(length: int = 6) -> str:
    """Return ``length`` random lowercase letters and digits (6 give about 2 billion names).

    Args:
        length: How many characters.

    Returns:
        The suffix, valid in Azure ML resource names and in file names.
    """
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def endpoint_name(job_name: str, suffix: str) -> str:
    """Return an online endpoint's name for a run of ``job_name``: Azure ML's rules, unique with ``suffix``.

    Azure ML wants 3-32 characters, letters, digits and hyphens, starting with a letter, unique in the region;
    the local backend takes the same names.

    Args:
        job_name: The job's name (any characters; others become hyphens).
        suffix: What makes it unique (:func:`random_suffix`).

    Returns:
        ``{job name, cut to fit}-{suffix}``.
    """
    base = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-") or "ftkit"
    if not base[0].isalpha():
        base = f"ft-{base}"
    return f"{base[: 31 - len(suffix)].rstrip('-')}-{suffix}"
