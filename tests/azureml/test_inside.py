"""FakeAzureML's jobs have an inside (steps, logs, errors), its references are checked, its datastore stores.

Each test drives the real azure-ai-ml client (or ftkit over it) against the fake, as a user's suite would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from ftkit.backends.azureml import AzureMLBackend
from ftkit.backends.base import JobHandle, RegisteredModel, RegisterRequest
from ftkit.cli import main
from ftkit.exceptions import NotFoundError
from ftkit.testing import FakeAzureML, FakeClock
from ftkit.waiting import wait_for_job

from .conftest import REPO


def _pipeline(fake: FakeAzureML, compute: str, tmp_path: Path) -> Any:
    """The notebook's pipeline (registry component, local data inputs) on ``compute``."""
    from azure.ai.ml import Input
    from azure.ai.ml.dsl import pipeline

    registry = fake.ml_client(registry_name="azureml")
    component = registry.components.get(name="chat_completion_pipeline", label="latest")
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": []}\n', encoding="utf-8")

    @pipeline(name="ft")  # type: ignore[untyped-decorator]
    def create() -> dict[str, Any]:
        node = component(
            mlflow_model_path="azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15",
            compute_model_import=compute,
            compute_preprocess=compute,
            compute_finetune=compute,
            compute_model_evaluation=compute,
            train_file_path=Input(type="uri_file", path=str(train)),
            test_file_path=Input(type="uri_file", path=str(train)),
            number_of_gpu_to_use_finetuning=1,
        )
        return {"trained_model": node.outputs.mlflow_model_folder}

    return create()


class TestJobInside:
    def test_steps_run_in_order_with_logs(self, fake: FakeAzureML, tmp_path: Path) -> None:
        """A pipeline job's five steps complete in order; each has a log; jobs.list(parent_job_name) lists them."""
        fake.add_compute("gpu", "Standard_NC6s_v3")
        ml = fake.ml_client()
        job = ml.jobs.create_or_update(_pipeline(fake, "gpu", tmp_path))
        while ml.jobs.get(job.name).status != "Completed":
            pass
        steps = fake.job_steps(job.name)
        assert [s["name"] for s in steps] == [
            "ft_nlp_common_validation",
            "chat_completion_model_import",
            "chat_completion_datapreprocess",
            "chat_completion_finetune",
            "ft_nlp_model_converter",
        ]
        assert {s["status"] for s in steps} == {"Completed"}
        assert all(s["compute"] == "gpu" for s in steps)
        finetune = steps[3]["log"]
        assert "'loss': 1.0463, 'step': 60" in finetune[-2]
        # As on Azure, the registry pipeline component is a nested pipeline run holding the steps.
        (node,) = ml.jobs.list(parent_job_name=job.name)
        assert node.display_name == "node"  # the pipeline function's node (the notebook's: chat_completion_pipeline)
        children = list(ml.jobs.list(parent_job_name=node.name))
        assert [c.display_name for c in children] == [s["name"] for s in steps]
        assert {str(c.status) for c in children} == {"Completed"}

    def test_stream_raises_for_a_failed_step(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """jobs.stream prints the run and raises JobException with the pipeline's error naming the failed node."""
        from azure.ai.ml.exceptions import JobException

        fake = FakeAzureML(job_statuses=("Running", "Completed"))  # over before jobs.stream sleeps
        fake.add_compute("gpu", "Standard_NC6s_v3")
        fake.fail_job("CUDA out of memory", step="chat_completion_datapreprocess")
        ml = fake.ml_client()
        job = ml.jobs.create_or_update(_pipeline(fake, "gpu", tmp_path))
        with pytest.raises(JobException, match="Failed nodes: /chat_completion_datapreprocess"):
            ml.jobs.stream(job.name)
        out = capsys.readouterr().out
        assert f"RunId: {job.name}" in out
        assert "Execution Summary" in out  # (its log lines print only after a poll: see the notebook test)
        steps = {s["name"]: s for s in fake.job_steps(job.name)}
        assert steps["chat_completion_datapreprocess"]["status"] == "Failed"
        assert steps["chat_completion_datapreprocess"]["log"][-1].endswith("CUDA out of memory")
        assert steps["chat_completion_finetune"]["status"] == "NotStarted"

    def test_wait_shows_the_running_step_and_its_last_log_line(
        self, fake: FakeAzureML, backend: AzureMLBackend, clock: FakeClock, tmp_path: Path
    ) -> None:
        """ftkit's wait reports which step runs and its last log line, as the job moves."""
        fake.add_compute("gpu", "Standard_NC6s_v3")
        job = fake.ml_client().jobs.create_or_update(_pipeline(fake, "gpu", tmp_path))
        seen: list[JobHandle] = []
        wait_for_job(backend, job.name, poll_s=60, on_status=seen.append, clock=clock, sleep=clock.sleep)
        progress = [h.progress for h in seen if h.status == "Running"]
        assert progress[0] == (
            "step ft_nlp_common_validation: 2025-01-01 00:01:00 ft_nlp_common_validation: started on compute gpu"
        )
        assert progress[1] is not None
        assert progress[1].startswith("step chat_completion_datapreprocess: ")
        assert seen[-1].status == "Completed"

    def test_a_failed_jobs_reason_surfaces_through_ftkit_run(
        self,
        fake: FakeAzureML,
        clock: FakeClock,
        data_files: dict[str, Path],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`ftkit run` fails with the step's name and message; its progress lines showed the step running."""
        import ftkit.runner

        backend = AzureMLBackend(**fake.backend_settings())
        monkeypatch.setattr(ftkit.runner, "backend_for_job", lambda *a, **k: backend)
        monkeypatch.setenv("FTKIT_HOME", str(tmp_path / "home"))
        fake.fail_job("torch.OutOfMemoryError: CUDA out of memory", step="chat_completion_finetune")
        job_path = tmp_path / "job.yaml"
        data = {"data": {"train_file": str(data_files["train"]), "test_file": str(data_files["test"])}}
        text = (REPO / "examples" / "phi3-ultrachat.yaml").read_text(encoding="utf-8")
        # The example with its data section replaced (a second `data:` section would be a duplicate key).
        job_path.write_text(yaml.safe_dump({**yaml.safe_load(text), **data}, sort_keys=False), encoding="utf-8")
        assert main(["run", str(job_path), "--no-deploy", "--poll", "0.001"]) != 0
        err = capsys.readouterr().err
        assert "Running: step chat_completion_finetune: " in err
        assert "step chat_completion_finetune failed: torch.OutOfMemoryError: CUDA out of memory" in err
        assert fake.calls("PUT", "/onlineEndpoints/") == []

    def test_a_command_jobs_error_is_its_own(
        self, fake: FakeAzureML, backend: AzureMLBackend, clock: FakeClock
    ) -> None:
        """A job without steps fails with the scripted message itself (no pipeline wording), read by the wait."""
        from azure.ai.ml import command

        from ftkit.exceptions import JobFailedError

        fake.add_compute("c", "Standard_NC6s_v3")
        fake.fail_job("boom: exit code 1")
        fake.ml_client().jobs.create_or_update(
            command(command="echo", environment="azureml:e:1", compute="c", name="cmd")
        )
        with pytest.raises(JobFailedError, match="ended Failed: boom: exit code 1"):
            wait_for_job(backend, "cmd", poll_s=60, clock=clock, sleep=clock.sleep)


class TestReferences:
    """Each reference Azure checks answers the error Azure ML answers (sources in the fake's comments)."""

    def test_deployment_of_a_missing_model(self, fake: FakeAzureML) -> None:
        from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

        ml = fake.ml_client()
        ml.begin_create_or_update(ManagedOnlineEndpoint(name="ep-missing-model", auth_mode="key")).result()
        deployment = ManagedOnlineDeployment(
            name="demo",
            endpoint_name="ep-missing-model",
            model="azureml:no-such-model:1",
            instance_type="Standard_NC6s_v3",
        )
        with pytest.raises(ResourceNotFoundError) as info:
            ml.online_deployments.begin_create_or_update(deployment).result()
        assert info.value.error is not None
        assert info.value.error.code == "UserError"
        assert "(ModelNotFound) Model container with name: no-such-model not found." in str(info.value)

    def test_ftkit_deploy_of_a_missing_model_is_not_found(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        from ftkit import EndpointDeployer

        with pytest.raises(NotFoundError, match="ModelNotFound|not found"), EndpointDeployer(backend, "ep2") as d:
            d.deploy(RegisteredModel(name="typo", version="1", id="azureml:typo:1"))
        assert fake.endpoint("ep2") is None

    def test_registration_from_a_missing_job(self, fake: FakeAzureML) -> None:
        from azure.ai.ml.entities import Model

        ml = fake.ml_client()
        model = Model(path="azureml://jobs/no-such-job/outputs/trained_model", type="mlflow_model", name="m")
        with pytest.raises(ResourceNotFoundError, match=r"\(UserError\) Job no-such-job not found\."):
            ml.models.create_or_update(model)

    def test_registration_from_a_missing_output(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        from azure.ai.ml.entities import Model

        fake.add_job("done", outputs=("other",))
        model = Model(path="azureml://jobs/done/outputs/trained_model", type="mlflow_model", name="m", version="1")
        with pytest.raises(HttpResponseError, match="NoMatchingArtifactsFoundFromJob") as info:
            fake.ml_client().models.create_or_update(model)
        assert info.value.status_code == 400
        assert "No artifacts matching outputs/trained_model found from Job." in str(info.value)
        with pytest.raises(Exception, match="No artifacts matching"):
            backend.register_model(
                RegisterRequest(job=JobHandle(name="done", status="Completed"), name="m", version="1")
            )

    def test_job_on_a_missing_compute(self, fake: FakeAzureML) -> None:
        from azure.ai.ml import command

        job = command(command="echo", environment="azureml:e:1", compute="no-such-cluster", name="j")
        with pytest.raises(HttpResponseError, match=r"\(UserError\) Unknown compute target 'no-such-cluster'\."):
            fake.ml_client().jobs.create_or_update(job)

    def test_pipeline_step_on_a_missing_compute_fails_in_that_step(self, fake: FakeAzureML, tmp_path: Path) -> None:
        """The registry pipeline takes clusters as inputs: the first step fails when it starts, as on Azure."""
        ml = fake.ml_client()
        job = ml.jobs.create_or_update(_pipeline(fake, "no-such-cluster", tmp_path))
        while ml.jobs.get(job.name).status not in ("Completed", "Failed"):
            pass
        assert ml.jobs.get(job.name).status == "Failed"
        first = fake.job_steps(job.name)[0]
        assert first["error"] == "AzureMLCompute cluster no-such-cluster does not exist"

    def test_component_of_a_missing_version(self, fake: FakeAzureML) -> None:
        registry = fake.ml_client(registry_name="azureml")
        with pytest.raises(ResourceNotFoundError, match="Could not find asset with assetId azureml://registries/"):
            registry.components.get("chat_completion_pipeline", version="0.0.1")


class TestStorage:
    def test_folder_upload_honours_amlignore_and_skips_unchanged_content(
        self, fake: FakeAzureML, tmp_path: Path
    ) -> None:
        """azure-ai-ml's own folder upload lands in fake.blobs; .amlignore is honoured; a re-upload is skipped."""
        from azure.ai.ml.entities import Data

        folder = tmp_path / "model"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"\x00\x01weights")
        (folder / "notes.tmp").write_text("scratch", encoding="utf-8")
        (folder / ".amlignore").write_text("*.tmp\n", encoding="utf-8")
        ml = fake.ml_client()
        ml.data.create_or_update(Data(name="folder", version="1", type="uri_folder", path=str(folder)))
        names = {uri.rsplit("/", 1)[-1]: data for uri, data in fake.blobs.items()}
        assert names["weights.bin"] == b"\x00\x01weights"
        assert "notes.tmp" not in names
        puts = len(fake.calls("PUT", r"/azureml-blobstore/"))
        ml.data.create_or_update(Data(name="folder", version="2", type="uri_folder", path=str(folder)))
        assert len(fake.calls("PUT", r"/azureml-blobstore/")) == puts  # same content hash: nothing re-uploaded

    def test_ftkits_real_uploader_works_against_the_fake(self, fake: FakeAzureML, data_files: dict[str, Path]) -> None:
        """DatastoreUploader (azure-ai-ml's own upload) needs no stand-in: the bytes land in the fake's datastore."""
        backend = AzureMLBackend(**{**fake.backend_settings(), "uploader": None})
        uris = backend.upload_data({"train": data_files["train"]}, name_prefix="run")
        assert uris["train"].startswith("azureml:run-train:")
        (blob,) = [v for k, v in fake.blobs.items() if k.endswith("/train_sft.jsonl")]
        assert blob == data_files["train"].read_bytes()

    def test_other_storage_accounts_are_not_routed(self, fake: FakeAzureML) -> None:
        """Only the fake's own account is routed to it; a client of another account keeps its own transport."""
        from azure.storage.blob import BlobServiceClient

        mine = BlobServiceClient(f"https://{fake.storage_account}.blob.core.windows.net", credential=fake.credential)
        other = BlobServiceClient("https://someoneelse.blob.core.windows.net", credential=fake.credential)
        assert mine._pipeline._transport is fake.transport
        assert other._pipeline._transport is not fake.transport


def test_mlflow_reads_runs_params_and_history_through_the_loopback_server(fake: FakeAzureML) -> None:
    """Plain mlflow, given the workspace's tracking URI while the fake serves, reads a job's run and metrics."""
    pytest.importorskip("mlflow", reason="the MLflow review needs mlflow (the local extra)")
    from mlflow.tracking import MlflowClient

    fake.add_job("done")
    with fake.serve() as url:
        workspace = fake.ml_client().workspaces.get(fake.workspace_name)
        assert workspace.mlflow_tracking_uri.startswith(url + "/mlflow/v1.0/subscriptions/")
        client = MlflowClient(tracking_uri=workspace.mlflow_tracking_uri)
        run = client.get_run("done")
        history = client.get_metric_history("done", "eval_loss")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train_loss"] == 1.05
    assert [m.step for m in history] == [20, 40, 60]
    assert not workspace.mlflow_tracking_uri.startswith("azureml://")
    assert fake.ml_client().workspaces.get(fake.workspace_name).mlflow_tracking_uri.startswith("azureml://")
