"""ftkit: fine-tune a registry chat model on a chat dataset, then register, deploy and test it.

The public objects load lazily, so ``import ftkit`` stays fast and never imports torch, mlflow or Azure;
each is imported from its module on first use.
"""

import importlib as _importlib
import typing as _typing

from .exceptions import (
    AuthError,
    BackendError,
    ComputeValidationError,
    ConflictError,
    DatasetValidationError,
    DeploymentError,
    EvaluationError,
    EvaluationGateError,
    FtkitError,
    JobFailedError,
    JobFileError,
    JobStorageError,
    JobTimeoutError,
    MissingDependencyError,
    NotFoundError,
    ParameterError,
    ProbeFailedError,
    Problem,
    QuotaError,
    ScoringError,
    StorageError,
    TagError,
    TransientBackendError,
    ValidationError,
)
from .retry import is_testing, set_testing

if _typing.TYPE_CHECKING:
    from .component import ComponentSchema
    from .compute import ClusterInfo, ComputeValidator, VmSize
    from .data import ChatDatasetBuilder, DatasetBuild, DatasetReport, SplitSelection
    from .deploy import EndpointDeployer
    from .evaluation import Candidate, EvaluateSection, Evaluation, EvaluationResult
    from .finetune import FinetunePipelineSpec
    from .jobfile import JobFile
    from .metrics import LossCurves, MetricsSummary, plot_loss_curves, summarize
    from .model import FoundationModelRef
    from .runner import JobRunner, RunResult, StageEvent, run

# Public name -> module that defines it (imported on first attribute access).
_LAZY: dict[str, str] = {
    "ChatDatasetBuilder": "data",
    "ClusterInfo": "compute",
    "ComponentSchema": "component",
    "ComputeValidator": "compute",
    "DatasetBuild": "data",
    "DatasetReport": "data",
    "Candidate": "evaluation",
    "EndpointDeployer": "deploy",
    "EvaluateSection": "evaluation",
    "Evaluation": "evaluation",
    "EvaluationResult": "evaluation",
    "FinetunePipelineSpec": "finetune",
    "FoundationModelRef": "model",
    "JobFile": "jobfile",
    "JobRunner": "runner",
    "LossCurves": "metrics",
    "MetricsSummary": "metrics",
    "RunResult": "runner",
    "SplitSelection": "data",
    "StageEvent": "runner",
    "VmSize": "compute",
    "plot_loss_curves": "metrics",
    "run": "runner",
    "summarize": "metrics",
}

__all__ = [
    "AuthError",
    "BackendError",
    "Candidate",
    "ChatDatasetBuilder",
    "ClusterInfo",
    "ComponentSchema",
    "ComputeValidationError",
    "ComputeValidator",
    "ConflictError",
    "DatasetBuild",
    "DatasetReport",
    "DatasetValidationError",
    "DeploymentError",
    "EndpointDeployer",
    "EvaluateSection",
    "Evaluation",
    "EvaluationError",
    "EvaluationGateError",
    "EvaluationResult",
    "FinetunePipelineSpec",
    "FoundationModelRef",
    "FtkitError",
    "JobFailedError",
    "JobFile",
    "JobFileError",
    "JobRunner",
    "JobStorageError",
    "JobTimeoutError",
    "LossCurves",
    "MetricsSummary",
    "MissingDependencyError",
    "NotFoundError",
    "ParameterError",
    "ProbeFailedError",
    "Problem",
    "QuotaError",
    "RunResult",
    "ScoringError",
    "SplitSelection",
    "StageEvent",
    "StorageError",
    "TagError",
    "TransientBackendError",
    "ValidationError",
    "VmSize",
    "is_testing",
    "plot_loss_curves",
    "run",
    "set_testing",
    "summarize",
]


def __getattr__(name: str) -> _typing.Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("ftkit")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
