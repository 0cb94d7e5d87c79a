"""`FakeAzureML`: Azure ML offline for the real azure-ai-ml client, split by resource.

* :mod:`.fake` — the :class:`FakeAzureML` class: wiring, faults, inspection and the request router.
* :mod:`.workspace` — the workspace, its discovery document, the ``azureml`` registry.
* :mod:`.compute` — clusters and VM sizes.
* :mod:`.models` — model and data versions (and the references a registration needs).
* :mod:`.jobs` — jobs with child steps, logs and scripted failures.
* :mod:`.runhistory` — the run-history routes ``jobs.stream`` and ftkit's wait read.
* :mod:`.endpoints` — online endpoints and deployments, keys, logs, scoring.
* :mod:`.storage` — the default blob datastore, and the hook routing azure-storage-blob to the fake.
* :mod:`.mlflow` — the MLflow tracking REST API.
* :mod:`.server` — the opt-in loopback HTTP server (:meth:`FakeAzureML.serve`).
"""

from __future__ import annotations

from .._http import FakeCredential, RecordedRequest
from .base import Fault, RegistryModel
from .compute import DEFAULT_VM_SIZES
from .fake import FakeAzureML

__all__ = ["DEFAULT_VM_SIZES", "FakeAzureML", "FakeCredential", "Fault", "RecordedRequest", "RegistryModel"]
