"""Stops honoured while the worker is busy with something other than a training step: a real ``ftkit run``
(one process, and two torchrun ranks on gloo) stopped by SIGTERM to the CLI or by ``ftkit job cancel`` during
its model load, its step-0 evaluation and a checkpoint write; then, in-process, the same phases one by one.

Each phase is made long deterministically: the evaluation by tens of thousands of evaluation rows (one per
batch), the load and the checkpoint write by the test-only ``FTKIT_TEST_PAUSE`` hook (``ftkit.backends.local.training.stopping``),
which makes the phase last until a stop is asked, at most 600 s. A worker that honoured stops only between steps
would still be in that phase long after the limits polled here; the tests poll states with generous limits and
assert no deadline (the promise, a worker gone within about 10 s, is what the limits leave room for under load).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from . import realrun
from .conftest import ChatFiles

pytest.importorskip("mlflow")

EVAL_ROWS = 40_000
# The stop must have been honoured in the phase: the pause alone would keep the worker for 600 s.
GONE_S = 120.0

LONG_EVALUATION = """\
max_steps: 4
per_device_train_batch_size: 4
per_device_eval_batch_size: 1
max_seq_length: 256
evaluation_strategy: steps
eval_steps: 2
"""

SHORT = """\
max_steps: 4
per_device_train_batch_size: 4
max_seq_length: 128
evaluation_strategy: disable
"""


def _job(tmp_path: Path, model: Path, files: ChatFiles, *, finetune: str, processes: int = 1) -> Path:
    test = files.test
    if "eval_steps" in finetune:
        rows = files.test.read_text(encoding="utf-8").splitlines()
        test = tmp_path / "long_eval.jsonl"
        test.write_text("".join(rows[i % len(rows)] + "\n" for i in range(EVAL_ROWS)), encoding="utf-8")
    return realrun.job_file(
        tmp_path / "job.yaml",
        name="stop-phases",
        model=model,
        train=files.train,
        test=test,
        home=tmp_path / "home",
        finetune=finetune,
        local=f"save_steps: 2, processes: {processes}",
    )


def _stop(how: str, proc: subprocess.Popen[str], home: Path, running: dict[str, Any]) -> None:
    """Stop the run as a user would: SIGTERM to ``ftkit run``, or ``ftkit job cancel`` from another shell."""
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 143, out
        assert "did not stop within" not in out, out
    else:
        cancel = realrun.ftkit("job", "cancel", str(running["name"]), "--home", str(home), "--wait", "240", home=home)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert "Canceled" in cancel.stdout
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 1, out  # the run it belonged to says its job was canceled
    assert "Traceback" not in out, out


def _assert_stopped_at(home: Path, running: dict[str, Any], step: int) -> None:
    """The usual record: Canceled at ``step`` with its checkpoint (none at step 0), no process of the job left."""
    record = realrun.wait_for_status(home, "Canceled")
    assert f"canceled at step {step};" in str(record.get("error")), record
    assert record.get("pid") is None
    assert realrun.gone(int(running["pid"]), GONE_S), f"the worker {running['pid']} is still running"
    folder = home / "jobs" / str(record["name"])
    realrun.none_left(folder, GONE_S)  # torchrun and its ranks too
    checkpoints = sorted(p.name for p in (folder / "output").glob("checkpoints/*checkpoint-*"))
    assert checkpoints == ([f"checkpoint-{step}"] if step else []), checkpoints
    if step:
        assert (folder / "output" / "checkpoints" / f"checkpoint-{step}" / "state.json").is_file()


def _resume(job: Path, home: Path, running: dict[str, Any], step: int) -> None:
    """The same job file again: the same job resumes from ``step`` and completes."""
    proc = realrun.start_run(job, home)
    out, _ = proc.communicate(timeout=realrun.LIMIT_S)
    assert proc.returncode == 0, out
    record = realrun.record(home)
    assert record is not None
    assert (record["name"], record["status"], record["attempts"]) == (running["name"], "Completed", 2)
    log = (home / "jobs" / str(record["name"]) / "train.log").read_text()
    assert (f"training from step {step} to 4" if step else "training 4 steps") in log, log[-3000:]


def _run_and_stop(
    tmp_path: Path, model: Path, files: ChatFiles, *, phase: str, how: str, processes: int = 1, resume: bool = True
) -> None:
    home = tmp_path / "home"
    job = _job(
        tmp_path, model, files, finetune=LONG_EVALUATION if phase == "evaluation" else SHORT, processes=processes
    )
    pause = {"FTKIT_TEST_PAUSE": phase} if phase in ("load", "checkpoint") else {}
    proc = realrun.start_run(job, home, pause)
    try:
        if phase == "checkpoint":
            running = realrun.wait_for_record(home, lambda r: r.get("status") == "Running", "running", proc=proc)
            tmp = home / "jobs" / str(running["name"]) / "output" / "checkpoints" / ".checkpoint-2.tmp"
            realrun.wait_for_path(tmp, proc)  # the write has begun; the pause holds it until the stop
        else:
            words = "loading the model" if phase == "load" else "evaluating the base model"
            running = realrun.wait_for_record(home, realrun.in_phase(words), words, proc=proc)
        _stop(how, proc, home, running)
        step = 2 if phase == "checkpoint" else 0
        _assert_stopped_at(home, running, step)
        if phase == "evaluation":
            assert "eval loss" not in str(realrun.record(home)), realrun.record(home)  # it never finished
        if how == "sigterm":
            (run_json,) = home.glob("runs/*/run.json")
            assert '"status": "interrupted"' in run_json.read_text()
        if resume:
            _resume(job, home, running, step)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("how", ["sigterm", "cancel"])
@pytest.mark.parametrize("phase", ["load", "evaluation", "checkpoint"])
def test_a_stop_in_every_phase_of_a_real_run(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, phase: str, how: str
) -> None:
    """One process: the worker is gone with the usual record, and the job resumes (after SIGTERM: once is enough)."""
    resume = how == "sigterm" and phase != "evaluation"  # resumed, the long evaluation would start again
    _run_and_stop(tmp_path, tiny_model_dir, chat_files, phase=phase, how=how, resume=resume)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("phase", "how"), [("load", "sigterm"), ("evaluation", "cancel"), ("checkpoint", "sigterm")])
def test_two_ranks_stop_together_in_every_phase(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, phase: str, how: str
) -> None:
    """Two torchrun ranks (gloo): each is cut short or agrees with the other; none waits in a collective."""
    _run_and_stop(tmp_path, tiny_model_dir, chat_files, phase=phase, how=how, processes=2, resume=phase == "checkpoint")


def test_a_stop_asked_during_a_checkpoint_write_stops_right_after_it(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint being written is the one to resume from: no further step, no second checkpoint."""
    from ftkit.backends.local import training
    from ftkit.backends.local.training import checkpoints

    from .conftest import tiny_train_config

    asked = {"stop": False}
    real_save = checkpoints.save_checkpoint

    def save(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        asked["stop"] = True  # arrives while the checkpoint is written

    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    config = tiny_train_config(
        tiny_model_dir, chat_files, tmp_path / "out", max_steps=6, save_steps=2, evaluation_strategy="disable"
    )
    result = training.train(config, progress="none", should_stop=lambda: asked["stop"])
    assert result.stopped
    assert result.global_step == 2
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_stop_asked_during_an_evaluation_is_honoured_between_its_batches(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles
) -> None:
    """Polled between evaluation batches: the step-0 evaluation ends early, nothing is trained or logged."""
    from ftkit.backends.local import training

    from .conftest import tiny_train_config

    polls = {"n": 0}

    def should_stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 8  # the loading phases poll a few times; then a few evaluation batches run

    config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out", max_steps=4, per_device_eval_batch_size=1)
    result = training.train(config, progress="none", should_stop=should_stop)
    assert result.stopped
    assert result.global_step == 0
    assert result.first_eval_loss is None
    assert not list((tmp_path / "out").glob("checkpoints/checkpoint-*"))


def test_sigterm_while_the_model_loads_cuts_the_load_short(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's SIGTERM handler (stop_now) stops a model load at once: no step, no checkpoint, stopped."""
    from ftkit.backends.local import training
    from ftkit.backends.local.training import model_setup

    from .conftest import tiny_train_config

    real_build = model_setup.build_model
    loads = {"finished": 0}

    def build(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the model loads
        model = real_build(*args, **kwargs)  # type: ignore[arg-type]
        loads["finished"] += 1
        return model

    def on_term(_signum: int, _frame: object) -> None:
        training.stop_now()

    monkeypatch.setattr(model_setup, "build_model", build)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        config = tiny_train_config(tiny_model_dir, chat_files, tmp_path / "out", max_steps=4)
        result = training.train(config, progress="none")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.stopped
    assert result.global_step == 0
    assert loads["finished"] == 0
    training.stop_now()  # outside a phase it may cut short, it does nothing


class _TwoRanks:
    """One rank of two, whose peer votes ``peer`` in every agreement (what TorchRanks.agree's all-reduce returns)."""

    world = 2
    main = True

    def __init__(self, peer: bool) -> None:
        self.peer = peer
        self.votes: list[bool] = []

    def agree(self, flag: bool) -> bool:
        self.votes.append(flag)
        return flag or self.peer


def test_ranks_cut_short_in_a_load_agree_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank cut short waits at the end of the load for the others; a rank not cut stops if its peer was."""
    from ftkit.backends.local.training import stopping as stops

    monkeypatch.setitem(stops._STATE, "requested", False)
    cut = _TwoRanks(peer=False)

    def load() -> None:
        with stops.loading(cut, None):  # type: ignore[arg-type]
            stops.stop_now()  # the signal handler's call, inside the load
            raise AssertionError("not cut short")

    with pytest.raises(stops.StopRequested):
        load()
    assert cut.votes == [True]  # it voted before leaving: the peer's agreement is not left waiting

    peer_cut = _TwoRanks(peer=True)
    with pytest.raises(stops.StopRequested), stops.loading(peer_cut, None):  # type: ignore[arg-type]
        pass
    assert peer_cut.votes == [False]

    nobody = _TwoRanks(peer=False)
    with stops.loading(nobody, lambda: False):  # type: ignore[arg-type]
        pass
    assert nobody.votes == [False]
    with stops.evaluating(nobody):  # type: ignore[arg-type]
        stops.stop_now()  # ranks are never cut inside an evaluation (its passes are collectives) ...
    with pytest.raises(stops.StopRequested):
        stops.agreed(nobody, stops.requested)()  # type: ignore[arg-type]  # ... they agree between batches
    assert nobody.votes == [False, True]


def test_a_rank_s_watch_cuts_its_main_thread_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch thread turns a stop file into stop_now() in the main thread: a load in a window ends at once."""
    import time

    from ftkit.backends.local.training import stopping as stops

    monkeypatch.setitem(stops._STATE, "requested", False)
    previous = signal.getsignal(signal.SIGUSR1)
    asked = {"now": False}
    try:
        should_stop = stops.watch(lambda: asked["now"], every_s=0.01)
        assert not should_stop()

        def load() -> None:
            with stops.loading(_TwoRanks(peer=False), should_stop):  # type: ignore[arg-type]
                asked["now"] = True
                deadline = time.monotonic() + 60  # a load that would take a minute
                while time.monotonic() < deadline:
                    time.sleep(0.01)
                raise AssertionError("the watch never cut the load short")

        with pytest.raises(stops.StopRequested):
            load()
        assert should_stop()
    finally:
        signal.signal(signal.SIGUSR1, previous)
