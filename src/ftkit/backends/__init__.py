"""Backends: where a run's side effects happen.

:class:`~ftkit.backends.base.Backend` is the one seam between ftkit's objects and a service. Two implement it:

* ``azureml`` (:mod:`ftkit.backends.azureml`): Azure ML through azure-ai-ml; the only place that imports Azure.
* ``local`` (:mod:`ftkit.backends.local`): this machine: transformers + peft training, MLflow on SQLite,
  a local HTTP endpoint.

:func:`get_backend` picks one by name and :func:`backend_for_job` the one a job file names, with the job's
settings; each backend module is imported only when chosen. :func:`backend_traits` answers what differs between
backends before one exists (see :mod:`ftkit.backends.traits`).

This package's own import is light (its errors and the traits): the job file and the plan read the traits, and
:mod:`.base` imports them, so ``Backend`` is loaded from :mod:`.base` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .traits import TRAITS, BackendTraits, backend_traits

if TYPE_CHECKING:
    from ..jobfile import JobFile
    from .base import Backend

__all__ = ["BACKENDS", "TRAITS", "Backend", "BackendTraits", "backend_for_job", "backend_traits", "get_backend"]

# Backend name -> "module:factory". The factory takes keyword settings and returns a Backend.
BACKENDS: dict[str, str] = {
    "azureml": "ftkit.backends.azureml:AzureMLBackend",
    "local": "ftkit.backends.local:LocalBackend",
}


def __getattr__(name: str) -> Any:
    if name == "Backend":
        return importlib.import_module("ftkit.backends.base").Backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_backend(name: str, **settings: Any) -> Backend:
    """Create the backend called ``name``.

    Args:
        name: ``azureml`` or ``local``.
        **settings: Passed to the backend's constructor.

    Returns:
        The backend.

    Raises:
        ValidationError: No backend has that name.
    """
    backend_traits(name)  # an unknown name: the error names the backends there are
    module_name, _, attr = BACKENDS[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    backend: Backend = factory(**settings)
    return backend


def backend_for_job(job: JobFile, **settings: Any) -> Backend:
    """Create the backend a job file names, with the settings the job gives it.

    The local backend takes the job's ``local.home`` and ``local.device``; Azure ML finds its workspace itself
    (environment variables or ``config.json``).

    Args:
        job: The job file.
        **settings: More constructor settings (``new_job=True`` for the local backend), over the job's.

    Returns:
        The backend.

    Raises:
        ValidationError: The job names no known backend.
    """
    if job.backend == "local":
        settings = {"home": job.local.home, "device": job.local.device, **settings}
    return get_backend(job.backend, **settings)
