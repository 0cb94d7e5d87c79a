"""LocalBackend end to end: submit in a worker process, track in MLflow, register, load back, resume after kill."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftkit.backends.base import Backend, FinetuneRequest, JobHandle, RegisterRequest
from ftkit.backends.local import LocalBackend
from ftkit.exceptions import ConflictError, NotFoundError, ValidationError
from ftkit.finetune import FinetunePipelineSpec
from ftkit.jobfile import JobFile
from ftkit.metrics import plot_loss_curves, summarize
from ftkit.plan import plan_run

from .conftest import TINY_TRAINING, ChatFiles

pytest.importorskip("mlflow")

FINETUNE = {**TINY_TRAINING, "num_train_epochs": 2, "evaluation_strategy": "steps", "eval_steps": 19}


def _request(backend: LocalBackend, chat_files: ChatFiles, **finetune: Any) -> FinetuneRequest:
    job = JobFile.from_mapping(
        {
            "name": "tiny-test",
            "backend": "local",
            "model": {"name": "tiny-phi3", "registry": "local"},
            "data": {"train_file": str(chat_files.train), "test_file": str(chat_files.test)},
        }
    )
    local = {k: finetune.pop(k) for k in ("save_steps", "lora_target_modules", "max_eval_examples") if k in finetune}
    job = attrs.evolve(
        job,
        finetune=FinetunePipelineSpec.from_mapping({**FINETUNE, **finetune}),
        local=attrs.evolve(job.local, **local),
    )
    model = backend.resolve_model(job.model.ref())
    plan = attrs.evolve(plan_run(job, model=model), display_name="tiny-test", experiment_name="ftkit-tests")
    files = backend.upload_data({"train": chat_files.train, "test": chat_files.test}, name_prefix="tiny")
    return FinetuneRequest(plan=plan, compute=None, train_data=files["train"], test_data=files["test"])


def _wait(backend: LocalBackend, handle: JobHandle, timeout: float = 120) -> JobHandle:
    deadline = time.monotonic() + timeout
    while not handle.is_terminal:
        assert time.monotonic() < deadline, (backend.job_dir(handle.name) / "train.log").read_text()
        time.sleep(0.2)
        handle = backend.get_job(handle.name)
    return handle


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> LocalBackend:
    """A backend on a fresh home, with the tiny model registered as `tiny-phi3`."""
    b = LocalBackend(tmp_path_factory.mktemp("home"), device="cpu")
    b.register_model_dir("tiny-phi3", tiny_model_dir, {"origin": "tiny"})
    return b


@pytest.fixture(scope="module")
def finished(backend: LocalBackend, chat_files: ChatFiles) -> JobHandle:
    """One completed background job."""
    handle = backend.submit_finetune(_request(backend, chat_files))
    assert handle.status == "Queued"
    done = _wait(backend, handle)
    assert done.status == "Completed", (backend.job_dir(done.name) / "train.log").read_text()
    return done


def test_a_background_job_reports_its_progress(finished: JobHandle, backend: LocalBackend) -> None:
    """The worker's last progress line (step and loss) reaches get_job, so `ftkit run` can show it."""
    progress = backend.get_job(finished.name).progress
    assert progress is not None
    assert progress.startswith("step ")
    assert "loss" in progress
    # What happened before the first step is in the job's log (`ftkit job logs`), and its caches in its home.
    log = (backend.job_dir(finished.name) / "train.log").read_text()
    for phase in ("tokenising ", "tokenised ", "loading the model ", "loaded the model in ", "training "):
        assert f"\n{phase}" in f"\n{log}", (phase, log)
    assert log.index("loaded the model") < log.index("\nstep ")
    assert list((backend.home / "cache" / "tokens").iterdir())


class TestProtocol:
    def test_is_a_backend_and_light(self, tmp_path: Path) -> None:
        """LocalBackend satisfies the protocol; constructing it (and its endpoints object) starts nothing."""
        b = LocalBackend(tmp_path)
        assert isinstance(b, Backend)  # reads b.endpoints, which makes the LocalEndpoints object
        assert b.name == "local"
        assert b.endpoints.names() == []
        assert not (tmp_path / "endpoints").exists()

    def test_resolve_model(self, backend: LocalBackend) -> None:
        """A registered name resolves to its version with the directory as a tag; unknown names are NotFound."""
        from ftkit.model import FoundationModelRef

        ref = backend.resolve_model(FoundationModelRef(name="tiny-phi3"))
        assert ref.version == "1"
        assert Path(ref.tags["ftkit.path"]).is_dir()
        with pytest.raises(NotFoundError, match="did you mean tiny-phi3"):
            backend.resolve_model(FoundationModelRef(name="tiny-phi"))

    def test_upload_data_checks_files(self, backend: LocalBackend, tmp_path: Path) -> None:
        """Missing files and remote URIs are reported together."""
        with pytest.raises(ValidationError) as info:
            backend.upload_data({"train": tmp_path / "nope.jsonl", "test": "azureml://x"}, name_prefix="p")
        assert [p.where for p in info.value.problems] == ["train", "test"]

    def test_unknown_job(self, backend: LocalBackend) -> None:
        """get_job on an unknown name is NotFoundError."""
        with pytest.raises(NotFoundError):
            backend.get_job("no-such-job")

    def test_a_recycled_pid_is_not_the_worker(self, tmp_path: Path) -> None:
        """A Running record whose pid now belongs to another process is Failed, and cancel never signals it."""
        from ftkit.backends.local import jobs

        b = LocalBackend(tmp_path)
        # This test process stands in for a stranger that got the dead worker's pid.
        jobs.write_record(b.job_dir("stale"), jobs.JobRecord(name="stale", status="Running", pid=os.getpid()))
        assert not jobs.worker_alive(os.getpid(), "stale")
        b.cancel_job("stale")  # a SIGTERM to this process would end the test run here
        handle = b.get_job("stale")
        assert handle.status == "Failed"
        assert "exited unexpectedly" in (handle.error or "")


class TestFlow:
    def test_metrics_come_back_from_mlflow(self, backend: LocalBackend, finished: JobHandle, tmp_path: Path) -> None:
        """Loss, eval loss, lr, grad norm and tokens/s are read back; eval loss fell; the PNG is written."""
        table = backend.read_metrics(finished)
        assert {"loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(table.keys)
        summary = summarize(table)
        assert summary.steps == 76
        assert summary.eval_improved
        assert summary.perplexity is not None
        curves = plot_loss_curves(table, tmp_path / "loss.png")
        assert curves.path is not None
        assert curves.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_registered_model_loads_through_mlflow_and_generates(
        self, backend: LocalBackend, finished: JobHandle
    ) -> None:
        """The registered version carries lineage tags, is a loadable HF dir, and MLflow loads it and chats."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ftkit.backends.local.tracking import using_store

        model = backend.register_model(
            RegisterRequest(job=finished, name="tiny-ft", version="20240601", tags={"k": "v"})
        )
        assert model.id == "models:/tiny-ft/1"
        for tag in ("ftkit.base_model", "ftkit.data.train.sha256", "ftkit.data.test.sha256", "ftkit.run_id"):
            assert model.tags[tag]
        assert model.tags["ftkit.base_model"] == "tiny-phi3:1"
        assert backend.get_model("tiny-ft:20240601").version == "1"
        assert model.path is not None
        AutoModelForCausalLM.from_pretrained(model.path)
        assert "generation" in AutoTokenizer.from_pretrained(model.path).chat_template

        with using_store(backend.store) as mlflow:
            import mlflow.transformers

            pipe = mlflow.transformers.load_model(model.id)
        out = pipe([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=12, do_sample=False)
        answer = out[0]["generated_text"][-1]
        assert answer["role"] == "assistant"
        assert answer["content"].strip()

    def test_unfinished_job_cannot_be_registered(self, backend: LocalBackend) -> None:
        """Registering a job that has not completed is a ConflictError naming its status."""
        from ftkit.backends.local import jobs

        jobs.write_record(backend.job_dir("queued-job"), jobs.JobRecord(name="queued-job", status="Queued"))
        with pytest.raises(ConflictError, match="is Queued"):
            backend.register_model(
                RegisterRequest(job=JobHandle(name="queued-job", status="Queued"), name="x", version="1")
            )


@pytest.mark.slow
class TestResume:
    def test_killed_job_resumes_from_its_checkpoint(self, backend: LocalBackend, chat_files: ChatFiles) -> None:
        """SIGKILL mid-run makes the job (and its MLflow run) Failed; submitting it again resumes from the
        checkpoint, in the same run, to the same final step."""
        from ftkit.backends.local.tracking import using_store

        request = _request(backend, chat_files, num_train_epochs=1, per_device_train_batch_size=2, save_steps=5)
        handle = backend.submit_finetune(request)
        ckpts = backend.job_dir(handle.name) / "output" / "checkpoints"
        deadline = time.monotonic() + 600  # generous: a loaded machine is slow, not wrong
        while not any(p.name.startswith("checkpoint-") for p in ckpts.glob("checkpoint-*")):
            assert time.monotonic() < deadline
            assert not backend.get_job(handle.name).is_terminal, "finished before it could be killed"
            time.sleep(0.05)
        pid = int(json.loads((backend.job_dir(handle.name) / "job.json").read_text())["pid"])
        os.kill(pid, signal.SIGKILL)
        killed = _wait(backend, backend.get_job(handle.name))
        assert killed.status == "Failed"
        assert "submit again to resume" in (killed.error or "")
        run_id = backend.run_id(handle.name)
        with using_store(backend.store) as mlflow:
            assert mlflow.get_run(run_id).info.status == "FAILED"  # not left RUNNING by the dead worker

        again = backend.submit_finetune(request)
        assert again.name == handle.name
        done = _wait(backend, again)
        assert done.status == "Completed"
        log = (backend.job_dir(done.name) / "train.log").read_text()
        result = json.loads((backend.job_dir(done.name) / "output" / "result.json").read_text())
        assert result["global_step"] == result["total_steps"] == 150  # 150 steps/epoch x 1
        table = backend.read_metrics(done)
        assert table.series("loss")[-1][0] == 150
        assert "step 150/150" in log
        with using_store(backend.store) as mlflow:
            run = mlflow.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert int(run.data.tags["ftkit.resumed_from"]) >= 5  # it continued from a checkpoint, not from step 0
        assert json.loads((backend.job_dir(done.name) / "job.json").read_text())["attempts"] == 2


def test_local_section_settings_reach_the_training_config(tmp_path: Path) -> None:
    """save_steps / lora_target_modules / max_eval_examples from `local:` land in TrainConfig."""
    import attrs

    job = JobFile.from_yaml(
        "name: x\nmodel: {name: m, path: m}\n"
        "local: {save_steps: 7, lora_target_modules: 'qkv_proj, o_proj', max_eval_examples: 3}\n"
    )
    backend = LocalBackend(home=tmp_path / "home")
    request = FinetuneRequest(plan=plan_run(job), compute=None, train_data="train.jsonl", test_data="test.jsonl")
    backend.model_dir_for = lambda request: tmp_path  # type: ignore[method-assign]
    config, _ = backend.train_config(request, output_dir=tmp_path / "out")
    assert (config.save_steps, config.max_eval_examples) == (7, 3)
    assert tuple(config.lora_target_modules or ()) == ("qkv_proj", "o_proj")
    assert attrs.has(type(config))
