"""A full disk (ENOSPC injected where each stage writes): one clear error, no temporary files, consistent state."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from ftkit.backends.local import LocalBackend, registry
from ftkit.backends.local.tracking import MlflowStore, RunLogger, client, using_store
from ftkit.cli import main
from ftkit.exceptions import JobFailedError, JobStorageError, StorageError
from ftkit.storage import StorageFailure
from ftkit.waiting import wait_for_job

from .conftest import ChatFiles
from .test_backend import _request

pytest.importorskip("mlflow")


def full(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", None if path is None else str(path))


def temporary_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name.endswith((".tmp", ".tmp/")) or ".tmp" in p.name]


def test_data_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`ftkit run` whose data build hits a full disk: exit 1, one line naming the stage and the file, no
    traceback, no half-written split, run.json says failed at data."""
    import ftkit.data.split_run as split_run
    from ftkit.demo import prepare_demo

    job = prepare_demo(tmp_path / "demo", seed=0, steps=2)
    monkeypatch.setenv("FTKIT_HOME", str(tmp_path / "home"))

    def write(self: Any, data: memoryview) -> None:
        raise full(self._file.name)

    monkeypatch.setattr(split_run.FileWriter, "write", write)
    capsys.readouterr()
    assert main(["run", str(job)]) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: data: No space left on device (")
    assert "free some space" in line
    assert "Traceback" not in err
    assert temporary_files(tmp_path) == []
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "home").glob("runs/*/run.json")]
    assert record["status"] == "failed"
    assert record["error"]["type"] == "StorageError"
    assert record["error"]["stage"] == "data"


def test_finetune_stage(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint write that fails: no `.checkpoint-N.tmp`, job.json Failed with the reason, MLflow FAILED."""
    import torch

    backend = LocalBackend(tmp_path / "home", device="cpu", background=False, progress="none")
    backend.register_model_dir("tiny-phi3", tiny_model_dir)
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoint" in str(f):
            Path(f).write_bytes(b"partial")
            raise full(f)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    handle = backend.submit_finetune(_request(backend, chat_files, max_steps=4, save_steps=2))
    assert handle.status == "Failed"
    assert "No space left on device" in (handle.error or "")
    folder = backend.job_dir(handle.name)
    assert temporary_files(folder) == []
    assert json.loads((folder / "job.json").read_text())["status"] == "Failed"
    with using_store(backend.store) as mlflow:
        assert mlflow.get_run(backend.run_id(handle.name)).info.status == "FAILED"


def test_register_stage(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying the model into the run's artifacts fails halfway: the partial copy is removed and no
    registered model without a version is left; the OSError reaches the runner (which names the stage)."""
    import mlflow

    store = MlflowStore.at(tmp_path / "home")
    run = RunLogger.start(store, "exp", run_name="r")

    def log_artifacts(self: Any, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        dest = Path(self.get_run(run_id).info.artifact_uri.removeprefix("file://")) / (artifact_path or "")
        dest.mkdir(parents=True)
        (dest / "model.safetensors").write_bytes(b"half a model")
        raise full(dest / "model.safetensors")

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifacts", log_artifacts)
    with pytest.raises(OSError, match="No space left"):
        registry.register_trained_model(store, "tiny-chat", run_id=run.run_id, model_dir=tiny_model_dir)
    c = client(store)
    assert [m.name for m in c.search_registered_models()] == []
    artifacts = Path(c.get_run(run.run_id).info.artifact_uri.removeprefix("file://"))
    assert not (artifacts / "model").exists()


def test_register_rolls_back_a_model_whose_first_version_fails(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the version (a full disk): the registered model created for it is deleted."""
    import mlflow

    store = MlflowStore.at(tmp_path / "home")

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", refuse)
    with pytest.raises(Exception, match="disk is full"):
        registry.register_model_dir(store, "tiny", tiny_model_dir)
    assert [m.name for m in client(store).search_registered_models()] == []


def test_deploy_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording a starting server's pid fails: the server is stopped at once, nothing is left running."""
    pytest.importorskip("fastapi")
    import psutil

    from ftkit.backends.base import EndpointSpec
    from ftkit.backends.local.endpoints import LocalEndpoints
    from ftkit.serve import files as state

    def refuse(self: Any, info: dict[str, Any]) -> None:
        raise full(self.server_path)

    monkeypatch.setattr(state.EndpointFiles, "write_server", refuse)
    endpoints = LocalEndpoints(tmp_path / "home")
    with pytest.raises(OSError, match="No space left"):
        endpoints.create_endpoint(EndpointSpec(name="full-disk"))
    alive = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert alive == []
    endpoints.delete_endpoint("full-disk")
    assert endpoints.names() == []
    assert temporary_files(tmp_path) == []


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        ),
        RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: ... (os error 28)"),
    ],
    ids=["torch", "safetensors"],
)
def test_a_full_disk_reported_by_torch_is_a_storage_error_naming_the_path(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """torch raises RuntimeError, not OSError, when a checkpoint write hits a full disk: still the documented
    storage error (stage and the checkpoint's path), no half checkpoint, and the job resumes once there is room."""
    import torch

    backend = LocalBackend(tmp_path / "home", device="cpu", background=False, progress="none")
    backend.register_model_dir("tiny-phi3", tiny_model_dir)
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoint" in str(f):
            Path(f).write_bytes(b"partial")
            raise error
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    handle = backend.submit_finetune(_request(backend, chat_files, max_steps=4, save_steps=2))
    assert handle.status == "Failed"
    message = handle.error or ""
    assert message.startswith("finetune: No space left on device ("), message
    assert ".checkpoint-2.tmp" in message
    assert "free some space" in message
    assert temporary_files(backend.job_dir(handle.name)) == []
    # What waiting for the job raises (the runner's wait): the StorageError itself, not only its text.
    with pytest.raises(StorageError) as caught:
        wait_for_job(backend, handle.name, poll_s=0.1)
    assert isinstance(caught.value, JobFailedError)
    assert (caught.value.stage, caught.value.errno) == ("finetune", errno.ENOSPC)
    assert str(caught.value.path).endswith(".checkpoint-2.tmp")
    assert str(caught.value).startswith(message)
    monkeypatch.setattr(torch, "save", real_save)
    again = backend.submit_finetune(_request(backend, chat_files, max_steps=4, save_steps=2))
    assert again.name == handle.name
    assert again.status == "Completed"
    assert again.storage is None


def test_storage_cause_is_found_in_any_library_s_wording(tmp_path: Path) -> None:
    import sqlite3

    from ftkit.storage import storage_cause

    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = sqlite3.OperationalError("database or disk is full")
    cases: list[tuple[BaseException, int | None]] = [
        (wrapped, errno.ENOSPC),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/q"), errno.EDQUOT),
        (RuntimeError("Read-only file system (os error 30)"), errno.EROFS),
        (RuntimeError("CUDA out of memory"), None),
        (OSError(errno.ENOENT, "No such file or directory", "/x"), None),
    ]
    for exc, number in cases:
        found = storage_cause(exc, tmp_path / "out")
        assert (found.errno if found is not None else None) == number, exc
        if found is not None:
            assert found.filename in ("/q", str(tmp_path / "out"))


def test_a_worker_that_could_not_write_job_json_is_reported_by_its_last_words(
    tmp_path: Path, chat_files: ChatFiles
) -> None:
    """On a full disk the worker cannot replace job.json (nor append to train.log): the message it wrote in
    place into its reserved last-words file is what `get_job` reports, not "exited unexpectedly"."""
    import subprocess
    import sys

    from ftkit.backends.local import jobs

    backend = LocalBackend(tmp_path / "home", device="cpu", background=True, progress="none")
    folder = backend.job_dir("ft-abcdef")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    jobs.write_record(folder, jobs.JobRecord(name="ft-abcdef", status="Running", pid=int(dead.stdout)))
    jobs.reserve_last_words(folder)
    words = "finetune: No space left on device (/x/.checkpoint-2.tmp); free some space on that disk and run again"
    assert jobs.write_last_words(folder, words + " (train.log could not be written: No space left on device)")
    handle = backend.get_job("ft-abcdef")
    assert handle.status == "Failed"
    assert handle.error is not None
    assert handle.error.startswith(words)
    assert "train.log could not be written" in handle.error
    assert handle.storage is None  # plain words (an older worker's): a JobFailedError with that text
    with pytest.raises(JobFailedError, match="No space left on device") as caught:
        wait_for_job(backend, "ft-abcdef", poll_s=0.1)
    assert not isinstance(caught.value, StorageError)


def test_last_words_carry_the_storage_failure_to_the_waiting_process(tmp_path: Path) -> None:
    """The worker's last words hold the failure as values too: waiting raises the StorageError (stage, path)."""
    import subprocess
    import sys

    from ftkit.backends.local import jobs

    backend = LocalBackend(tmp_path / "home", device="cpu", background=True, progress="none")
    folder = backend.job_dir("ft-ghijkl")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    jobs.write_record(folder, jobs.JobRecord(name="ft-ghijkl", status="Running", pid=int(dead.stdout)))
    jobs.reserve_last_words(folder)
    failure = StorageFailure.of("finetune", full("/x/.checkpoint-2.tmp"))
    message = str(StorageError("finetune", failure.error()))
    assert jobs.write_last_words(folder, message, failure)
    assert (folder / jobs.LAST_WORDS).stat().st_size == 4096  # overwritten in place, never grown
    handle = backend.get_job("ft-ghijkl")
    assert (handle.status, handle.error, handle.storage) == ("Failed", message, failure)
    with pytest.raises(JobStorageError) as caught:
        wait_for_job(backend, "ft-ghijkl", poll_s=0.1)
    assert (caught.value.stage, caught.value.path, caught.value.job_name) == (
        "finetune",
        "/x/.checkpoint-2.tmp",
        "ft-ghijkl",
    )
    assert str(caught.value).startswith(message)
    assert "job ft-ghijkl ended Failed" in str(caught.value)
    # job.json says so too (written by get_job's reconciliation): a later reader gets the same error.
    assert StorageFailure.from_json(json.loads((folder / "job.json").read_text())["storage"]) == failure


# Loaded by every Python process started with this directory on PYTHONPATH (ftkit's children keep PYTHONPATH):
# the training worker's second checkpoint write then fails as torch reports a full disk.
FULL_DISK_AT_CHECKPOINT_4 = """\
import os
if os.environ.get("FULL_DISK_TEST"):
    import torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if ".checkpoint-4.tmp" in str(f):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_full_disk_in_a_real_run_is_the_cli_s_storage_error(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles
) -> None:
    """A real ``ftkit run`` whose worker fills the disk writing a checkpoint: exit 1 and one ``error:`` line in the
    documented StorageError wording (stage, the checkpoint's path, what to do), run.json with the class and
    stage; once there is room, the same command resumes the job from its last checkpoint."""
    import os

    from . import realrun

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FULL_DISK_AT_CHECKPOINT_4, encoding="utf-8")
    home = tmp_path / "home"
    job = realrun.job_file(
        tmp_path / "job.yaml",
        name="full-disk",
        model=tiny_model_dir,
        train=chat_files.train,
        test=chat_files.test,
        home=home,
        finetune="max_steps: 6\nper_device_train_batch_size: 4\nmax_seq_length: 128\nevaluation_strategy: disable",
        local="save_steps: 2",
    )
    path = os.pathsep.join(p for p in (str(inject), os.environ.get("PYTHONPATH", "")) if p)
    proc = realrun.start_run(job, home, {"FULL_DISK_TEST": "1", "PYTHONPATH": path})
    out, _ = proc.communicate(timeout=realrun.LIMIT_S)
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: finetune: No space left on device ("), line
    assert ".checkpoint-4.tmp); free some space on that disk and run again" in line, line
    assert "ended Failed" in line
    (run_json,) = home.glob("runs/*/run.json")
    record = json.loads(run_json.read_text())
    assert (record["status"], record["error"]["type"], record["error"]["stage"]) == (
        "failed",
        "JobStorageError",
        "finetune",
    )
    folder = next(p for p in home.glob("jobs/*") if p.is_dir())  # jobs/ also holds its .lock file
    assert temporary_files(folder) == []
    assert (folder / "output" / "checkpoints" / "checkpoint-2" / "state.json").is_file()

    again = realrun.start_run(job, home)  # room again: the same job resumes from checkpoint 2
    out, _ = again.communicate(timeout=realrun.LIMIT_S)
    assert again.returncode == 0, out
    assert "training from step 2 to 6" in (folder / "train.log").read_text()
