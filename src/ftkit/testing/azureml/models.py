"""Workspace model and data versions, with the references Azure checks when a model is registered.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .base import ErrorBody, FakeBase, Reply

__all__ = ["ModelRoutes"]

# The field holding a versioned asset's content location, per asset type (model, data, code).
ASSET_PATH_FIELDS = ("modelUri", "dataUri", "codeUri")


class ModelRoutes(FakeBase):
    """Strictly private: model and data versions."""

    def job(self, name: str) -> dict[str, Any] | None:
        """Return the stored job resource, or ``None``."""
        return self.resources.get(self._ws_key(f"jobs/{name}").lower())

    def add_model(self, name: str, version: str, *, tags: Mapping[str, str] | None = None) -> None:
        """Register workspace model ``name:version`` as if it existed already (an MLflow model)."""
        self._put(
            self._ws_key(f"models/{name}/versions/{version}"),
            {
                "properties": {
                    "modelType": "mlflow_model",
                    "modelUri": f"azureml://datastores/workspaceblobstore/paths/models/{name}/{version}",
                    "flavors": {},
                    "tags": dict(tags or {}),
                    "properties": {},
                    "provisioningState": "Succeeded",
                }
            },
        )

    def _put_version(self, key: str, lowered: str, body: dict[str, Any]) -> Reply:
        props = body.setdefault("properties", {})
        previous = self.resources.get(key.lower())
        if previous is not None:
            field = next((f for f in ASSET_PATH_FIELDS if f in props or f in previous["properties"]), None)
            if field is not None and props.get(field) != previous["properties"].get(field):
                # An asset version is immutable: only tags, description and properties may change. The service
                # answers "(UserError) Asset paths cannot be updated.", the string azure-ai-ml matches to raise
                # AssetPathException (azure/ai/ml/_artifacts/_constants.py, ASSET_PATH_ERROR).
                return 400, ErrorBody("UserError", "Asset paths cannot be updated."), {}
        if re.fullmatch(r"models/[^/]+/versions/[^/]+", lowered):
            problem = self._check_model_source(str(props.get("modelUri") or ""))
            if problem is not None:
                return problem
            if not props.get("flavors"):
                props["flavors"] = {}  # azure-ai-ml's Model._from_rest_object needs a mapping here
        props.setdefault("provisioningState", "Succeeded")
        stored = self._put(key, body)
        return (201 if stored["systemData"]["createdAt"] == stored["systemData"]["lastModifiedAt"] else 200), stored, {}

    def _check_model_source(self, uri: str) -> Reply | None:
        """Check a model registered from a job output as Azure does: the job and its output must exist."""
        m = re.match(r"azureml://jobs/([^/]+)/outputs/([^/]+)", uri)
        if m is None:
            return None
        job_name, output = m[1], m[2]
        job = self.job(job_name)
        if job is None:
            # Azure ML answers "Job <name> not found." with code UserError for a job it does not know
            # (Azure/azureml-previews#267); registration from it fails at the model PUT.
            return 404, ErrorBody("UserError", f"Job {job_name} not found."), {}
        if output not in (job["properties"].get("outputs") or {}) or job["properties"]["status"] != "Completed":
            # Azure/azure-sdk-for-python#33978: 400 UserError "The request is invalid." with the detail
            # NoMatchingArtifactsFoundFromJob "No artifacts matching outputs/<x> found from Job.".
            return (
                400,
                ErrorBody(
                    "UserError",
                    "The request is invalid.",
                    (
                        {
                            "code": "NoMatchingArtifactsFoundFromJob",
                            "message": f"No artifacts matching outputs/{output} found from Job.",
                        },
                    ),
                ),
                {},
            )
        return None

    def _model_exists(self, reference: str) -> Reply | None:
        """Check a deployment's model reference (an ARM id, ``azureml:name:version`` or registry asset id)."""
        m = re.search(r"/models/([^/]+)/versions/([^/]+)$", reference, re.I)
        if m is None:
            m = re.fullmatch(r"azureml:([^:/]+):([^:/]+)", reference)
        if m is None:
            return None
        name, version = m[1], m[2]
        if "/registries/" in reference.lower():
            registry = reference.lower().split("/registries/", 1)[1].split("/")[0]
            key = self._reg_key(registry, f"models/{name}/versions/{version}")
        else:
            key = self._ws_key(f"models/{name}/versions/{version}")
        if key.lower() in self.resources:
            return None
        # Azure/mlops-v2#76: a deployment of a model the workspace does not hold answers UserError "The specified
        # resource was not found." with the detail ModelNotFound "Model container with name: <name> not found.";
        # for an existing container with a missing version the fake words the detail for the version.
        if self._children(key.rsplit("/", 1)[0]):
            detail = f"Model version {name}:{version} not found."
        else:
            detail = f"Model container with name: {name} not found."
        return (
            404,
            ErrorBody(
                "UserError",
                "The specified resource was not found.",
                ({"code": "ModelNotFound", "message": detail},),
            ),
            {},
        )
