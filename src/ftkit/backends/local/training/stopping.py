"""Stop requests while training is busy with something other than a step, on one process or on torchrun ranks.

A stop (SIGTERM to the worker, ``ftkit job cancel``) must be honoured within moments in every phase of
:func:`~ftkit.backends.local.training.train`, not only between steps:

- **Loading and tokenising** are single library calls that can take minutes and have nothing to keep.
  :func:`stop_now` (a signal handler's call) raises :class:`StopRequested` inside them at the next bytecode.
  On several ranks each rank is cut on its own (:func:`watch` turns the worker's stop file into a
  :func:`stop_now` in the rank's main thread), and :func:`loading` makes them agree when the phase ends, before
  the first collective of what follows: either all go on or all stop, and none waits in a collective for a rank
  that left.
- **Evaluations** have nothing to keep either. One process is cut short like a load; ranks are not, since an
  evaluation's forward passes are collectives (FSDP gathers the weights): they agree between batches instead
  (:func:`agreed`, one tiny all-reduce on the CPU group per batch).
- **A checkpoint write** is never cut (it is what a resumed run starts from): it finishes, and the ranks agree
  right after it whether to stop, so a stop that arrived meanwhile ends the run at that checkpoint.

Test-only hook: with ``FTKIT_TEST_PAUSE`` set to ``load`` or ``checkpoint`` (never set by ftkit, only by its own
tests), :func:`pause_for_tests` makes that phase last until a stop is asked (at most ``FTKIT_TEST_PAUSE_S`` seconds,
600 by default), so that a test can stop a real run there deterministically. In ``load`` the pause is cut short as
a real load is; in ``checkpoint`` it waits for the request and the write then finishes, as a slow write would.
Unset, it costs one environment lookup per model load and checkpoint.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ranks import Ranks

__all__ = [
    "StopRequested",
    "agreed",
    "asked",
    "evaluating",
    "loading",
    "pause_for_tests",
    "requested",
    "stop_now",
    "watch",
]


class StopRequested(BaseException):
    """A stop request that arrived while training was in a phase with nothing to checkpoint (see :func:`stop_now`).

    A ``BaseException``, as ``KeyboardInterrupt`` is: raised from a signal handler inside library code, it must
    not be swallowed by that code's ``except Exception``.
    """


_STATE = {"interruptible": False, "requested": False}
"""Whether this process's main thread is in a phase a stop may cut short (loading, tokenising, a one-process
evaluation), and whether a stop was asked of this process (:func:`stop_now`, :func:`watch`)."""


def stop_now() -> None:
    """Note a stop request; raise :class:`StopRequested` if training is in a phase a stop may cut short.

    A signal handler's call. Model loading and tokenisation are single library calls that can take minutes with
    a real model; polling a flag between them would leave a cancel waiting that long. A signal handler runs
    between Python bytecodes, so raising from it stops them within moments. Steps and checkpoint writes are
    never cut: they finish first.
    """
    _STATE["requested"] = True
    if _STATE["interruptible"]:
        raise StopRequested


def requested() -> bool:
    """Whether a stop was asked of this process (by :func:`stop_now` or :func:`watch`)."""
    return _STATE["requested"]


def asked(should_stop: Callable[[], bool] | None) -> bool:
    """Whether ``should_stop`` (``train``'s poll, possibly absent) says stop."""
    return bool(should_stop is not None and should_stop())


@contextlib.contextmanager
def loading(ranks: Ranks, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """A phase with no collective inside (loading, tokenising) that :func:`stop_now` may cut short on every rank.

    One process: :class:`StopRequested` goes on up. Several ranks: a rank cut short waits at the end of the
    phase for the others, and all raise :class:`StopRequested` together if any was cut or asked (one all-reduce).
    """
    cut = False
    _STATE["interruptible"] = True
    try:
        yield
    except StopRequested:
        _STATE["interruptible"] = False  # no second cut while this one is handled
        if ranks.world == 1:
            raise
        cut = True
    finally:
        _STATE["interruptible"] = False
    if ranks.world > 1 and ranks.agree(cut or asked(should_stop)):
        raise StopRequested


@contextlib.contextmanager
def evaluating(ranks: Ranks) -> Iterator[None]:
    """An evaluation: :func:`stop_now` cuts it short on one process; ranks agree between batches (:func:`agreed`)."""
    if ranks.world != 1:  # its forward passes are collectives: one rank leaving would leave the others waiting
        yield
        return
    _STATE["interruptible"] = True
    try:
        yield
    finally:
        _STATE["interruptible"] = False


def agreed(ranks: Ranks, should_stop: Callable[[], bool] | None) -> Callable[[], None]:
    """A check between evaluation batches: raise :class:`StopRequested` on every rank if any rank is asked."""

    def check() -> None:
        if ranks.agree(asked(should_stop)):
            raise StopRequested

    return check


def watch(should_stop: Callable[[], bool], every_s: float = 0.2) -> Callable[[], bool]:
    """A rank's watch over a stop request it cannot receive as a signal (the worker's stop file, its death).

    A daemon thread polls ``should_stop``; once it is true, the rank's main thread gets :func:`stop_now` (as
    SIGUSR1's handler, through ``_thread.interrupt_main``: no real signal, so no system call is interrupted).
    Call it in the main thread.

    Returns:
        A cheap poll of the same request, for ``train``'s ``should_stop``.
    """
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: stop_now())

    def poll() -> None:
        while not should_stop():
            time.sleep(every_s)
        _STATE["requested"] = True
        _thread.interrupt_main(signal.SIGUSR1)

    threading.Thread(target=poll, name="ftkit-stop-watch", daemon=True).start()
    return requested


def pause_for_tests(phase: str) -> None:
    """Test-only: make ``phase`` last until a stop is asked, when ``FTKIT_TEST_PAUSE`` names it (see the module)."""
    if os.environ.get("FTKIT_TEST_PAUSE") != phase:
        return
    deadline = time.monotonic() + float(os.environ.get("FTKIT_TEST_PAUSE_S", "600"))
    while not _STATE["requested"] and time.monotonic() < deadline:
        time.sleep(0.05)
