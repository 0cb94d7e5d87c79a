"""Backends: where a run's side effects happen.

:class:`~ftkit.backends.base.Backend` is the one seam between ftkit's objects and a service. Two implement it:

* ``azureml`` (:mod:`ftkit.backends.azureml`): Azure ML through azure-ai-ml; the only place that imports Azure.
* ``local`` (:mod:`ftkit.backends.local`): this machine: transformers + peft training, MLflow on SQLite,
  a local HTTP endpoint.

:func:`get_backend` picks one by name; each backend module is imported only when chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..exceptions import Problem, ValidationError
from .base import Backend

__all__ = ["BACKENDS", "Backend", "get_backend"]

# Backend name -> "module:factory". The factory takes keyword settings and returns a Backend.
BACKENDS: dict[str, str] = {
    "azureml": "ftkit.backends.azureml:AzureMLBackend",
    "local": "ftkit.backends.local:LocalBackend",
}


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
    target = BACKENDS.get(name)
    if target is None:
        raise ValidationError(
            [Problem("backend", f"unknown backend {name!r}", f"choose one of: {', '.join(BACKENDS)}")]
        )
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    backend: Backend = factory(**settings)
    return backend
