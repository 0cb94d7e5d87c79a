"""SIGINT and SIGTERM, treated alike: stop at the next bytecode, clean up without being interrupted again.

A terminal's Ctrl-C sends SIGINT; ``timeout``, CI cancellation, ``docker stop`` and job schedulers send
SIGTERM, which Python's default handler turns into an immediate exit that runs no ``finally`` and no cleanup.
:func:`handle_signals` makes both raise :class:`Interrupted` (a :class:`KeyboardInterrupt`, so ``except
Exception`` blocks let it through and every context manager on the way out runs), and from then on holds
any further signal: the cleanup that the first one started (deleting endpoints, stopping a training job,
writing ``run.json``) runs to its end instead of being cut halfway by an impatient second Ctrl-C, which is
how a server process used to outlive the state that would let ``ftkit cleanup`` find it.

:func:`deferred` holds signals for a short critical section (spawning a process and recording its pid):
a signal that arrives inside it is raised when the section ends, never in the middle.

``ftkit``'s command line and :func:`ftkit.run` both enter :func:`handle_signals`; nesting is free.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

__all__ = ["Interrupted", "deferred", "handle_signals", "interrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process received SIGINT or SIGTERM.

    Attributes:
        signum: The signal's number.
        stage: The stage of the run it arrived in (set by the runner).
        cleaned: What was cleaned up because of it, one line each (set by the runner).
        left: What is still running or present, one line each with how to remove it (set by the runner).
        run_record: The ``run.json`` that records the interruption (set by the runner).
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.stage: str | None = None
        self.cleaned: list[str] = []
        self.left: list[str] = []
        self.run_record: Path | None = None

    @property
    def signal_name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by signal: 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    def report(self) -> str:
        """The one message a user sees: what arrived, when, what was cleaned and what is left."""
        where = f" during {self.stage}" if self.stage else ""
        lines = [f"interrupted by {self.signal_name}{where}"]
        lines += [f"  cleaned  {line}" for line in self.cleaned]
        lines += [f"  left     {line}" for line in self.left]
        if self.run_record is not None:
            lines.append(f"  record   {self.run_record}")
        return "\n".join(lines)


class _State:
    """Strictly private: the handlers' state (signals arrive in the main thread only)."""

    def __init__(self) -> None:
        self.depth = 0
        self.fired: int | None = None
        self.holding = 0
        self.pending: int | None = None


_state = _State()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state.fired is not None or _state.holding:
        # Cleaning up after the first signal, or inside a critical section: finish it first.
        if _state.pending is None:
            _state.pending = signum
        if _state.fired is not None:
            print(
                f"ftkit: {signal.Signals(signum).name} received while cleaning up; finishing the cleanup first",
                file=sys.stderr,
                flush=True,
            )
        return
    _state.fired = signum
    raise Interrupted(signum)


def interrupted() -> int | None:
    """Return the signal that interrupted the current :func:`handle_signals` block, or ``None``."""
    return _state.fired


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the block, then restore the previous handlers.

    Outside the main thread (where Python cannot install handlers) and inside another such block this
    changes nothing. After the first signal, further ones are held (and reported on stderr) so that the
    cleanup runs to its end.

    Yields:
        Nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _state.depth:  # nested (ftkit.run inside the command line): the outer block handles signals
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _handler)
    _state.depth, _state.fired, _state.pending, _state.holding = 1, None, None, 0
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.depth, _state.fired, _state.pending, _state.holding = 0, None, None, 0


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for a critical section; one that arrived is raised when it ends.

    Use it where being interrupted halfway would lose track of something: between starting a process and
    recording its pid, between claiming a name and writing what owns it.

    Yields:
        Nothing.
    """
    _state.holding += 1
    try:
        yield
    except BaseException:
        _state.holding -= 1
        raise
    _state.holding -= 1
    if not _state.holding and _state.pending is not None and _state.fired is None:
        signum, _state.pending = _state.pending, None
        _state.fired = signum
        raise Interrupted(signum)
