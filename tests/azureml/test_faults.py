"""Injected faults: transient ones recover within the attempt bound, permanent ones raise the right error fast."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from ftkit import EndpointDeployer
from ftkit.backends.azureml import AzureMLBackend
from ftkit.backends.base import JobHandle, RegisteredModel
from ftkit.compute import ComputeValidator
from ftkit.exceptions import (
    AuthError,
    ComputeValidationError,
    ConflictError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ProbeFailedError,
    QuotaError,
    ScoringError,
    TransientBackendError,
)
from ftkit.jobfile import ComputeSection, DeploySection, JobFile
from ftkit.model import FoundationModelRef
from ftkit.retry import MAX_ATTEMPTS
from ftkit.testing import FakeAzureML, FakeClock
from ftkit.waiting import wait_for_job

from .conftest import CONVERSATION

MODEL = RegisteredModel(name="ft", version="1", id="azureml:ft:1")
ENDPOINT = "ep-faults"


def deployer(backend: AzureMLBackend) -> EndpointDeployer:
    return EndpointDeployer(backend, ENDPOINT, settings=DeploySection())


class TestTransient:
    def test_429_with_retry_after_recovers(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """Two 429s on a GET, then success: three attempts, no more."""
        fake.add_compute("gpu", "Standard_ND40rs_v2")
        fault = fake.fail("GET", r"/computes/gpu$", status=429, retry_after=7, times=2)
        assert backend.describe_compute("gpu").size == "Standard_ND40rs_v2"
        assert fault.hits == 2
        assert len(fake.calls("GET", r"/computes/gpu$")) == 3

    def test_retry_after_is_carried(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A persistent 429 gives up after MAX_ATTEMPTS with the service's Retry-After on the error."""
        fake.add_compute("gpu", "Standard_ND40rs_v2")
        fake.fail("GET", r"/computes/gpu$", status=429, retry_after=7, times=10)
        with pytest.raises(TransientBackendError) as info:
            backend.describe_compute("gpu")
        assert info.value.retry_after == 7
        assert info.value.status_code == 429
        assert len(fake.calls("GET", r"/computes/gpu$")) == MAX_ATTEMPTS

    def test_503_on_job_put_makes_one_job(self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile) -> None:
        """A retried job PUT reuses the job's name, so the service ends up with one job."""
        from ftkit.backends.base import FinetuneRequest
        from ftkit.plan import plan_run

        model = backend.resolve_model(job.model.ref())
        check = backend.ensure_compute(job.compute, ComputeValidator(model.finetune_compute_allow_list, 8))
        plan = plan_run(job, model=model, gpus_per_node=8)
        request = FinetuneRequest(
            plan=plan,
            compute=check,
            train_data="azureml://datastores/workspaceblobstore/paths/t.jsonl",
            test_data="azureml://datastores/workspaceblobstore/paths/v.jsonl",
        )
        fake.fail("PUT", r"/jobs/", status=503, times=2)
        handle = backend.submit_finetune(request)
        puts = fake.calls("PUT", r"/jobs/")
        assert len(puts) == 3
        assert {p.path for p in puts} == {puts[0].path}
        assert fake.job(handle.name) is not None

    def test_connection_reset_on_endpoint_put(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A connection reset while creating the endpoint is retried; the endpoint is created once."""
        fake.reset_connection("PUT", r"/onlineEndpoints/[^/]+$", times=1)
        with deployer(backend) as d:
            d.deploy(MODEL)
        assert len(fake.calls("PUT", r"/onlineEndpoints/[^/]+$")) == 3  # reset, create, traffic
        assert fake.endpoint(ENDPOINT) is None

    def test_scoring_recovers_from_reset_and_503(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """Scoring survives a dropped connection and a 503, naming the deployment on every attempt."""
        with deployer(backend) as d:
            d.deploy(MODEL)
            fake.reset_connection("POST", r"^/score$", during="response")
            fake.fail("POST", r"^/score$", status=503, retry_after=1)
            answer = d.invoke(CONVERSATION)
        scores = fake.calls("POST", r"^/score$")
        assert len(scores) == 3
        assert all(s.headers["azureml-model-deployment"] == "demo" for s in scores)
        assert answer["output"].startswith("[demo:")

    def test_upload_is_not_retried_on_top_of_the_blob_client(
        self, fake: FakeAzureML, data_files: dict[str, Path]
    ) -> None:
        """azure-storage-blob retries its own requests; the backend calls the uploader once, so at most 4 attempts."""
        calls: list[Path] = []

        def flaky(path: Path, destination: str) -> str:
            calls.append(path)
            raise TransientBackendError("blob upload: connection reset", operation="upload_data")

        backend = AzureMLBackend(**{**fake.backend_settings(), "uploader": flaky})
        with pytest.raises(TransientBackendError):
            backend.upload_data({"train": data_files["train"]}, name_prefix="run")
        assert calls == [data_files["train"]]
        assert not fake.calls("PUT", r"/data/")

    def test_scoring_500_is_not_retried(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A 500 from the scoring container is the script failing on this input: one POST, a ScoringError."""
        with deployer(backend) as d:
            d.deploy(MODEL)
            fake.fail("POST", r"^/score$", status=500, message="scoring script raised KeyError: 'input_data'")
            with pytest.raises(ScoringError, match="answered 500") as info:
                d.invoke(CONVERSATION)
        assert info.value.status_code == 500
        assert len(fake.calls("POST", r"^/score$")) == 1

    def test_persistent_503_stops_at_four(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """No call makes more than MAX_ATTEMPTS attempts (azure-core does not retry underneath)."""
        fake.fail("GET", r"/registries/azureml/models/", status=503, times=100)
        with pytest.raises(TransientBackendError):
            backend.resolve_model(FoundationModelRef(name="Phi-3-mini-4k-instruct"))
        assert len(fake.calls("GET", r"/registries/azureml/models/")) == MAX_ATTEMPTS


class TestPermanent:
    def test_quota_at_deployment_put(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A synchronous OutOfQuota (400 at PUT) raises QuotaError after one attempt; the endpoint is deleted."""
        fake.fail_deployment_quota(at="put")
        with pytest.raises(QuotaError) as info, deployer(backend) as d:
            d.deploy(MODEL)
        assert "quota" in str(info.value).lower()
        assert len(fake.calls("PUT", r"/deployments/")) == 1
        assert fake.endpoint(ENDPOINT) is None
        assert len(fake.calls("DELETE", r"/onlineEndpoints/")) == 1

    def test_quota_while_polling(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """OutOfQuota from the LRO is terminal: QuotaError, no second PUT, endpoint deleted."""
        fake.fail_deployment_quota(at="polling")
        with pytest.raises(QuotaError), deployer(backend) as d:
            d.deploy(MODEL)
        assert len(fake.calls("PUT", r"/deployments/")) == 1
        assert fake.endpoint(ENDPOINT) is None

    def test_liveness_probe_failure_has_logs(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A crashing container raises ProbeFailedError with the deployment's logs; the endpoint is deleted."""
        fake.fail_liveness()
        with pytest.raises(ProbeFailedError) as info, deployer(backend) as d:
            d.deploy(MODEL)
        error = info.value
        assert error.endpoint == ENDPOINT
        assert error.deployment == "demo"
        assert error.logs is not None
        assert "CUDA out of memory" in error.logs
        assert len(fake.calls("PUT", r"/deployments/")) == 1
        assert fake.endpoint(ENDPOINT) is None

    def test_endpoint_create_failure_still_cleans_up(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """An endpoint whose creation fails while polling is deleted by the context manager."""
        fake.fail_operation("endpoint", code="InternalServerError", message="provisioning failed")
        with pytest.raises(Exception, match="provisioning failed"), deployer(backend):
            pass
        assert fake.endpoint(ENDPOINT) is None

    def test_code_inside_fails(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """The endpoint is deleted when the user's code inside the block raises."""

        def use() -> None:
            with deployer(backend) as d:
                d.deploy(MODEL)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            use()
        assert fake.endpoint(ENDPOINT) is None

    def test_job_failure(self, fake: FakeAzureML, backend: AzureMLBackend, clock: FakeClock) -> None:
        """A failed job raises JobFailedError with its name, status and Studio URL."""
        fake.fail_job("Execution failed in step finetune")
        fake.add_compute("gpu", "Standard_NC6s_v3")
        from azure.ai.ml import command

        ml = backend.ml_client  # the real client; the job goes through the fake
        job = command(command="echo hi", environment="azureml:env:1", compute="gpu", name="j1")
        ml.jobs.create_or_update(job)
        with pytest.raises(JobFailedError) as info:
            wait_for_job(backend, "j1", poll_s=60, clock=clock, sleep=clock.sleep)
        assert info.value.status == "Failed"
        assert info.value.job_name == "j1"
        assert info.value.studio_url is not None
        assert "ml.azure.com/runs/j1" in info.value.studio_url

    def test_job_timeout(self, fake: FakeAzureML, clock: FakeClock) -> None:
        """A job still running at the deadline raises JobTimeoutError; re-attaching by name continues."""
        slow = FakeAzureML(job_statuses=("NotStarted", "Running", "Running", "Running", "Running", "Completed"))
        backend = AzureMLBackend(**slow.backend_settings())
        slow.add_compute("c", "Standard_NC6s_v3")
        from azure.ai.ml import command

        backend.ml_client.jobs.create_or_update(
            command(command="echo", environment="azureml:e:1", compute="c", name="j2")
        )
        with pytest.raises(JobTimeoutError) as info:
            wait_for_job(backend, "j2", timeout_s=90, poll_s=60, clock=clock, sleep=clock.sleep)
        assert info.value.job_name == "j2"
        assert clock.now >= 90
        assert wait_for_job(backend, "j2", poll_s=60, clock=clock, sleep=clock.sleep).status == "Completed"

    def test_unauthorized(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A 401 is an AuthError after one attempt, with advice on setting up a credential."""
        fake.fail("GET", r"/computes/gpu$", status=401, times=10)
        with pytest.raises(AuthError, match="az login"):
            backend.describe_compute("gpu")
        assert len(fake.calls("GET", r"/computes/gpu$")) == 1

    def test_missing_model_by_label(self, backend: AzureMLBackend) -> None:
        """A registry model that does not exist is a NotFoundError (azure-ai-ml says ValidationException)."""
        with pytest.raises(NotFoundError):
            backend.resolve_model(FoundationModelRef(name="No-Such-Model"))

    def test_missing_model_version(self, backend: AzureMLBackend) -> None:
        """A missing pinned version is a NotFoundError."""
        with pytest.raises(NotFoundError):
            backend.resolve_model(FoundationModelRef(name="Phi-3-mini-4k-instruct", version="999"))

    def test_missing_component_version(self, backend: AzureMLBackend) -> None:
        """A component version the registry lacks is a NotFoundError."""
        with pytest.raises(NotFoundError):
            backend.live_schema("chat_completion_pipeline", "9.9.9")

    def test_conflict(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A 409 is a ConflictError, not retried."""
        fake.fail("DELETE", r"/deployments/", status=409, times=10)
        with deployer(backend) as d:
            d.deploy(MODEL)
            with pytest.raises(ConflictError):
                backend.endpoints.delete_deployment(ENDPOINT, "demo")
        assert len(fake.calls("DELETE", r"/deployments/")) == 1

    def test_register_conflict(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A model version registered from another job is a ConflictError, not overwritten."""
        from ftkit.backends.base import RegisterRequest

        fake.add_job("a")
        fake.add_job("b")
        backend.register_model(RegisterRequest(job=JobHandle(name="a", status="Completed"), name="m", version="1"))
        with pytest.raises(ConflictError):
            backend.register_model(RegisterRequest(job=JobHandle(name="b", status="Completed"), name="m", version="1"))


class TestCompute:
    def test_low_priority_fallback(self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile) -> None:
        """Dedicated creation failing for quota falls back to low priority, as the notebook does."""
        fake.fail(
            "PUT",
            r"/computes/",
            status=400,
            code="QuotaExceeded",
            message="dedicated vCPU quota exceeded",
            when=lambda r: r.body["properties"]["properties"]["vmPriority"] == "Dedicated",
        )
        check = backend.ensure_compute(job.compute, ComputeValidator(None, 8))
        assert check.cluster.tier in ("lowpriority", "low_priority")
        assert [p.body["properties"]["properties"]["vmPriority"] for p in fake.calls("PUT", r"/computes/")] == [
            "Dedicated",
            "LowPriority",
        ]

    def test_both_tiers_fail(self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile) -> None:
        """Quota in both tiers is a QuotaError naming both attempts."""
        fake.fail("PUT", r"/computes/", status=400, code="QuotaExceeded", message="vCPU quota exceeded", times=2)
        with pytest.raises(QuotaError, match="low_priority"):
            backend.ensure_compute(job.compute, ComputeValidator(None, 8))

    def test_missing_without_size(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """A missing cluster with no size to create it is a NotFoundError listing the clusters."""
        fake.add_compute("cpu-small", "Standard_DS3_v2")
        with pytest.raises(NotFoundError, match="cpu-small"):
            backend.ensure_compute(ComputeSection(cluster="nope"), ComputeValidator())

    def test_failed_cluster(self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile) -> None:
        """A cluster whose provisioning failed is rejected with the available GPU sizes."""
        fake.add_compute("gpu-cluster-big", "Standard_ND40rs_v2", state="Failed")
        with pytest.raises(ComputeValidationError) as info:
            backend.ensure_compute(job.compute, ComputeValidator(None, 8))
        assert "Standard_ND40rs_v2" in info.value.available_sizes

    def test_wrong_sku_for_allow_list(self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile) -> None:
        """A cluster outside the model's finetune allow-list is rejected."""
        model = backend.resolve_model(job.model.ref())
        fake.add_compute("small", "Standard_NC6s_v3")
        with pytest.raises(ComputeValidationError, match="allow"):
            backend.ensure_compute(
                attrs.evolve(job.compute, cluster="small", gpus_per_node=None),
                ComputeValidator(model.finetune_compute_allow_list),
            )
