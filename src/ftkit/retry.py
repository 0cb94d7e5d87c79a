"""ftkit's one retry policy.

Which layer retries what (one layer per concern, never two):

* **HTTP calls to Azure ML** are retried here, by ftkit, and only here. The azureml backend builds its
  ``MLClient`` with ``retry_total=0`` so azure-core's own ``RetryPolicy`` (3 retries by default, on the same
  408/429/5xx set) does not multiply our attempts; the backend translates SDK errors into
  :class:`~ftkit.exceptions.TransientBackendError` at its boundary and wraps each coarse operation in
  :func:`call`. One operation therefore makes at most :data:`MAX_ATTEMPTS` HTTP attempts.
* **Data uploads** to the datastore go through azure-storage-blob, which retries each blob request itself
  (3 retries) and cannot be told not to from azure-ai-ml: that is their one layer, and ftkit adds none.
* **Long-running operations** (endpoint/deployment creation) are not retried once submitted: their PUT is
  retried, their polling gets its own deadline, and a terminal failure (quota, probe) raises at once.
* **Everything else** (validation, auth, not found, conflict, quota) fails on the first attempt.

Only :class:`~ftkit.exceptions.TransientBackendError` is retried. Its ``retry_after`` (from the service's
``Retry-After``) is honoured as a lower bound on the wait, unless it would overrun the total time budget, in
which case ftkit gives up at once rather than sleep past it.

For tests, :func:`set_testing` removes every wait (and can lower the number of attempts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import attrs
import tenacity as _t

from .exceptions import TransientBackendError

__all__ = ["MAX_ATTEMPTS", "RetryPolicy", "call", "is_testing", "set_testing"]

T = TypeVar("T")

MAX_ATTEMPTS = 4
"""The hard ceiling on attempts for one call, whatever a policy asks for."""


@attrs.frozen
class RetryPolicy:
    """How hard to retry a transient failure.

    Attributes:
        attempts: Total attempts, the first included (capped at :data:`MAX_ATTEMPTS`).
        timeout_s: Total time budget across attempts and waits.
        wait_initial_s: First backoff.
        wait_max_s: Largest single backoff.
        jitter_s: Random extra wait added to each backoff, to spread out clients.
    """

    attempts: int = attrs.field(default=MAX_ATTEMPTS, validator=attrs.validators.in_(range(1, MAX_ATTEMPTS + 1)))
    timeout_s: float = 120.0
    wait_initial_s: float = 1.0
    wait_max_s: float = 30.0
    jitter_s: float = 1.0


@attrs.define
class _Testing:
    """Strictly private: the state behind :func:`set_testing`."""

    attempts: int


class _Config:
    """Strictly private: process-wide retry configuration."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.testing: _Testing | None = None


_CONFIG = _Config()


class _RestoreTesting:
    """Strictly private: restores the previous testing state when used as a context manager."""

    def __init__(self, previous: _Testing | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with _CONFIG.lock:
            _CONFIG.testing = self._previous


def set_testing(testing: bool, *, attempts: int = MAX_ATTEMPTS) -> _RestoreTesting:
    """Turn test mode on or off.

    In test mode no retry waits (backoffs, ``Retry-After``) are slept and at most ``attempts`` attempts are
    made, so tests of transient failures run instantly while still counting attempts. Usable as a context
    manager that restores the previous mode.

    Args:
        testing: Whether test mode is on.
        attempts: Attempts per call while in test mode (1 disables retries).

    Returns:
        A context manager restoring the previous state on exit.
    """
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise ValueError(f"attempts must be between 1 and {MAX_ATTEMPTS}, got {attempts}")
    with _CONFIG.lock:
        previous = _CONFIG.testing
        _CONFIG.testing = _Testing(attempts) if testing else None
    return _RestoreTesting(previous)


def is_testing() -> bool:
    """Return whether test mode (see :func:`set_testing`) is on."""
    return _CONFIG.testing is not None


class _Wait(_t.wait.wait_base):
    """Strictly private: exponential backoff with jitter, raised to the service's Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = _t.wait_exponential_jitter(
            initial=policy.wait_initial_s, max=policy.wait_max_s, jitter=policy.jitter_s
        )

    def __call__(self, retry_state: _t.RetryCallState) -> float:
        if _CONFIG.testing is not None:
            return 0.0
        wait = float(self._backoff(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientBackendError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


class _Stop(_t.stop.stop_base):
    """Strictly private: stop after the attempt budget, or when the next wait would overrun the time budget."""

    def __init__(self, policy: RetryPolicy, wait: _Wait) -> None:
        self._policy = policy
        self._wait = wait

    def __call__(self, retry_state: _t.RetryCallState) -> bool:
        testing = _CONFIG.testing
        attempts = min(self._policy.attempts, testing.attempts if testing else MAX_ATTEMPTS)
        if retry_state.attempt_number >= attempts:
            return True
        if testing is not None:
            return False
        elapsed = time.monotonic() - retry_state.start_time
        return elapsed + self._wait(retry_state) > self._policy.timeout_s


DEFAULT_POLICY = RetryPolicy()


def call(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_retry: Callable[[int, TransientBackendError], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` and retry it on :class:`~ftkit.exceptions.TransientBackendError` under ``policy``.

    Args:
        fn: The operation; called with no arguments.
        policy: Attempts, time budget and backoff.
        on_retry: Told the attempt number that failed and its error, before each retry (for logs/progress).
        sleep: The sleep function (injectable for tests that check the waits).

    Returns:
        What ``fn`` returned.

    Raises:
        TransientBackendError: The last transient error, once attempts or time ran out.
        Exception: Anything else ``fn`` raised, at once and unchanged.
    """
    wait = _Wait(policy)

    def before_sleep(state: _t.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if isinstance(exc, TransientBackendError):
                on_retry(state.attempt_number, exc)

    retrying = _t.Retrying(
        stop=_Stop(policy, wait),
        wait=wait,
        retry=_t.retry_if_exception_type(TransientBackendError),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )
    return retrying(fn)
