"""Compute clusters and the region's VM sizes.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import ErrorBody, FakeBase, Reply, merged

__all__ = ["DEFAULT_VM_SIZES", "ComputeRoutes"]

DEFAULT_VM_SIZES: tuple[Mapping[str, Any], ...] = (
    {"name": "Standard_DS3_v2", "family": "standardDSv2Family", "vCPUs": 4, "gpus": 0, "memoryGB": 14.0},
    {"name": "Standard_E8s_v3", "family": "standardESv3Family", "vCPUs": 8, "gpus": 0, "memoryGB": 64.0},
    {"name": "Standard_NC6s_v3", "family": "standardNCSv3Family", "vCPUs": 6, "gpus": 1, "memoryGB": 112.0},
    {"name": "Standard_NC12s_v3", "family": "standardNCSv3Family", "vCPUs": 12, "gpus": 2, "memoryGB": 224.0},
    {"name": "Standard_NC24rs_v3", "family": "standardNCSv3Family", "vCPUs": 24, "gpus": 4, "memoryGB": 448.0},
    {"name": "Standard_ND40rs_v2", "family": "standardNDSv2Family", "vCPUs": 40, "gpus": 8, "memoryGB": 672.0},
    {"name": "Standard_NC24ads_A100_v4", "family": "standardNCADSA100v4Family", "vCPUs": 24, "gpus": 1},
)


class ComputeRoutes(FakeBase):
    """Strictly private: computes and VM sizes."""

    vm_sizes: list[Mapping[str, Any]]

    def add_compute(
        self, name: str, size: str, *, state: str = "Succeeded", tier: str = "Dedicated", max_instances: int = 2
    ) -> None:
        """Create a compute cluster in the workspace, as if it existed already."""
        self._put(self._ws_key(f"computes/{name}"), self._compute_body(name, size, tier, max_instances, state))

    def _compute_exists(self, name: str) -> bool:
        return name.lower() == "serverless" or self._ws_key(f"computes/{name}").lower() in self.resources

    def _compute_body(self, name: str, size: str, tier: str, max_instances: int, state: str) -> dict[str, Any]:
        return {
            "name": name,
            "location": self.location,
            "properties": {
                "computeType": "AmlCompute",
                "computeLocation": self.location,
                "provisioningState": state,
                "provisioningErrors": (
                    [{"error": {"code": "QuotaExceeded", "message": "vCPU quota exceeded"}}]
                    if state == "Failed"
                    else None
                ),
                "properties": {
                    "vmSize": size,
                    "vmPriority": tier,
                    "scaleSettings": {"maxNodeCount": max_instances, "minNodeCount": 0},
                },
            },
        }

    def _vm_size(self, size: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": size["name"],
            "family": size.get("family", "standard"),
            "vCPUs": size.get("vCPUs", 4),
            "gpus": size.get("gpus", 0),
            "osVhdSizeMB": 1047552,
            "maxResourceVolumeMB": 344064,
            "memoryGB": size.get("memoryGB", 16.0),
            "lowPriorityCapable": True,
            "premiumIO": True,
            "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
        }

    def _put_compute(self, key: str, body: dict[str, Any]) -> Reply:
        props = body.setdefault("properties", {})
        error = self._take_operation_fault("compute")
        inner = props.get("properties", {})
        state = "Failed" if error else "Succeeded"
        stored = self._put(
            key,
            merged(
                self._compute_body(
                    key.rsplit("/", 1)[-1],
                    inner.get("vmSize", "Standard_DS3_v2"),
                    inner.get("vmPriority", "Dedicated"),
                    inner.get("scaleSettings", {}).get("maxNodeCount", 1),
                    state,
                ),
                {"tags": body.get("tags")},
            ),
        )
        if error:
            self.resources.pop(key.lower(), None)
            return 400, ErrorBody(error["code"], error["message"]), {}
        if props.get("computeType") == "ComputeInstance":
            # A compute instance is one VM that runs until stopped (begin_start/stop/restart act on it).
            stored["properties"]["computeType"] = "ComputeInstance"
            stored["properties"]["properties"] = {"vmSize": inner.get("vmSize", "Standard_DS3_v2"), "state": "Running"}
        return 200, stored, {}

    def compute_state(self, name: str) -> str | None:
        """A compute instance's power state (``Running``, ``Stopped``...); ``None`` for a cluster or none."""
        stored = self.resources.get(self._ws_key(f"computes/{name}").lower())
        if stored is None:
            return None
        state = stored["properties"].get("properties", {}).get("state")
        return str(state) if state is not None else None

    def _compute_action(self, key: str, action: str) -> Reply:
        """``begin_start``/``begin_stop``/``begin_restart``: a long-running action on a compute instance."""
        stored = self.resources.get(key.lower())
        name = key.rsplit("/", 1)[-1]
        if stored is None:
            return 404, ErrorBody("ResourceNotFound", f"Compute {name} was not found in workspace"), {}
        if stored["properties"].get("computeType") != "ComputeInstance":
            # The REST reference documents Start/Stop/Restart as compute-instance operations ("Posts a stop
            # action to a compute instance", learn.microsoft.com/rest/api/azureml/compute/stop); a cluster
            # scales to its minimum nodes instead. The wording of this refusal is the fake's own.
            return (
                400,
                ErrorBody(
                    "BadRequest",
                    f"{action.capitalize()} is supported for compute instances only; {name} is "
                    f"{stored['properties'].get('computeType')}.",
                ),
                {},
            )
        inner = stored["properties"].setdefault("properties", {})
        inner["state"] = "Stopped" if action == "stop" else "Running"
        op_id = self._new_op(f"compute-{action}", key)
        return 202, None, {"Location": self._operation_url(op_id), "Retry-After": "1"}
