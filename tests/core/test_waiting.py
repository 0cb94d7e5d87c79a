"""wait_for_job: ftkit's own status loop with a deadline and terminal states."""

from __future__ import annotations

from typing import Any

import pytest

from ftkit.backends.base import JobHandle
from ftkit.exceptions import JobFailedError, JobTimeoutError
from ftkit.testing import FakeClock
from ftkit.waiting import wait_for_job


class StatusScript:
    """A backend stand-in whose job walks through the given statuses, one per poll."""

    name = "scripted"

    def __init__(self, *statuses: str, error: str | None = None) -> None:
        self.statuses = list(statuses)
        self.polls = 0
        self.error = error

    def get_job(self, name: str) -> JobHandle:
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        return JobHandle(name=name, status=status, studio_url="https://studio/job", error=self.error)


def wait(backend: Any, clock: FakeClock, **kw: Any) -> JobHandle:
    return wait_for_job(backend, "job-1", clock=clock, sleep=clock.sleep, **kw)


def test_waits_through_states_and_reports_each_change_once() -> None:
    """NotStarted -> Running -> Completed: the callback sees each status once; polls are spaced."""
    backend = StatusScript("NotStarted", "Running", "Running", "Completed")
    clock = FakeClock()
    seen: list[str] = []
    handle = wait(backend, clock, poll_s=10.0, on_status=lambda h: seen.append(h.status))
    assert handle.status == "Completed"
    assert seen == ["NotStarted", "Running", "Completed"]
    assert clock.sleeps == [10.0, 10.0, 10.0]


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_failed_jobs_raise_with_name_status_and_url(status: str) -> None:
    """A failed or canceled job raises JobFailedError with its Studio URL and message."""
    with pytest.raises(JobFailedError) as info:
        wait(StatusScript("Running", status, error="CUDA out of memory"), FakeClock(), poll_s=1.0)
    assert info.value.status == status
    assert "https://studio/job" in str(info.value)
    assert "CUDA out of memory" in str(info.value)


def test_deadline_raises_timeout_without_oversleeping() -> None:
    """Past the deadline, JobTimeoutError; the last sleep is cut to the deadline."""
    clock = FakeClock()
    with pytest.raises(JobTimeoutError) as info:
        wait(StatusScript("Running"), clock, timeout_s=25.0, poll_s=10.0)
    assert clock.sleeps == [10.0, 10.0, 5.0]
    assert info.value.waited_s == 25.0


def test_progress_changes_are_reported_too() -> None:
    """A new progress line with the same status is a change worth telling the caller about."""

    class WithProgress(StatusScript):
        def get_job(self, name: str) -> JobHandle:
            handle = super().get_job(name)
            steps = {1: "step 10: loss 2.0", 2: "step 20: loss 1.5"}
            return JobHandle(name=name, status=handle.status, progress=steps.get(self.polls - 1))

    seen: list[str | None] = []
    wait(
        WithProgress("Running", "Running", "Running", "Completed"),
        FakeClock(),
        on_status=lambda h: seen.append(h.progress),
    )
    assert seen == [None, "step 10: loss 2.0", "step 20: loss 1.5", None]
