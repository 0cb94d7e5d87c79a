"""The run's base model: pinned by the backend (the model stage), and as a deployment takes it (the evaluation)."""

from __future__ import annotations

from pathlib import Path

import attrs

from .backends.base import Backend, RegisteredModel
from .jobfile import JobFile
from .model import FoundationModelRef

__all__ = ["base_registered_model", "resolve_base_model"]


def resolve_base_model(job: JobFile, backend: Backend, *, version: str | None = None) -> FoundationModelRef:
    """Return the job's base model, pinned to a version with its tags.

    A model directory (``model.path``) needs no registry lookup: its version is ``local`` and its ``ftkit.path``
    tag is the directory. Otherwise the backend resolves ``model:`` in its registry.

    Args:
        job: The job file.
        backend: The run's backend.
        version: Pin this version instead of the job's (a finished run's, from its ``run.json``).

    Returns:
        The resolved model.

    Raises:
        NotFoundError: The registry has no such model or version.
    """
    ref = job.model.ref()
    if job.model.path:
        return ref.resolved("local", {"ftkit.path": str(job.resolve_path(job.model.path))})
    if version is not None:
        ref = attrs.evolve(ref, version=version, label=None)
    return backend.resolve_model(ref)


def base_registered_model(model: FoundationModelRef) -> RegisteredModel:
    """The foundation model as a deployment takes it: a registry asset on Azure ML, its directory locally."""
    path = model.tags.get("ftkit.path")
    return RegisteredModel(
        name=model.name,
        version=str(model.version),
        id=model.asset_id,
        tags={"ftkit.role": "base"},
        path=Path(path) if path else None,
    )
