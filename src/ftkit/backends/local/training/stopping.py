"""Stopping a run in the phases that have nothing to keep: loading the model, tokenising, evaluating.

A cancel (SIGTERM in a worker) calls :func:`stop_now`; while :func:`~ftkit.backends.local.training.train` is in
one of those phases it raises :class:`StopRequested` at once. Steps and checkpoint writes are never cut short.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ranks import Ranks

__all__ = ["StopRequested", "interruptible", "stop_now"]


class StopRequested(BaseException):
    """A stop request that arrived while training was in a phase with nothing to checkpoint (see :func:`stop_now`).

    A ``BaseException``, as ``KeyboardInterrupt`` is: raised from a signal handler inside library code, it must
    not be swallowed by that code's ``except Exception``.
    """


_INTERRUPTIBLE = {"now": False}
"""Whether :func:`train` is, in this process's main thread, in a phase a stop may cut short (loading the model,
tokenising, evaluating): nothing of it needs to be kept, so it need not run to its end first."""


def stop_now() -> None:
    """Raise :class:`StopRequested` if :func:`train` is in a phase a stop may cut short (a SIGTERM handler's call).

    Model loading and tokenisation are single library calls that can take minutes with a real model; polling a
    flag between them would leave a cancel waiting that long. A signal handler runs between Python bytecodes, so
    raising from it stops them within moments. Steps and checkpoint writes are never cut: they finish first.
    """
    if _INTERRUPTIBLE["now"]:
        raise StopRequested


@contextlib.contextmanager
def interruptible(ranks: Ranks) -> Iterator[None]:
    """A phase :func:`stop_now` may cut short (one process only: ranks must stop together)."""
    if ranks.world != 1:
        yield
        return
    _INTERRUPTIBLE["now"] = True
    try:
        yield
    finally:
        _INTERRUPTIBLE["now"] = False
