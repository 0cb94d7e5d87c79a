"""A clock for tests of anything that waits: job polling, long-running operations, retries."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock that moves only when slept on, and remembers every sleep.

    Pass it where ftkit takes a ``clock`` and a ``sleep`` (``JobRunner``, ``AzureMLBackend``,
    ``ftkit.waiting.wait_for_job``) so waits take no time and can be asserted::

        clock = FakeClock()
        ftkit.run(job, backend, clock=clock, sleep=clock.sleep)
        assert clock.sleeps == [30.0, 30.0]

    Attributes:
        now: The current time, in seconds.
        sleeps: Every duration slept, in order.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        """Return the current time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` at once."""
        self.sleeps.append(seconds)
        self.now += seconds
