"""The azureml backend: Azure ML through azure-ai-ml, the only part of ftkit that imports Azure.

* :mod:`.connection`: which workspace, which credential, the MLClients (``retry_total=0``, telemetry off).
* :mod:`.errors`: :func:`~.errors.map_azure_errors`, the one translation of SDK errors into ftkit's tree.
* :mod:`.pipeline`: the ``chat_completion_pipeline`` job, built from a checked :class:`~ftkit.plan.RunPlan`.
* :mod:`.jobs`: submitting, and waiting with ftkit's own loop.
* :mod:`.metrics`: a job's metrics through the workspace's MLflow REST API.
* :mod:`.endpoints`: online endpoints, deployments, keys, logs and scoring.
* :mod:`.backend`: :class:`AzureMLBackend`, the :class:`~ftkit.backends.base.Backend` on top of them.

azure-ai-ml itself is imported only when a backend method first needs it.
"""

from __future__ import annotations

from .backend import AzureMLBackend, DatastoreUploader, Uploader
from .connection import AzureMLConnection, WorkspaceRef

__all__ = ["AzureMLBackend", "AzureMLConnection", "DatastoreUploader", "Uploader", "WorkspaceRef"]
