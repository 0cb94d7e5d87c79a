"""The workspace, its discovery document, and the read-only ``azureml`` registry (models, components).

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._http import RecordedRequest
from .base import ErrorBody, FakeBase, RegistryModel, Reply

__all__ = ["WorkspaceRoutes"]

REGISTRY_FRONTEND = "https://cert-{location}.experiments.azureml.net/"
DISCOVERY_KEYS = (
    "api",
    "catalog",
    "experimentation",
    "gallery",
    "history",
    "hyperdrive",
    "labeling",
    "modelmanagement",
    "pipelines",
    "studio",
)


class WorkspaceRoutes(FakeBase):
    """Strictly private: workspace, discovery and registry routes."""

    component_name: str
    component_version: str

    def add_registry_model(self, model: RegistryModel) -> None:
        """Serve ``model`` from its registry."""
        key = self._reg_key(model.registry, f"models/{model.name}/versions/{model.version}")
        asset_id = f"azureml://registries/{model.registry}/models/{model.name}/versions/{model.version}"
        self._put(
            key,
            {
                "id": asset_id,
                "name": model.version,
                "properties": {
                    "description": f"{model.name} (fake)",
                    "tags": dict(model.tags),
                    "properties": dict(model.properties),
                    "flavors": {"transformers": {"data": {}}},
                    "modelType": "mlflow_model",
                    "modelUri": f"{asset_id}/files",
                    "isAnonymous": False,
                    "isArchived": False,
                },
            },
        )

    def add_registry_component(self, spec: str | Path | Any, *, registry: str = "azureml") -> tuple[str, str]:
        """Serve a component from a registry, resolvable by name with ``version=`` or ``label="latest"``.

        Args:
            spec: A component ``spec.yaml`` (e.g. one of azureml-assets' fine-tuning pipelines) or an
                azure-ai-ml ``Component``.
            registry: The registry holding it.

        Returns:
            The component's name and version.
        """
        if isinstance(spec, str | Path):
            from azure.ai.ml import load_component

            component = load_component(source=str(spec))
        else:
            component = spec
        return self._serve_component(component, registry)

    def _add_component(self, spec: Path | None) -> None:
        if spec is not None:
            from azure.ai.ml import load_component

            component = load_component(source=str(spec))
        else:
            from ...backends.azureml.pipeline import component_from_schema
            from ...component import ComponentSchema

            component = component_from_schema(ComponentSchema.bundled())
        self.component_name, self.component_version = self._serve_component(component, "azureml")

    def _serve_component(self, component: Any, registry: str) -> tuple[str, str]:
        from ...backends.azureml.pipeline import wire_body

        body = wire_body(component._to_rest_object())
        name, version = str(component.name), str(component.version)
        body["id"] = f"azureml://registries/{registry}/components/{name}/versions/{version}"
        body["name"] = version
        body["properties"]["componentSpec"].pop("id", None)
        self._put(self._reg_key(registry, f"components/{name}/versions/{version}"), body)
        return name, version

    def _registry_discovery(self, registry: str) -> dict[str, Any]:
        return {
            "registryName": registry,
            "subscriptionId": self.subscription_id,
            "resourceGroup": "rg-registry",
            "primaryRegion": self.location,
            "regions": [self.location],
            "primaryRegionResourceProviderUri": REGISTRY_FRONTEND.format(location=self.location),
        }

    def _workspace_discovery(self) -> dict[str, Any]:
        # What GET {discoveryUrl} answers: one base URL per data-plane service; jobs.stream reads "history".
        return {key: self._api_host() for key in DISCOVERY_KEYS}

    def _workspace(self) -> dict[str, Any]:
        api = self._api_host()
        # Azure answers azureml://; while the loopback server runs it is the server's plain http URL, so that
        # plain mlflow (without the azureml-mlflow plugin) reaches the fake: see FakeAzureML.serve. Discovery
        # stays https: azure-core sends bearer tokens over TLS only, and those calls use the transport anyway.
        if self.base_url:
            tracking = f"{self.base_url}/mlflow/v1.0{self._ws_prefix()}"
        else:
            tracking = f"azureml://{api.split('://', 1)[1]}/mlflow/v1.0{self._ws_prefix()}"
        return {
            "id": self._ws_prefix(),
            "name": self.workspace_name,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": self.location,
            "kind": "Default",
            "identity": {"type": "SystemAssigned"},
            "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {
                "friendlyName": self.workspace_name,
                "workspaceId": "11111111-2222-3333-4444-555555555555",
                "discoveryUrl": f"{api}/discovery",
                "mlFlowTrackingUri": tracking,
                "provisioningState": "Succeeded",
                "publicNetworkAccess": "Enabled",
            },
        }

    def _registry(self, method: str, key: str, record: RecordedRequest) -> Reply:
        if method != "GET":
            return 405, ErrorBody("MethodNotAllowed", "the fake registry is read-only"), {}
        stored = self.resources.get(key.lower())
        if stored is not None:
            return 200, stored, {}
        if key.lower().endswith("/versions"):
            children = list(reversed(self._children(key)))  # createdtime desc
            if "$top" in record.query:
                children = children[: int(record.query["$top"])]
            # The real registry answers an unknown asset's version list with an empty page.
            return 200, {"value": children}, {}
        if self._children(f"{key}/versions"):
            latest = self._children(f"{key}/versions")[-1]
            return 200, {"id": key, "name": key.rsplit("/", 1)[-1], "properties": {"latestVersion": latest["name"]}}, {}
        parts = key.split("/registries/", 1)[1].split("/")
        asset = "/".join(parts)
        # Registry reads of a missing version answer 404 UserError "Could not find asset with assetId
        # azureml://registries/..." (seen in Azure/azure-sdk-for-python#34876, a ResourceNotFoundError).
        return 404, ErrorBody("UserError", f"Could not find asset with assetId azureml://registries/{asset}"), {}
