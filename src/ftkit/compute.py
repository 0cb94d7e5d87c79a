"""Compute descriptions and `ComputeValidator`: can this cluster fine-tune this model?"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .exceptions import ComputeValidationError, Problem, closest

__all__ = ["ClusterInfo", "ComputeCheck", "ComputeValidator", "VmSize"]

# The notebook rejects these K80 sizes when the model has no allow-list: the fine-tuning image needs newer GPUs.
UNSUPPORTED_SIZES = ("standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r")


@attrs.frozen
class VmSize:
    """A VM size the workspace offers.

    Attributes:
        name: The size's name, e.g. ``Standard_ND40rs_v2``.
        gpus: GPUs per node (0 for CPU sizes).
        vcpus: vCPUs per node, if known.
        memory_gb: Memory per node in GB, if known.
    """

    name: str
    gpus: int = 0
    vcpus: int | None = None
    memory_gb: float | None = None


@attrs.frozen
class ClusterInfo:
    """What ftkit knows about a compute cluster.

    Attributes:
        name: The cluster's name.
        size: Its VM size.
        provisioning_state: ``Succeeded``, ``Creating``, ``Failed``...
        max_instances: Its node ceiling, if known.
        tier: ``dedicated`` or ``low_priority``, if known.
        errors: Provisioning errors the service reported.
    """

    name: str
    size: str
    provisioning_state: str = "Succeeded"
    max_instances: int | None = None
    tier: str | None = None
    errors: tuple[str, ...] = ()


@attrs.frozen
class ComputeCheck:
    """The outcome of a successful compute check.

    Attributes:
        cluster: The cluster that passed.
        gpus_per_node: GPUs per node, from the SKU list.
    """

    cluster: ClusterInfo
    gpus_per_node: int


@attrs.frozen
class ComputeValidator:
    """Reproduces the notebook's compute checks, reporting every failure at once.

    The checks: the cluster's provisioning did not fail; its size is in the model's finetune allow-list
    (case-insensitive) or, without an allow-list, is not one of the unsupported K80 sizes; its size is in the
    workspace's SKU list, which gives the GPUs per node; and it has GPUs. When the job file states
    ``gpus_per_node``, it must agree with the SKU.

    Attributes:
        allow_list: The model's ``finetune_compute_allow_list``, or ``None``.
        expected_gpus_per_node: GPUs per node the job file states, if any.
    """

    allow_list: Sequence[str] | None = None
    expected_gpus_per_node: int | None = None

    def check(self, cluster: ClusterInfo, available: Sequence[VmSize]) -> ComputeCheck:
        """Check ``cluster`` against the allow-list and the workspace's SKU list.

        Args:
            cluster: The cluster to use.
            available: The VM sizes the workspace offers (``compute.list_sizes()``).

        Returns:
            The check with the GPUs per node.

        Raises:
            ComputeValidationError: With every failed check and the available sizes.
        """
        problems: list[Problem] = []
        size = cluster.size.lower()
        where = f"compute.{cluster.name}"
        if cluster.provisioning_state.lower() == "failed":
            detail = f": {'; '.join(cluster.errors)}" if cluster.errors else ""
            problems.append(
                Problem(where, f"provisioning failed{detail}", "delete and recreate the cluster, or pick another")
            )
        if self.allow_list is not None:
            allowed = [a.lower() for a in self.allow_list]
            if size not in allowed:
                problems.append(
                    Problem(
                        f"{where}.size",
                        f"{cluster.size} is not in the model's finetune_compute_allow_list",
                        f"allowed: {', '.join(self.allow_list)}",
                    )
                )
        elif size in UNSUPPORTED_SIZES:
            problems.append(
                Problem(
                    f"{where}.size",
                    f"{cluster.size} (K80) is not supported for fine-tuning",
                    "use NCv3 or NDv2 sizes",
                )
            )
        by_name = {v.name.lower(): v for v in available}
        sku = by_name.get(size)
        gpus = 0
        if sku is None:
            near = closest(cluster.size, [v.name for v in available])
            hint = f"did you mean {', '.join(near)}?" if near else "see the available sizes below"
            problems.append(Problem(f"{where}.size", f"{cluster.size} is not offered in this workspace's region", hint))
        else:
            gpus = sku.gpus
            if gpus < 1:
                problems.append(Problem(f"{where}.size", f"{cluster.size} has no GPU", "fine-tuning needs a GPU size"))
            elif self.expected_gpus_per_node is not None and self.expected_gpus_per_node != gpus:
                problems.append(
                    Problem(
                        "compute.gpus_per_node",
                        f"the job file says {self.expected_gpus_per_node} but {sku.name} has {gpus}",
                        f"set gpus_per_node: {gpus} or remove it",
                    )
                )
        if problems:
            sizes = sorted({v.name for v in available if v.gpus > 0}) or sorted(v.name for v in available)
            raise ComputeValidationError(
                problems,
                available_sizes=sizes,
                summary=f"cluster {cluster.name} cannot run this job (GPU sizes here: {', '.join(sizes) or 'none'})",
            )
        return ComputeCheck(cluster=cluster, gpus_per_node=gpus)
