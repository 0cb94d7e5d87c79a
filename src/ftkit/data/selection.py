"""Which splits a build writes and which rows of each it keeps (values, no I/O)."""

from __future__ import annotations

import random
from typing import Any, Literal

import attrs
import numpy as np

from ..exceptions import Problem, ValidationError

__all__ = ["Purpose", "SplitSelection", "SplitSpec", "rows_for_percent"]

Purpose = Literal["train", "test", "score"]


def rows_for_percent(percent: float, n: int) -> int:
    """Rows in the first ``percent`` % of ``n`` rows, by Hugging Face's slicing rule.

    ``datasets`` turns ``split[0%:5%]`` into ``int(round(5 * n / 100))`` rows (Python's round, half to even),
    so ``first`` with a percent keeps exactly the rows the notebook kept.
    """
    return min(n, round(percent * n / 100))


def _check_percent(_: object, __: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0 < value <= 100:
        raise ValidationError(
            [Problem("data.percent", f"{value:g} is out of range: must be above 0 and at most 100", "e.g. 5")],
            "invalid data selection",
        )


def _check_rows(_: object, __: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:  # as the job file's data.rows: zero rows would build empty splits
        raise ValidationError(
            [Problem("data.rows", f"{value} is below the minimum 1", "give a number of rows, e.g. 1000")],
            "invalid data selection",
        )


@attrs.frozen(kw_only=True)
class SplitSelection:
    """How many rows of each split to keep, and which.

    Raises :class:`~ftkit.exceptions.ValidationError` for a percent outside (0, 100], rows below 1, or both.

    Attributes:
        percent: Keep this percent of each split (``int(round(percent * n / 100))`` rows, as ``datasets`` does).
        rows: Keep this many rows of each split (all of a smaller split). Not with ``percent``.
        sample: ``first`` keeps the first rows in stored order (the notebook's behaviour); ``random`` keeps a
            uniform sample drawn with ``seed``, the same on every machine and run, written in stored order.
        seed: The random sample's seed (each split draws from its own stream, seeded by ``seed`` and its name).
    """

    percent: float | None = attrs.field(default=None, validator=_check_percent)
    rows: int | None = attrs.field(default=None, validator=_check_rows)
    sample: Literal["first", "random"] = attrs.field(
        default="first", validator=attrs.validators.in_(("first", "random"))
    )
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.percent is not None and self.rows is not None:
            raise ValidationError(
                [Problem("data.rows", "percent and rows are both set", "give percent or rows, not both")],
                "invalid data selection",
            )

    def count(self, n: int) -> int:
        """The number of rows kept of a split of ``n`` rows."""
        if self.rows is not None:
            return min(self.rows, n)
        if self.percent is not None:
            return rows_for_percent(self.percent, n)
        return n

    def indices(self, split: str, n: int) -> Any | None:
        """The sorted row numbers kept of ``split`` (``n`` rows), or ``None`` for the first :meth:`count` rows."""
        k = self.count(n)
        if self.sample == "first" or k == n:
            return None
        # random.Random seeded with a str hashes it with SHA-512: the same stream on every platform and run.
        rng = random.Random(f"ftkit:{self.seed}:{split}")
        return np.sort(np.fromiter(rng.sample(range(n), k), np.int64, count=k))


@attrs.frozen
class SplitSpec:
    """A split to build and what the job uses it for.

    Attributes:
        name: The split's name in the source (``train_sft``).
        purpose: ``train`` and ``test`` splits must end with an assistant turn (SFT); the ``score`` split feeds the
            sample scoring request and only needs well-formed turns.
    """

    name: str
    purpose: Purpose = "train"

    @classmethod
    def infer(cls, name: str) -> SplitSpec:
        """Guess the purpose from the name: ``*gen*`` -> score, ``*train*`` -> train, else test."""
        if "gen" in name:
            return cls(name, "score")
        return cls(name, "train" if "train" in name else "test")
