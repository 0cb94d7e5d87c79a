"""The job file's sections as typed values: `model`, `compute`, `data`, `register`, `deploy`, `score`, `local`.

Each is a frozen attrs class whose fields are the section's keys, with their types, defaults and bounds (the
loader, :mod:`ftkit.job_loading`, converts YAML values by them; the JSON schema is generated from them). The
``finetune`` section is :class:`~ftkit.finetune.FinetunePipelineSpec` and ``evaluate`` is
:class:`~ftkit.evaluation.EvaluateSection`; the whole job is :class:`~ftkit.jobfile.JobFile`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from .convert import NAME, SEED_MAX, bounds
from .deployment_settings import DeploymentSettings, ServerSettings
from .model import FoundationModelRef

__all__ = [
    "SECTIONS",
    "TOP_LEVEL_KEYS",
    "BackendName",
    "ComputeSection",
    "DataSection",
    "DeploySection",
    "LocalSection",
    "ModelSection",
    "RegisterSection",
    "ScoreSection",
]

BackendName = Literal["azureml", "local"]


@attrs.frozen(kw_only=True)
class ModelSection:
    """``model:`` which foundation model to fine-tune.

    Attributes:
        name: The registry model's name (azureml), or a local registry entry / label for the local backend.
        registry: The registry to read it from.
        version: A pinned version; ``latest`` (or unset) means the label ``latest``.
        label: A label to resolve when no version is pinned.
        path: A local Hugging Face model directory (local backend); nothing is ever downloaded.
    """

    name: str
    registry: str = "azureml"
    version: str | None = None
    label: str | None = None
    path: str | None = None

    def ref(self) -> FoundationModelRef:
        """Return the :class:`~ftkit.model.FoundationModelRef` this section names."""
        version = self.version
        label = self.label
        if version is not None and version.lower() == "latest":
            version, label = None, "latest"
        return FoundationModelRef(name=self.name, registry=self.registry, version=version, label=label)


@attrs.frozen(kw_only=True)
class ComputeSection:
    """``compute:`` the training cluster (azureml) or device (local).

    Attributes:
        cluster: The Azure ML compute cluster's name.
        size: Its VM size, used when ftkit creates the cluster.
        max_instances: Node ceiling when ftkit creates the cluster.
        min_instances: Node floor when ftkit creates the cluster (0 scales to zero when idle).
        tier: ``dedicated`` or ``low_priority``.
        low_priority_fallback: Retry creation as low priority when dedicated fails (as the notebook does).
        gpus_per_node: GPUs per node; checked against the SKU list when given, required for offline render.
    """

    cluster: str = "gpu-cluster-big"
    size: str | None = None
    max_instances: int = attrs.field(default=2, metadata=bounds(1, 10_000))
    min_instances: int = attrs.field(default=0, metadata=bounds(0, 10_000))
    tier: Literal["dedicated", "low_priority"] = "dedicated"
    low_priority_fallback: bool = True
    gpus_per_node: int | None = attrs.field(default=None, metadata=bounds(1, 64))


@attrs.frozen(kw_only=True)
class DataSection:
    """``data:`` where the chat data comes from and how much of it to use.

    Attributes:
        source: A Hugging Face dataset id (its local cache only), a local parquet/JSONL file or directory.
        train_split: The split to train on.
        test_split: The split to evaluate on.
        score_split: The split the sample scoring request is drawn from (``None``: none).
        percent: Percent of each split to keep (the notebook uses 5).
        rows: Rows of each split to keep (instead of ``percent``).
        sample: ``first`` (the notebook's behaviour) or a seeded ``random`` sample.
        seed: Seed of the random sample.
        strict: Fail on the first rejected row instead of dropping and reporting.
        out_dir: Where the built JSONL files go, relative to the job file.
        train_file: An already-built train file (local path or ``azureml://`` / ``name:version``), skipping the build.
        test_file: An already-built test file, as ``train_file``.
    """

    source: str | None = None
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    score_split: str | None = "test_gen"
    percent: float | None = attrs.field(default=None, metadata=bounds(maximum=100, exclusive_minimum=0))
    rows: int | None = attrs.field(default=None, metadata=bounds(1, 1_000_000_000))
    sample: Literal["first", "random"] = "first"
    seed: int = attrs.field(default=0, metadata=bounds(0, SEED_MAX))
    strict: bool = False
    out_dir: str = "data"
    train_file: str | None = None
    test_file: str | None = None


@attrs.frozen(kw_only=True)
class RegisterSection:
    """``register:`` how the fine-tuned model is registered.

    Attributes:
        name: The registered model's name (default: ``{model}-ultrachat-200k`` as in the notebook).
        version: Its version (default: a timestamp).
        description: Its description.
    """

    name: str | None = attrs.field(default=None, metadata=NAME)
    version: str | None = attrs.field(default=None, metadata=NAME)
    description: str | None = None


@attrs.frozen(kw_only=True)
class DeploySection(DeploymentSettings):
    """``deploy:`` the online endpoint and its deployment.

    Every :class:`~ftkit.deployment_settings.DeploymentSettings` field (instance type and count, request
    timeout, liveness delay, concurrency, ``max_queue``, ``max_batch_size``) is a key of this section; these
    are the endpoint's own.

    Attributes:
        endpoint_name: The endpoint's name (default: ``{job name}-{timestamp}``).
        deployment_name: The deployment's name.
        keep: Keep the endpoint after the run (it costs money while it exists).
        server: The local endpoint server's settings (``deploy.server:``; the local backend only; ``None``:
            the backend's own).
    """

    endpoint_name: str | None = attrs.field(default=None, metadata=NAME)
    deployment_name: str = attrs.field(default="demo", metadata=NAME)
    keep: bool = False
    server: ServerSettings | None = None


@attrs.frozen(kw_only=True)
class ScoreSection:
    """``score:`` the sample scoring request sent to the deployed endpoint.

    Attributes:
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        do_sample: Sample (true) or decode greedily (false).
        max_new_tokens: Longest answer.
    """

    temperature: float = attrs.field(default=0.6, metadata=bounds(0, 100))
    top_p: float = attrs.field(default=0.9, metadata=bounds(maximum=1, exclusive_minimum=0))
    do_sample: bool = True
    max_new_tokens: int = attrs.field(default=200, metadata=bounds(1, 1_048_576))


@attrs.frozen(kw_only=True)
class LocalSection:
    """``local:`` settings of the local backend.

    Attributes:
        home: ftkit's state directory (MLflow store, registry, endpoints); default ``$FTKIT_HOME`` or ``~/.ftkit``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        save_steps: Steps between checkpoints (one is also written at each epoch's end).
        lora_target_modules: Comma-separated module names to adapt (default: every linear layer but the head).
        max_eval_examples: Evaluate on at most this many test conversations.
        processes: Training processes on this host (torchrun ranks). Default: ``compute.gpus_per_node`` (what
            Azure ML passes as ``number_of_gpu_to_use_finetuning``) when this machine has several GPUs, else 1.
            With ``device: cpu``, N gloo processes (to test the multi-GPU path without GPUs).
        max_tokens_per_micro_batch: Token budget of one micro-batch (a step's conversations are split into
            micro-batches of at most this many tokens; results do not depend on it). Default: planned from the
            GPU's memory (or ``gpu_memory_gib``), 16384 on a CPU.
        gradient_checkpointing: Recompute activations in the backward pass (default: only when the budget
            needs it).
        gpu_memory_gib: GPU memory to plan for (default: the card's), e.g. 22 for a 24 GB card.
        torch_compile: ``torch.compile`` each decoder layer on CUDA (pays off on runs of more than a few minutes).
        quantize: ``4bit``: QLoRA, the frozen base model held in 4-bit NF4 (double quantization, bfloat16
            compute) so that a 7-8B model trains on a 24 GB card; needs a CUDA GPU, LoRA and ``ftkit[qlora]``.
            Default ``none``: the base in bfloat16.
    """

    home: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Training settings the Azure component does not declare, so they cannot go under `finetune:`.
    save_steps: int | None = attrs.field(default=None, metadata=bounds(1, 100_000_000))
    lora_target_modules: str | None = None
    max_eval_examples: int | None = attrs.field(default=None, metadata=bounds(1))
    processes: int | None = attrs.field(default=None, metadata=bounds(1, 64))
    max_tokens_per_micro_batch: int | None = attrs.field(default=None, metadata=bounds(1, 16_777_216))
    gradient_checkpointing: bool | None = None
    gpu_memory_gib: float | None = attrs.field(default=None, metadata=bounds(maximum=4_096, exclusive_minimum=0))
    torch_compile: bool | None = None
    quantize: Literal["none", "4bit"] | None = None

    def target_modules(self) -> tuple[str, ...] | None:
        """``lora_target_modules`` as module names (``None``: every linear layer but the head)."""
        if self.lora_target_modules is None:
            return None
        return tuple(m.strip() for m in self.lora_target_modules.split(",") if m.strip())


SECTIONS: Mapping[str, type] = {
    "model": ModelSection,
    "compute": ComputeSection,
    "data": DataSection,
    "register": RegisterSection,
    "deploy": DeploySection,
    "score": ScoreSection,
    "local": LocalSection,
}
TOP_LEVEL_KEYS = ("name", "backend", "experiment_name", *SECTIONS, "finetune", "evaluate")
