"""ComputeValidator reproduces the notebook's checks and reports them all at once."""

from __future__ import annotations

import pytest

from ftkit import ClusterInfo, ComputeValidator, VmSize
from ftkit.exceptions import ComputeValidationError

SIZES = [
    VmSize("Standard_ND40rs_v2", 8),
    VmSize("Standard_NC24rs_v3", 4),
    VmSize("Standard_NC6", 1),
    VmSize("Standard_D4s_v3", 0),
]


def test_a_good_cluster_gives_gpus_per_node() -> None:
    """A succeeded cluster of an offered GPU size passes, with the SKU's GPU count."""
    check = ComputeValidator().check(ClusterInfo("gpu-cluster-big", "Standard_ND40rs_v2"), SIZES)
    assert check.gpus_per_node == 8


def test_allow_list_is_case_insensitive() -> None:
    """The allow-list comparison ignores case, as the notebook does."""
    validator = ComputeValidator(allow_list=["standard_nd40RS_v2"])
    assert validator.check(ClusterInfo("c", "Standard_ND40rs_v2"), SIZES).gpus_per_node == 8


def test_every_failure_is_reported_with_the_available_sizes() -> None:
    """Failed provisioning, allow-list miss and unknown size all come back together."""
    validator = ComputeValidator(allow_list=["Standard_NC24ads_A100_v4"])
    cluster = ClusterInfo("c", "Standard_ND40rs_v3", provisioning_state="Failed", errors=("quota",))
    with pytest.raises(ComputeValidationError) as info:
        validator.check(cluster, SIZES)
    messages = [p.message for p in info.value.problems]
    assert any("provisioning failed: quota" in m for m in messages)
    assert any("not in the model's finetune_compute_allow_list" in m for m in messages)
    assert any("not offered" in m for m in messages)
    assert info.value.available_sizes == ("Standard_NC24rs_v3", "Standard_NC6", "Standard_ND40rs_v2")
    assert "did you mean Standard_ND40rs_v2" in str(info.value)


def test_k80_sizes_are_rejected_without_an_allow_list() -> None:
    """Without an allow-list the notebook refuses the K80 sizes."""
    with pytest.raises(ComputeValidationError, match="K80"):
        ComputeValidator().check(ClusterInfo("c", "Standard_NC6"), SIZES)


def test_cpu_sizes_and_gpu_count_mismatch() -> None:
    """A size with no GPU fails; a job file gpus_per_node that disagrees with the SKU fails."""
    with pytest.raises(ComputeValidationError, match="has no GPU"):
        ComputeValidator().check(ClusterInfo("c", "Standard_D4s_v3"), SIZES)
    with pytest.raises(ComputeValidationError, match="the job file says 2 but Standard_ND40rs_v2 has 8"):
        ComputeValidator(expected_gpus_per_node=2).check(ClusterInfo("c", "Standard_ND40rs_v2"), SIZES)
