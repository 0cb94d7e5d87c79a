"""ftkit.interrupts: SIGINT and SIGTERM raise Interrupted once; later ones wait for the cleanup."""

from __future__ import annotations

import os
import signal

import pytest

from ftkit.interrupts import Interrupted, deferred, handle_signals, interrupted


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_interrupted_with_the_shell_exit_code(signum: int, code: int) -> None:
    with pytest.raises(Interrupted) as info, handle_signals():
        os.kill(os.getpid(), signum)
    assert info.value.exit_code == code
    assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` lets it through
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_signals_after_the_first_are_held_while_cleaning_up(capsys: pytest.CaptureFixture[str]) -> None:
    """A second Ctrl-C during the cleanup does not cut it short; it is only reported."""
    cleaned: list[int | None] = []

    def run() -> None:
        with handle_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
            finally:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
                cleaned.append(interrupted())

    with pytest.raises(Interrupted):
        run()
    assert cleaned == [signal.SIGINT]
    assert "finishing the cleanup first" in capsys.readouterr().err


def test_deferred_raises_at_the_end_of_the_critical_section() -> None:
    steps = []

    def run() -> None:
        with handle_signals():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("pid recorded")
            steps.append("never")

    with pytest.raises(Interrupted) as info:
        run()
    assert steps == ["pid recorded"]
    assert info.value.signal_name == "SIGTERM"


def test_nested_blocks_share_one_handler() -> None:
    with handle_signals():
        outer = signal.getsignal(signal.SIGINT)
        with handle_signals():
            assert signal.getsignal(signal.SIGINT) is outer
        assert signal.getsignal(signal.SIGINT) is outer


def test_the_report_lists_what_was_cleaned_and_left() -> None:
    exc = Interrupted(signal.SIGTERM)
    exc.stage = "deploy"
    exc.cleaned.append("endpoint e-1 deleted")
    exc.left.append("job j is still running")
    assert exc.report() == (
        "interrupted by SIGTERM during deploy\n  cleaned  endpoint e-1 deleted\n  left     job j is still running"
    )
