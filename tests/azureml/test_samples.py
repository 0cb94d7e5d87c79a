"""FakeAzureML beyond the seed notebook: what azureml-examples' other fine-tuning samples call, offline.

Each test drives the real azure-ai-ml client (and the real mlflow client, where the samples use it) against the
fake, the way those notebooks do: another task's registry pipeline, its child runs' metrics found with
``mlflow.search_runs``, a task-shaped endpoint answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftkit.testing import FakeAzureML, RegistryModel

TASK_PIPELINE_SPEC = """\
$schema: https://azuremlschemas.azureedge.net/latest/pipelineComponent.schema.json
type: pipeline
name: {name}
version: 0.0.{version}
inputs:
  mlflow_model_path: {{type: mlflow_model}}
  compute_model_import: {{type: string}}
  compute_preprocess: {{type: string}}
  compute_finetune: {{type: string}}
  compute_model_evaluation: {{type: string, optional: true}}
  train_file_path: {{type: uri_file}}
  test_file_path: {{type: uri_file, optional: true}}
  task_name: {{type: string, optional: true}}
outputs:
  mlflow_model_folder: {{type: mlflow_model}}
jobs:
  finetune:
    type: command
    compute: ${{{{parent.inputs.compute_finetune}}}}
    inputs:
      model: ${{{{parent.inputs.mlflow_model_path}}}}
    outputs:
      mlflow_model_folder: ${{{{parent.outputs.mlflow_model_folder}}}}
    component: azureml://registries/azureml/components/{name}_finetune/versions/0.0.{version}
"""


def task_pipeline_spec(tmp_path: Path, name: str, version: int = 3) -> Path:
    """A spec with the inputs the samples pass to ``<task>_pipeline`` (the real ones are pipeline components)."""
    path = tmp_path / f"{name}-{version}.yaml"
    path.write_text(TASK_PIPELINE_SPEC.format(name=name, version=version), encoding="utf-8")
    return path


BERT = RegistryModel(
    name="bert-base-uncased",
    version="3",
    tags={"task": "text-classification", "computes_allow_list": "['Standard_NC6s_v3']"},
    properties={"finetune-recommended-sku": "Standard_NC6s_v3", "evaluation-recommended-sku": "Standard_DS3_v2"},
)


@pytest.fixture
def classification_fake(tmp_path: Path) -> FakeAzureML:
    fake = FakeAzureML(
        models=[BERT, RegistryModel(version="15")],
        components=[task_pipeline_spec(tmp_path, "text_classification_pipeline", v) for v in (2, 3)],
    )
    fake.add_compute("gpu", "Standard_NC6s_v3")
    return fake


def run_task_pipeline(fake: FakeAzureML, tmp_path: Path, pipeline_name: str, **extra: Any) -> Any:
    """Submit the sample's pipeline (registry model and component, local data) and poll it to its end."""
    from azure.ai.ml import Input
    from azure.ai.ml.dsl import pipeline

    ml = fake.ml_client()
    registry = fake.ml_client(registry_name="azureml")
    foundation = registry.models.get("bert-base-uncased", label="latest")
    component = registry.components.get(name=pipeline_name, label="latest")
    train = tmp_path / "small_train.jsonl"
    train.write_text('{"text": "i feel great", "label_string": "joy"}\n', encoding="utf-8")

    @pipeline()  # type: ignore[untyped-decorator]
    def create() -> dict[str, Any]:
        node = component(
            mlflow_model_path=foundation.id,
            compute_model_import="gpu",
            compute_preprocess="gpu",
            compute_finetune="gpu",
            train_file_path=Input(type="uri_file", path=str(train)),
            test_file_path=Input(type="uri_file", path=str(train)),
            **extra,
        )
        return {"trained_model": node.outputs.mlflow_model_folder}

    job = ml.jobs.create_or_update(create(), experiment_name="text-classification-emotion-detection")
    for _ in range(50):
        if ml.jobs.get(job.name).status in ("Completed", "Failed", "Canceled"):
            break
    return job


@pytest.fixture
def tracking(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Plain mlflow, with the global tracking URI put back after the test."""
    mlflow = pytest.importorskip("mlflow", reason="the samples' metrics review needs mlflow (the local extra)")
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    return mlflow


class TestRegistryCatalogue:
    def test_models_carry_tags_and_properties_and_components_resolve_by_label(
        self, classification_fake: FakeAzureML
    ) -> None:
        registry = classification_fake.ml_client(registry_name="azureml")
        model = registry.models.get("bert-base-uncased", label="latest")
        assert model.version == "3"
        assert model.tags["task"] == "text-classification"
        assert model.properties["finetune-recommended-sku"] == "Standard_NC6s_v3"
        assert registry.components.get(name="text_classification_pipeline", label="latest").version == "0.0.3"
        assert registry.components.get(name="text_classification_pipeline", version="0.0.2").version == "0.0.2"
        # The seed's pipeline is still served beside it.
        assert (
            registry.components.get(name="chat_completion_pipeline", label="latest").name == "chat_completion_pipeline"
        )


class TestMlflowChildRuns:
    def test_search_runs_finds_the_training_and_evaluation_runs_as_the_samples_do(
        self, classification_fake: FakeAzureML, tmp_path: Path, tracking: Any
    ) -> None:
        """The notebook's own cell: search by root run id, pick the run with ``epoch`` and the one with ``accuracy``."""
        fake = classification_fake
        job = run_task_pipeline(fake, tmp_path, "text_classification_pipeline", compute_model_evaluation="gpu")
        ml = fake.ml_client()
        assert ml.jobs.get(job.name).status == "Completed"
        with fake.serve():
            tracking.set_tracking_uri(ml.workspaces.get(fake.workspace_name).mlflow_tracking_uri)
            runs = tracking.search_runs(
                experiment_names=["text-classification-emotion-detection"],
                filter_string="tags.mlflow.rootRunId='" + job.name + "'",
                output_format="list",
            )
            training = [r for r in runs if "epoch" in r.data.metrics and r.info.run_id != job.name]
            evaluation = [r for r in runs if "accuracy" in r.data.metrics]
            assert [r.info.run_name for r in training] == ["text_classification_finetune"]
            assert [r.info.run_name for r in evaluation] == ["compute_metrics"]
            metrics = training[0].data.metrics
            assert metrics["epoch"] == 3.0
            assert metrics["eval_loss"] < 2.0
            assert metrics["train_runtime"] > 0
            assert 0 < evaluation[0].data.metrics["accuracy"] <= 1
            assert all(r.data.tags["mlflow.rootRunId"] == job.name for r in runs)
            assert {r.info.status for r in runs} == {"FINISHED"}
            # A filter the samples also write: attributes and AND; and a pandas frame, as the default.
            finished = tracking.search_runs(
                experiment_names=["text-classification-emotion-detection"],
                filter_string=f"tags.mlflow.rootRunId = '{job.name}' AND attributes.run_name LIKE '%finetune'",
            )
            assert list(finished["tags.mlflow.runName"]) == ["text_classification_finetune"]
            assert tracking.get_experiment_by_name("never-created") is None
            assert tracking.search_runs(experiment_names=["never-created"], output_format="list") == []
            with pytest.raises(tracking.exceptions.MlflowException, match="Invalid clause"):
                tracking.search_runs(experiment_names=["Default"], filter_string="tags.x ~ 'y'")

    def test_a_running_finetune_step_shows_its_metrics_so_far(self, tmp_path: Path, tracking: Any) -> None:
        """Metrics follow the job's timeline: half the trainer's points while it runs, the summary at the end."""
        fake = FakeAzureML(
            models=[BERT],
            components=[task_pipeline_spec(tmp_path, "text_classification_pipeline")],
            job_statuses=("Running",) * 12 + ("Completed",),
        )
        fake.add_compute("gpu", "Standard_NC6s_v3")
        from azure.ai.ml import Input
        from azure.ai.ml.dsl import pipeline

        ml = fake.ml_client()
        component = fake.ml_client(registry_name="azureml").components.get(
            name="text_classification_pipeline", label="latest"
        )
        train = tmp_path / "t.jsonl"
        train.write_text("{}\n", encoding="utf-8")

        @pipeline()  # type: ignore[untyped-decorator]
        def create() -> None:
            component(
                mlflow_model_path="azureml://registries/azureml/models/bert-base-uncased/versions/3",
                compute_model_import="gpu",
                compute_preprocess="gpu",
                compute_finetune="gpu",
                train_file_path=Input(type="uri_file", path=str(train)),
            )

        job = ml.jobs.create_or_update(create(), experiment_name="exp")
        run_id = f"{job.name}-text_classification_finetune"
        client = tracking.MlflowClient
        with fake.serve():
            uri = ml.workspaces.get(fake.workspace_name).mlflow_tracking_uri
            seen: list[dict[str, float]] = []
            for _ in range(20):
                status = ml.jobs.get(job.name).status
                steps = {s["name"]: s["status"] for s in fake.job_steps(job.name)}
                if steps["text_classification_finetune"] != "NotStarted":
                    seen.append(client(tracking_uri=uri).get_run(run_id).data.metrics)
                if status == "Completed":
                    break
        assert any("train_runtime" not in m and "loss" in m for m in seen)  # a running trainer
        assert "train_runtime" in seen[-1]
        assert "accuracy" not in seen[-1]
        # No evaluation compute given: no evaluation steps.
        assert "compute_metrics" not in {s["name"] for s in fake.job_steps(job.name)}

    def test_a_failed_finetune_step_is_a_failed_run_with_partial_metrics(
        self, classification_fake: FakeAzureML, tmp_path: Path, tracking: Any
    ) -> None:
        fake = classification_fake
        fake.fail_job("CUDA out of memory", step="text_classification_finetune")
        job = run_task_pipeline(fake, tmp_path, "text_classification_pipeline", compute_model_evaluation="gpu")
        ml = fake.ml_client()
        assert ml.jobs.get(job.name).status == "Failed"
        with fake.serve():
            client = tracking.MlflowClient(tracking_uri=ml.workspaces.get(fake.workspace_name).mlflow_tracking_uri)
            (experiment,) = [
                e for e in client.search_experiments() if e.name == "text-classification-emotion-detection"
            ]
            runs = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.mlflow.rootRunId = '{job.name}' AND attributes.status = 'FAILED'",
                order_by=["attributes.start_time ASC"],
            )
            assert [r.info.run_name for r in runs] == [
                job.display_name or job.name,
                "node",  # the pipeline node holding the registry pipeline's steps (a nested pipeline run)
                "text_classification_finetune",
            ]
            finetune = runs[-1]
            assert "loss" in finetune.data.metrics
            assert "train_runtime" not in finetune.data.metrics  # it never finished
            # Nothing logged accuracy: the evaluation never ran.
            assert not client.search_runs([experiment.experiment_id], filter_string="metrics.accuracy > 0")

    def test_metrics_a_test_sets_are_kept(
        self, classification_fake: FakeAzureML, tmp_path: Path, tracking: Any
    ) -> None:
        """A test scripts a poor evaluation by setting the step's metrics; the user's gate sees them."""
        fake = classification_fake
        job = run_task_pipeline(fake, tmp_path, "text_classification_pipeline", compute_model_evaluation="gpu")
        fake.metrics[f"{job.name}-compute_metrics"] = {"accuracy": [(0, 0.41, 1_735_690_800_000)]}
        with fake.serve():
            tracking.set_tracking_uri(fake.ml_client().workspaces.get(fake.workspace_name).mlflow_tracking_uri)
            runs = tracking.search_runs(
                experiment_names=["text-classification-emotion-detection"],
                filter_string=f"tags.mlflow.rootRunId='{job.name}' AND metrics.accuracy < 0.5",
                output_format="list",
            )
        assert [r.data.metrics["accuracy"] for r in runs] == [0.41]


def deploy(fake: FakeAzureML, model_id: str, endpoint: str = "emo", deployment: str = "demo") -> Any:
    """The samples' deployment cells: a key-auth endpoint and one deployment of ``model_id``."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

    ml = fake.ml_client()
    ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=endpoint, auth_mode="key")).result()
    ml.online_deployments.begin_create_or_update(
        ManagedOnlineDeployment(
            name=deployment,
            endpoint_name=endpoint,
            model=model_id,
            instance_type="Standard_DS3_v2",
            instance_count=1,
        )
    ).result()
    return ml


def invoke(ml: Any, tmp_path: Path, body: Any, endpoint: str = "emo", deployment: str = "demo") -> Any:
    request = tmp_path / "sample_score.json"
    request.write_text(json.dumps(body), encoding="utf-8")
    raw = ml.online_endpoints.invoke(endpoint_name=endpoint, deployment_name=deployment, request_file=str(request))
    return json.loads(raw)


class TestTaskShapedScoring:
    def test_a_model_fine_tuned_for_classification_answers_labels(
        self, classification_fake: FakeAzureML, tmp_path: Path
    ) -> None:
        """The emotion sample: register the job's output, deploy it, score ``{"inputs": {"text": [...]}}``."""
        from azure.ai.ml.entities import Model

        fake = classification_fake
        job = run_task_pipeline(fake, tmp_path, "text_classification_pipeline")
        ml = fake.ml_client()
        model = ml.models.create_or_update(
            Model(path=f"azureml://jobs/{job.name}/outputs/trained_model", name="emotion", type="mlflow_model")
        )
        ml = deploy(fake, model.id)
        labels = invoke(ml, tmp_path, {"inputs": {"text": ["i feel great", "so sad", "meh"]}})
        assert len(labels) == 3
        assert set(labels) <= {"LABEL_0", "LABEL_1"}
        # The pandas "split" layout the other samples write gives the same answers row by row.
        split = {
            "input_data": {"columns": ["text"], "index": [0, 1, 2], "data": [["i feel great"], ["so sad"], ["meh"]]}
        }
        assert invoke(ml, tmp_path, split) == labels

    def test_text_to_text_tasks_answer_records_and_check_their_columns(self, tmp_path: Path) -> None:
        from azure.core.exceptions import HttpResponseError

        fake = FakeAzureML()
        fake.add_model("squad", "1", tags={"task": "question-answering"})
        ml = deploy(fake, "azureml:squad:1")
        body = {"input_data": {"columns": ["question", "context"], "data": [["Who?", "Ann wrote it."]]}}
        (record,) = invoke(ml, tmp_path, body)
        assert record["0"].startswith("[demo:question-answering]")
        with pytest.raises(HttpResponseError, match=r"missing \['context'\]") as err:
            invoke(ml, tmp_path, {"input_data": {"columns": ["question"], "data": [["Who?"]]}})
        assert err.value.status_code == 400
        fake.answer_with("summarization", endpoint="emo")
        (summary,) = invoke(ml, tmp_path, {"input_data": {"columns": ["article"], "data": [["A long article."]]}})
        assert summary["0"].endswith("A long article.")
        fake.answer_with("fill-mask", endpoint="emo", deployment="demo")  # the most specific choice wins
        with pytest.raises(HttpResponseError, match=r"\[MASK\]"):
            invoke(ml, tmp_path, {"input_data": ["no mask here"]})

    def test_image_tasks_take_list_shaped_inputs(self, tmp_path: Path) -> None:
        """The fridge-objects samples: a list of base64 images in, one prediction per image out."""
        import base64

        fake = FakeAzureML()
        fake.add_model("fridge", "1", tags={"task": "image-classification"})
        ml = deploy(fake, "azureml:fridge:1")
        image = base64.b64encode(b"\x89PNG fake image bytes").decode()
        prediction = invoke(ml, tmp_path, {"input_data": [image]})[0]
        assert prediction["0"]["label"] in {"can", "carton", "milk_bottle", "water_bottle"}
        fake.answer_with("image-classification-multilabel", deployment="demo")
        (labels,) = invoke(ml, tmp_path, {"input_data": [image]})
        assert all({"label", "score"} <= set(pred) for pred in labels.values())  # the sample's prediction.items()
        fake.answer_with("image-object-detection", deployment="demo")
        detections = invoke(ml, tmp_path, {"input_data": {"columns": ["image"], "data": [image]}})
        assert {"topX", "topY", "bottomX", "bottomY"} <= set(detections[0]["boxes"][0]["box"])

    def test_a_responder_answers_anything_else_and_chat_keeps_its_shape(
        self, fake: FakeAzureML, tmp_path: Path
    ) -> None:
        seen: list[Any] = []

        def responder(body: Any) -> Any:
            seen.append(body)
            if "prompt" not in body:
                raise ValueError("expected a 'prompt'")
            return {"images": [body["prompt"].upper()]}

        ml = deploy(fake, "azureml:ft:1", endpoint="chat", deployment="blue")
        deploy(fake, "azureml:ft:1", endpoint="chat", deployment="green")
        chat = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {}}}
        assert invoke(ml, tmp_path, chat, endpoint="chat", deployment="blue")["output"].endswith("You asked: hi")
        fake.answer_with(responder, endpoint="chat", deployment="green")
        assert invoke(ml, tmp_path, {"prompt": "a dog"}, endpoint="chat", deployment="green") == {"images": ["A DOG"]}
        from azure.core.exceptions import HttpResponseError

        with pytest.raises(HttpResponseError, match="expected a 'prompt'"):
            invoke(ml, tmp_path, chat, endpoint="chat", deployment="green")
        # The other deployment still answers as a chat model.
        assert "output" in invoke(ml, tmp_path, chat, endpoint="chat", deployment="blue")
        assert len(seen) == 2


class TestTwoDeploymentEvaluation:
    def test_a_zero_traffic_base_deployment_answers_by_name_beside_the_fine_tuned_one(
        self, fake: FakeAzureML, tmp_path: Path
    ) -> None:
        """The evaluation shape: base model on a 0% deployment, fine-tuned on 100%, each invoked by name."""
        fake.add_model("base", "1", tags={"task": "chat-completion"})
        ml = deploy(fake, "azureml:ft:1", endpoint="eval-ep", deployment="tuned")
        deploy(fake, "azureml:base:1", endpoint="eval-ep", deployment="base")
        endpoint = ml.online_endpoints.get("eval-ep")
        endpoint.traffic = {"tuned": 100, "base": 0}
        ml.online_endpoints.begin_create_or_update(endpoint).result()
        chat = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {}}}
        tuned = invoke(ml, tmp_path, chat, endpoint="eval-ep", deployment="tuned")
        base = invoke(ml, tmp_path, chat, endpoint="eval-ep", deployment="base")
        assert tuned["output"].startswith("[tuned:")
        assert base["output"].startswith("[base:")
        assert tuned["output"].endswith("You asked: hi")


class TestAssetsComputeAndRefusals:
    def test_data_latest_label_model_list_and_immutable_versions(self, fake: FakeAzureML, tmp_path: Path) -> None:
        from azure.ai.ml.entities import Data
        from azure.core.exceptions import HttpResponseError

        ml = fake.ml_client()
        first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        first.write_text("{}\n", encoding="utf-8")
        second.write_text('{"x": 1}\n', encoding="utf-8")
        for version, path in (("1", first), ("2", second)):
            ml.data.create_or_update(Data(name="emotion", version=version, path=str(path), type="uri_file"))
        assert ml.data.get("emotion", label="latest").version == "2"
        # The same content again is accepted (the same upload path); other content under version 1 is refused.
        ml.data.create_or_update(Data(name="emotion", version="1", path=str(first), type="uri_file"))
        with pytest.raises(HttpResponseError, match="Asset paths cannot be updated") as err:
            ml.data.create_or_update(Data(name="emotion", version="1", path=str(second), type="uri_file"))
        assert err.value.status_code == 400
        assert ml.data.get("emotion", version="1").path.endswith("a.jsonl")
        fake.add_model("ft", "2")
        listed = {m.name: m.latest_version for m in ml.models.list()}
        assert listed == {"ft": "2"}
        assert [m.version for m in ml.models.list(name="ft")] == ["1", "2"]

    def test_compute_instances_start_stop_restart_and_clusters_refuse(self, fake: FakeAzureML) -> None:
        from azure.ai.ml.entities import ComputeInstance
        from azure.core.exceptions import HttpResponseError

        ml = fake.ml_client()
        ml.compute.begin_create_or_update(ComputeInstance(name="ci-dev", size="Standard_DS3_v2")).result()
        ml.compute.begin_stop("ci-dev").result()
        assert ml.compute.get("ci-dev").state == "Stopped"
        ml.compute.begin_start("ci-dev").result()
        assert fake.compute_state("ci-dev") == "Running"
        ml.compute.begin_restart("ci-dev").result()
        assert ml.compute.get("ci-dev").state == "Running"
        fake.add_compute("gpu", "Standard_NC6s_v3")
        with pytest.raises(HttpResponseError, match="compute instances only"):
            ml.compute.begin_stop("gpu").result()

    def test_traffic_to_a_missing_deployment_is_refused(self, fake: FakeAzureML) -> None:
        from azure.core.exceptions import HttpResponseError

        ml = deploy(fake, "azureml:ft:1", endpoint="emo", deployment="blue")
        endpoint = ml.online_endpoints.get("emo")
        endpoint.traffic = {"blue": 50, "green": 50}
        with pytest.raises(HttpResponseError, match="do not exist in endpoint emo: green"):
            ml.online_endpoints.begin_create_or_update(endpoint).result()
        endpoint.traffic = {"blue": 100}
        assert ml.online_endpoints.begin_create_or_update(endpoint).result().traffic == {"blue": 100}


class TestCodeAssets:
    def test_command_job_and_deployment_code_is_uploaded_through_a_pending_upload(
        self, fake: FakeAzureML, tmp_path: Path
    ) -> None:
        """``command(code="./src")`` and a ``CodeConfiguration``: startPendingUpload, blob upload, code version."""
        from azure.ai.ml import command
        from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, ManagedOnlineEndpoint

        src = tmp_path / "src"
        src.mkdir()
        (src / "train.py").write_text("print('training')\n", encoding="utf-8")
        (src / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n", encoding="utf-8")
        fake.add_compute("gpu", "Standard_NC6s_v3")
        ml = fake.ml_client()
        env = "azureml://registries/azureml/environments/acft-hf-nlp-gpu/versions/112"
        job = ml.jobs.create_or_update(
            command(code=str(src), command="python train.py", environment=env, compute="gpu")
        )
        code_id = fake.job(job.name)["properties"]["codeId"]
        (code_put,) = fake.calls("PUT", r"/codes/[^/]+/versions/1$")
        assert code_id.endswith(code_put.path.split("/workspaces/ws-ftkit", 1)[1])
        assert code_put.body["properties"]["codeUri"].endswith("/src")
        assert any(name.endswith("/src/train.py") for name in fake.blobs)
        assert fake.blobs[next(n for n in fake.blobs if n.endswith("/src/train.py"))] == b"print('training')\n"
        ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="custom", auth_mode="key")).result()
        ml.online_deployments.begin_create_or_update(
            ManagedOnlineDeployment(
                name="blue",
                endpoint_name="custom",
                model="azureml:ft:1",
                environment=env,
                code_configuration=CodeConfiguration(code=str(src), scoring_script="score.py"),
                instance_type="Standard_DS3_v2",
                instance_count=1,
            )
        ).result()
        deployment = ml.online_deployments.get("blue", endpoint_name="custom")
        assert deployment.code_configuration.scoring_script == "score.py"
        assert len(fake.calls("POST", r"/startPendingUpload$")) == 2


class TestServerless:
    def test_a_serverless_fine_tune_registers_its_model_and_serves_it(self, tmp_path: Path) -> None:
        """The model-as-a-service sample: subscribe, fine-tune, deploy serverless, chat with the key, delete."""
        import requests
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Data, MarketplaceSubscription, ServerlessEndpoint
        from azure.ai.ml.finetuning import FineTuningTaskType, create_finetuning_job

        phi4 = RegistryModel(name="Phi-4-mini-instruct", version="2", tags={"task": "chat-completion"})
        fake = FakeAzureML(models=[phi4])
        ml, registry = fake.ml_client(), fake.ml_client(registry_name="azureml")
        base = registry.models.get("Phi-4-mini-instruct", label="latest")
        train = tmp_path / "train.jsonl"
        train.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
        data = ml.data.create_or_update(Data(path=str(train), type=AssetTypes.URI_FILE, name="chat", version="1"))
        subscription = ml.marketplace_subscriptions.begin_create_or_update(
            MarketplaceSubscription(model_id="/".join(base.id.split("/")[:-2]), name="phi-4-sub")
        ).result()
        assert subscription.status == "subscribed"
        job = ml.jobs.create_or_update(
            create_finetuning_job(
                task=FineTuningTaskType.CHAT_COMPLETION,
                training_data=data.id,
                validation_data=data.id,
                hyperparameters={"learning_rate": "0.00002", "num_train_epochs": "1"},
                model=base.id,
                name="phi4-ft-job",
                experiment_name="maas",
                output_model_name_prefix="phi-4-ft",
            )
        )
        while ml.jobs.get(job.name).status not in ("Completed", "Failed", "Canceled"):
            pass
        name = ml.jobs.get(job.name).outputs["registered_model"]["name"]
        assert ml.models.get(name, version="1").path == f"azureml://jobs/{job.name}/outputs/registered_model"
        workspace = ml.workspaces.get(fake.workspace_name)
        model_id = (
            f"azureml://locations/{workspace.location}/workspaces/{workspace._workspace_id}/models/{name}/versions/1"
        )
        ml.serverless_endpoints.begin_create_or_update(
            ServerlessEndpoint(name="phi-4-ft-ep", model_id=model_id)
        ).result()
        with fake.serve():
            endpoint = ml.serverless_endpoints.get("phi-4-ft-ep")
            key = ml.serverless_endpoints.get_keys("phi-4-ft-ep").primary_key
            payload = {"max_tokens": 64, "messages": [{"role": "user", "content": "Add more dialogue"}]}
            answer = requests.post(
                f"{endpoint.scoring_uri}/v1/chat/completions", json=payload, headers={"Authorization": key}, timeout=30
            )
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["message"]["content"].endswith("You asked: Add more dialogue")
            wrong = requests.post(
                f"{endpoint.scoring_uri}/v1/chat/completions", json=payload, headers={"Authorization": "x"}, timeout=30
            )
            assert wrong.status_code == 401
        ml.serverless_endpoints.begin_delete("phi-4-ft-ep").result()
        from azure.core.exceptions import ResourceNotFoundError

        with pytest.raises(ResourceNotFoundError):
            ml.serverless_endpoints.get("phi-4-ft-ep")

    def test_a_serverless_endpoint_of_a_missing_model_is_refused(self, fake: FakeAzureML) -> None:
        from azure.ai.ml.entities import ServerlessEndpoint
        from azure.core.exceptions import HttpResponseError

        ml = fake.ml_client()
        missing = "azureml://locations/eastus/workspaces/w/models/nope/versions/1"
        with pytest.raises(HttpResponseError, match="ModelNotFound|not found"):
            ml.serverless_endpoints.begin_create_or_update(ServerlessEndpoint(name="ep-x", model_id=missing)).result()
