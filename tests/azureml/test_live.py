"""The same flow against a real Azure ML workspace; skipped unless credentials and a workspace are configured.

Opt in with ``FTKIT_LIVE_AZURE=1`` plus a workspace (``AZURE_SUBSCRIPTION_ID``, ``AZURE_RESOURCE_GROUP``,
``AZUREML_WORKSPACE_NAME``, or a config.json) and a credential ``DefaultAzureCredential`` can use
(``az login``, a service principal in ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``...).

* The read-only checks (registry model, pinned component, SKU list) cost nothing.
* ``FTKIT_LIVE_FULL=1`` also runs the notebook end to end (GPU cluster, fine-tuning, endpoint): hours and money.
  The endpoint is deleted by the context manager whatever happens.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import ftkit
from ftkit.backends.azureml import AzureMLBackend
from ftkit.component import DEFAULT_COMPONENT, DEFAULT_COMPONENT_VERSION
from ftkit.jobfile import JobFile
from ftkit.model import FoundationModelRef

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("FTKIT_LIVE_AZURE") != "1", reason="set FTKIT_LIVE_AZURE=1 to talk to Azure"),
]


@pytest.fixture(scope="module")
def live_backend() -> AzureMLBackend:
    try:
        backend = AzureMLBackend(lro_timeout_s=3600)
        backend.connection.check_credential()
    except (ftkit.AuthError, ftkit.ValidationError) as exc:
        pytest.skip(f"no usable Azure workspace or credential: {exc}")
    return backend


@pytest.fixture(autouse=True)
def _real_retries() -> object:
    # The suite's autouse fixture removes retry waits; against the real service, honour them.
    with ftkit.set_testing(False):
        yield


def test_registry_model_and_component(live_backend: AzureMLBackend) -> None:
    """The notebook's model resolves with its tags, and the pinned component's schema is readable."""
    model = live_backend.resolve_model(FoundationModelRef(name="Phi-3-mini-4k-instruct"))
    assert model.is_resolved
    assert model.inference_compute_allow_list is not None
    schema, _ = live_backend.live_schema(DEFAULT_COMPONENT, DEFAULT_COMPONENT_VERSION)
    assert "learning_rate" in schema.inputs


def test_vm_sizes(live_backend: AzureMLBackend) -> None:
    """The workspace region lists GPU sizes."""
    assert any(size.gpus > 0 for size in live_backend.list_sizes())


@pytest.mark.skipif(os.environ.get("FTKIT_LIVE_FULL") != "1", reason="set FTKIT_LIVE_FULL=1 for the costly flow")
def test_notebook_end_to_end(live_backend: AzureMLBackend, tmp_path: Path) -> None:
    """The whole notebook on the real service, through the same code as tests/azureml/test_flow.py."""
    import attrs

    from .conftest import EXAMPLE
    from .test_flow import run_notebook

    job = JobFile.load(os.environ.get("FTKIT_LIVE_JOB", str(EXAMPLE)))
    if job.data.train_file is None:
        pytest.skip("the live job file needs data.train_file and data.test_file (built JSONL files or URIs)")
    stamp = str(int(time.time()))
    job = attrs.evolve(job, deploy=attrs.evolve(job.deploy, endpoint_name=f"ftkit-live-{stamp}"))
    out = run_notebook(live_backend, job, [], stamp=stamp)
    assert out["handle"].status == "Completed"
    assert out["answers"]
