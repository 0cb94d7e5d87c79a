"""The notebook's whole flow on FakeAzureML, through AzureMLBackend and EndpointDeployer, checked on the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftkit import EndpointDeployer
from ftkit.backends.azureml import AzureMLBackend
from ftkit.backends.base import FinetuneRequest, RegisterRequest
from ftkit.compute import ComputeValidator
from ftkit.jobfile import JobFile
from ftkit.plan import plan_run
from ftkit.testing import FakeAzureML, FakeClock
from ftkit.waiting import wait_for_job

from .conftest import CONVERSATION


def run_notebook(
    backend: AzureMLBackend,
    job: JobFile,
    statuses: list[str],
    stamp: str = "1700000000",
    clock: FakeClock | None = None,
) -> dict[str, Any]:
    model = backend.resolve_model(job.model.ref())
    validator = ComputeValidator(model.finetune_compute_allow_list, job.compute.gpus_per_node)
    check = backend.ensure_compute(job.compute, validator)
    files = {"train": Path(str(job.data.train_file)), "test": Path(str(job.data.test_file))}
    uris = backend.upload_data(files, name_prefix=job.name)
    schema = backend.component_schema(job.finetune.component_name, job.finetune.component_version)
    plan = plan_run(job, schema, model=model, gpus_per_node=check.gpus_per_node)
    request = FinetuneRequest(plan=plan, compute=check, train_data=uris["train"], test_data=uris["test"])
    handle = backend.submit_finetune(request)
    waits = {"clock": clock, "sleep": clock.sleep} if clock is not None else {}
    done = wait_for_job(
        backend,
        handle.name,
        poll_s=60,
        on_status=lambda h: statuses.append(f"{h.status} {h.progress or ''}"),
        **waits,
    )
    metrics = backend.read_metrics(done)
    registered = backend.register_model(
        RegisterRequest(
            job=done,
            name="Phi-3-mini-4k-instruct-ultrachat-200k",
            version=stamp,
            tags={"ftkit.base_model": model.asset_id},
        )
    )
    answers = []
    with EndpointDeployer.from_job(
        backend, job, name=job.deploy.endpoint_name or f"ultrachat-completion-{stamp}", model_ref=model
    ) as deployer:
        info = deployer.deploy(registered)
        answers.append(deployer.invoke(CONVERSATION))
        answers.append(deployer.invoke(deployer.request_body(CONVERSATION[:1])))
    return {
        "model": model,
        "check": check,
        "uris": uris,
        "handle": done,
        "metrics": metrics,
        "registered": registered,
        "info": info,
        "answers": answers,
    }


class TestNotebookFlow:
    def test_whole_flow_requests(
        self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile, clock: FakeClock
    ) -> None:
        """Every stage runs through the real MLClient; the request log holds exactly the right writes."""
        statuses: list[str] = []
        out = run_notebook(backend, job, statuses, clock=clock)

        # model: resolved by label, pinned, tags read
        assert out["model"].version == "15"
        assert "Standard_NC6s_v3" in (out["model"].inference_compute_allow_list or ())
        # compute: created dedicated (the notebook's size), checked against the SKU list
        (compute_put,) = fake.calls("PUT", r"/computes/")
        props = compute_put.body["properties"]["properties"]
        assert props["vmSize"] == "Standard_ND40rs_v2"
        assert props["vmPriority"] == "Dedicated"
        assert out["check"].gpus_per_node == 8
        # data: two assets, content-addressed, uploaded once each
        assert len(fake.calls("PUT", r"/data/")) == 2
        assert len(fake.blobs) == 2
        assert out["uris"]["train"].startswith("azureml:phi3-ultrachat-train:")
        # job: one PUT, pinned registry component, parameters in the component's encoding, one cluster
        (job_put,) = fake.calls("PUT", r"/jobs/")
        node = job_put.body["properties"]["jobs"]["node"]
        assert node["componentId"].endswith("/components/chat_completion_pipeline/versions/0.0.82")
        inputs = node["inputs"]
        assert inputs["apply_lora"]["value"] == "true"
        assert inputs["deepspeed_stage"]["value"] == "2"
        assert inputs["num_train_epochs"]["value"] == "3"
        assert inputs["learning_rate"]["value"] == "5e-06"
        assert inputs["number_of_gpu_to_use_finetuning"]["value"] == "8"
        for compute_input in (
            "compute_model_import",
            "compute_preprocess",
            "compute_finetune",
            "compute_model_evaluation",
        ):
            assert inputs[compute_input]["value"] == "gpu-cluster-big"
        assert inputs["mlflow_model_path"]["uri"].endswith("/models/Phi-3-mini-4k-instruct/versions/15")
        assert inputs["train_file_path"]["uri"].endswith(
            "/data/phi3-ultrachat-train/versions/" + out["uris"]["train"].rsplit(":", 1)[1]
        )
        assert job_put.body["properties"]["experimentName"] == "chat_completion_Phi-3-mini-4k-instruct"
        assert job_put.body["properties"]["settings"]["force_rerun"] is True
        # wait: Running (each step as it starts, with its last log line) -> Completed, reported on change only
        assert statuses[0].startswith("Running step ft_nlp_common_validation: ")
        assert statuses[1].startswith("Running step chat_completion_datapreprocess: ")
        assert statuses[-1] == "Completed "
        assert len(statuses) == len(set(statuses))
        # metrics: the HF Trainer keys, by step
        assert {"loss", "eval_loss", "learning_rate", "grad_norm"} <= set(out["metrics"].keys)
        assert out["metrics"].series("loss")[0][0] == 10
        # registration: the pipeline output as an MLflow model, with lineage tags
        (model_put,) = fake.calls("PUT", r"/models/")
        mprops = model_put.body["properties"]
        assert mprops["modelUri"] == f"azureml://jobs/{out['handle'].name}/outputs/trained_model"
        assert mprops["modelType"] == "mlflow_model"
        assert mprops["tags"]["ftkit.finetune_job"] == out["handle"].name
        # endpoint: one create (key auth), one deployment, traffic 100% to demo, then deleted
        endpoint_puts = fake.calls("PUT", r"/onlineEndpoints/[^/]+$")
        assert endpoint_puts[0].body["properties"]["authMode"] == "Key"
        assert [p.body["properties"].get("traffic") or {} for p in endpoint_puts] == [{}, {"demo": 100}]
        (deployment_put,) = fake.calls("PUT", r"/deployments/")
        dprops = deployment_put.body["properties"]
        assert dprops["instanceType"] == "Standard_NC6s_v3"
        assert deployment_put.body["sku"]["capacity"] == 1
        assert dprops["livenessProbe"]["initialDelay"] == "PT10M"
        assert dprops["requestSettings"]["requestTimeout"] == "PT1M30S"
        assert dprops["model"].endswith("/models/Phi-3-mini-4k-instruct-ultrachat-200k/versions/1700000000")
        # scoring: the deployment header on every call, the notebook's body, a reply
        scores = fake.calls("POST", r"^/score$")
        assert len(scores) == 2
        assert all(s.headers.get("azureml-model-deployment") == "demo" for s in scores)
        assert scores[0].body["input_data"]["input_string"] == [CONVERSATION]
        assert scores[0].body["input_data"]["parameters"]["max_new_tokens"] == 200
        assert scores[0].body["params"] == {}
        assert out["answers"][0]["output"].startswith("[demo:")
        # cleanup
        assert fake.endpoint("ultrachat-completion-1700000000") is None
        assert len(fake.calls("DELETE", r"/onlineEndpoints/")) == 1
        # the only errors are existence checks (404 on GET) before creating
        assert {(r.method, r.status) for r in fake.requests if r.status >= 400} == {("GET", 404)}

    def test_fake_without_shared_matches_real_spec(self, tmp_path: Path, pipeline_spec: Path, job: JobFile) -> None:
        """The component generated from the bundled schema and the real spec give the same job inputs."""
        bodies = []
        for fake in (FakeAzureML(), FakeAzureML(component_spec=pipeline_spec)):
            backend = AzureMLBackend(**fake.backend_settings())
            run_notebook(backend, job, [], clock=FakeClock())
            (put,) = fake.calls("PUT", r"/jobs/")
            bodies.append(put.body["properties"]["jobs"]["node"]["inputs"])
        strip = {"train_file_path", "test_file_path"}
        assert {k: v for k, v in bodies[0].items() if k not in strip} == {
            k: v for k, v in bodies[1].items() if k not in strip
        }

    def test_second_upload_reuses_assets(
        self, fake: FakeAzureML, backend: AzureMLBackend, data_files: dict[str, Path]
    ) -> None:
        """Uploading the same files again creates nothing new (assets are content-addressed)."""
        first = backend.upload_data(data_files, name_prefix="run")
        second = backend.upload_data(data_files, name_prefix="run")
        assert first == second
        assert len(fake.calls("PUT", r"/data/")) == 2
        assert backend.upload_data({"train": "azureml://datastores/x/paths/t.jsonl"}, name_prefix="r") == {
            "train": "azureml://datastores/x/paths/t.jsonl"
        }

    def test_register_twice_is_idempotent(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """Registering the same job's model again returns the existing version without a second PUT."""
        from ftkit.backends.base import JobHandle

        fake.add_job("job-1")
        handle = JobHandle(name="job-1", status="Completed", backend="azureml")
        request = RegisterRequest(job=handle, name="m", version="1", tags={"ftkit.job": "job-file-name"})
        assert backend.register_model(request) == backend.register_model(request)
        assert len(fake.calls("PUT", r"/models/")) == 1

    def test_existing_compute_is_used(self, fake: FakeAzureML, backend: AzureMLBackend, job: JobFile) -> None:
        """An existing cluster is read, not recreated."""
        fake.add_compute("gpu-cluster-big", "Standard_ND40rs_v2")
        check = backend.ensure_compute(job.compute, ComputeValidator(None, 8))
        assert check.cluster.size == "Standard_ND40rs_v2"
        assert fake.calls("PUT", r"/computes/") == []
