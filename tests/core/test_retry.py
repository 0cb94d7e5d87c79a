"""ftkit's one retry policy: transient errors only, bounded attempts, Retry-After, test mode."""

from __future__ import annotations

import pytest

import ftkit
from ftkit.exceptions import AuthError, NotFoundError, QuotaError, TransientBackendError, ValidationError
from ftkit.retry import MAX_ATTEMPTS, RetryPolicy, call


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class TestRetries:
    def test_transient_errors_are_retried_until_success(self) -> None:
        """Two transient failures, then success: three attempts."""
        fn = Flaky(TransientBackendError("503"), TransientBackendError("503"))
        assert call(fn) == "ok"
        assert fn.calls == 3

    def test_attempts_never_exceed_the_ceiling(self) -> None:
        """A call that always fails transiently is attempted MAX_ATTEMPTS times, then re-raises."""
        fn = Flaky(*[TransientBackendError("503") for _ in range(10)])
        with pytest.raises(TransientBackendError):
            call(fn)
        assert fn.calls == MAX_ATTEMPTS == 4

    @pytest.mark.parametrize(
        "error",
        [
            AuthError("no credential"),
            NotFoundError("gone"),
            QuotaError("OutOfQuota"),
            ValidationError([]),
            RuntimeError("bug"),
        ],
    )
    def test_other_errors_are_not_retried(self, error: Exception) -> None:
        """Auth, not found, quota, validation and unknown errors fail on the first attempt."""
        fn = Flaky(error)
        with pytest.raises(type(error)):
            call(fn)
        assert fn.calls == 1

    def test_policy_can_lower_attempts_but_not_raise_them(self) -> None:
        """RetryPolicy(attempts=2) makes two attempts; more than MAX_ATTEMPTS is refused."""
        fn = Flaky(*[TransientBackendError("x") for _ in range(5)])
        with pytest.raises(TransientBackendError):
            call(fn, policy=RetryPolicy(attempts=2))
        assert fn.calls == 2
        with pytest.raises(ValueError, match="attempts"):
            RetryPolicy(attempts=5)

    def test_on_retry_is_told_each_failed_attempt(self) -> None:
        """on_retry sees the attempt number and the error before every retry."""
        seen: list[int] = []
        call(Flaky(TransientBackendError("a"), TransientBackendError("b")), on_retry=lambda n, e: seen.append(n))
        assert seen == [1, 2]


class TestWaits:
    def test_retry_after_is_honoured_outside_test_mode(self) -> None:
        """Outside test mode, the wait is at least the service's Retry-After."""
        slept: list[float] = []
        with ftkit.set_testing(False):
            call(Flaky(TransientBackendError("429", retry_after=7.0)), sleep=slept.append)
        assert len(slept) == 1
        assert slept[0] >= 7.0

    def test_a_retry_after_past_the_time_budget_gives_up_at_once(self) -> None:
        """Sleeping past the total time budget is pointless: ftkit re-raises instead."""
        slept: list[float] = []
        fn = Flaky(TransientBackendError("429", retry_after=600.0))
        with ftkit.set_testing(False), pytest.raises(TransientBackendError):
            call(fn, policy=RetryPolicy(timeout_s=60.0), sleep=slept.append)
        assert fn.calls == 1
        assert slept == []

    def test_testing_mode_removes_waits(self) -> None:
        """In test mode nothing is slept, even with Retry-After."""
        slept: list[float] = []
        call(Flaky(TransientBackendError("429", retry_after=30.0)), sleep=slept.append)
        assert slept == [0.0]


class TestTestingSwitch:
    def test_set_testing_restores_previous_state(self) -> None:
        """set_testing works as a context manager and restores what was there."""
        assert ftkit.is_testing()
        with ftkit.set_testing(False):
            assert not ftkit.is_testing()
        assert ftkit.is_testing()

    def test_testing_attempts_cap_retries(self) -> None:
        """set_testing(True, attempts=1) turns retries off."""
        fn = Flaky(TransientBackendError("503"))
        with ftkit.set_testing(True, attempts=1), pytest.raises(TransientBackendError):
            call(fn)
        assert fn.calls == 1

    def test_bad_attempts_are_refused(self) -> None:
        """Attempts outside 1..MAX_ATTEMPTS are a ValueError."""
        with pytest.raises(ValueError, match="between 1 and 4"):
            ftkit.set_testing(True, attempts=9)
