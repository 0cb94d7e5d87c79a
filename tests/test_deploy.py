"""EndpointDeployer against AzureMLBackend on FakeAzureML: allow-list, blue/green, traffic, scoring, cleanup."""

from __future__ import annotations

import pytest

from ftkit import EndpointDeployer
from ftkit.backends.azureml import AzureMLBackend
from ftkit.backends.base import RegisteredModel
from ftkit.deploy import request_body
from ftkit.exceptions import ValidationError
from ftkit.jobfile import DeploySection, ScoreSection
from ftkit.model import FoundationModelRef
from ftkit.testing import FakeAzureML

BLUE = RegisteredModel(name="ft", version="1", id="azureml:ft:1")
GREEN = RegisteredModel(name="ft", version="2", id="azureml:ft:2")
BASE = FoundationModelRef(name="Phi-3-mini-4k-instruct", version="15").resolved(
    "15", {"inference_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC24ads_A100_v4']"}
)
CONVERSATION = [{"role": "user", "content": "Hello?"}]


@pytest.fixture
def fake() -> FakeAzureML:
    fake = FakeAzureML()
    fake.add_model("ft", "1")  # deployments of a model the workspace lacks fail, as on Azure
    fake.add_model("ft", "2")
    return fake


@pytest.fixture
def backend(fake: FakeAzureML) -> AzureMLBackend:
    return AzureMLBackend(**fake.backend_settings())


def test_request_body_is_the_notebooks() -> None:
    """The body nests one conversation in input_string and carries the sampling parameters."""
    body = request_body(CONVERSATION, ScoreSection(max_new_tokens=5))
    assert body == {
        "input_data": {
            "input_string": [CONVERSATION],
            "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 5},
        },
        "params": {},
    }


class TestAllowList:
    def test_rejected_instance_type(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """An instance type outside the inference allow-list fails before anything is created."""
        deployer = EndpointDeployer(
            backend, "ep-allow", settings=DeploySection(instance_type="Standard_E8s_v3"), base_model=BASE
        )
        with pytest.raises(ValidationError, match="Standard_NC6s_v3"):
            deployer.deploy(BLUE)
        assert fake.calls("PUT") == []

    def test_case_insensitive_and_override(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """Matching ignores case; allow_any_instance_type lets the user override."""
        EndpointDeployer(backend, "ep-allow", base_model=BASE).check_instance_type("standard_nc6s_v3")
        deployer = EndpointDeployer(
            backend,
            "ep-override",
            settings=DeploySection(instance_type="Standard_E8s_v3"),
            base_model=BASE,
            allow_any_instance_type=True,
        )
        with deployer:
            deployer.deploy(BLUE)
        assert fake.calls("PUT", r"/deployments/")[0].body["properties"]["instanceType"] == "Standard_E8s_v3"


class TestLifecycle:
    def test_blue_green(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """update() adds green beside demo, smoke-tests it, shifts traffic and can retire the old one."""
        events: list[str] = []
        with EndpointDeployer(backend, "ep-bg", base_model=BASE, on_event=events.append) as deployer:
            deployer.deploy(BLUE)
            info = deployer.update(GREEN, traffic=20, smoke_test=CONVERSATION)
            assert info.traffic == {"green": 20, "demo": 80}
            assert deployer.primary_deployment() == "demo"
            info = deployer.update(GREEN, traffic=100, delete_old=True)
            assert info.traffic == {"green": 100}
            assert info.deployments == ("green",)
            answer = deployer.invoke(CONVERSATION)
            assert answer["output"].startswith("[green:")
            assert "Model loaded" in deployer.logs()
        scores = fake.calls("POST", r"^/score$")
        assert [s.headers["azureml-model-deployment"] for s in scores] == ["green", "green"]
        assert fake.endpoint("ep-bg") is None
        assert len(fake.calls("PUT", r"/onlineEndpoints/[^/]+$")) == 4  # create + three traffic changes
        assert any("deleting endpoint ep-bg" in e for e in events)

    def test_traffic_must_add_up(self, backend: AzureMLBackend) -> None:
        """Traffic naming unknown deployments or not adding up to 100 is rejected with the deployments."""
        with EndpointDeployer(backend, "ep-t") as deployer:
            deployer.deploy(BLUE)
            with pytest.raises(ValidationError) as info:
                deployer.set_traffic({"demo": 50, "ghost": 30})
        text = str(info.value)
        assert "ghost" in text
        assert "add up to 80" in text

    def test_session_keep(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """session(keep=True) leaves the endpoint (the runner's deploy.keep); session() deletes it."""
        deployer = EndpointDeployer(backend, "ep-keep")
        with deployer.session(keep=True):
            deployer.deploy(BLUE)
        assert fake.endpoint("ep-keep") is not None
        with deployer.session():
            pass
        assert fake.endpoint("ep-keep") is None

    def test_rolled_key_is_picked_up(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """After regenerating the primary key, scoring uses the new one."""
        with EndpointDeployer(backend, "ep-key") as deployer:
            deployer.deploy(BLUE)
            deployer.invoke(CONVERSATION)
            old = fake.keys("ep-key")["primaryKey"]
            keys = backend.endpoints.regenerate_key("ep-key", "primary")
            assert keys.primary != old
            assert "primary" not in repr(keys) or keys.primary not in repr(keys)
            deployer.invoke(CONVERSATION)
        assert [s.status for s in fake.calls("POST", r"^/score$")] == [200, 200]

    def test_invoke_without_deployment(self, backend: AzureMLBackend) -> None:
        """Scoring before any deployment is a clear error."""
        with EndpointDeployer(backend, "ep-none") as deployer, pytest.raises(ValidationError, match="deploy"):
            deployer.invoke(CONVERSATION)

    def test_delete_is_idempotent(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """Deleting an endpoint that is gone is not an error."""
        EndpointDeployer(backend, "never-created").delete()
        backend.endpoints.delete_deployment("never-created", "demo")
        assert fake.endpoint("never-created") is None

    def test_list_endpoints_only_ftkit(self, fake: FakeAzureML, backend: AzureMLBackend) -> None:
        """list_endpoints returns what ftkit created (tagged), for `ftkit cleanup`."""
        deployer = EndpointDeployer(backend, "ep-list")
        with deployer.session(keep=True):
            deployer.create()
        fake.ml_client().online_endpoints.begin_create_or_update(
            __import__("azure.ai.ml.entities", fromlist=["ManagedOnlineEndpoint"]).ManagedOnlineEndpoint(
                name="not-ftkit", auth_mode="key"
            )
        ).result()
        assert [e.name for e in backend.endpoints.list_endpoints()] == ["ep-list"]
