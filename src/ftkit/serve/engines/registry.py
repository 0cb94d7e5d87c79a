"""The engines a deployment may be served by, by name: one line per engine.

Each entry names the module whose ``start(name, model, options)`` (an :class:`~.base.EngineStart`) starts the
engine; the module is imported only in the server process, when a deployment asks for it. The names are what
``deploy.server.engine`` accepts (with ``auto``, placement's choice between ``continuous`` and ``static``): the
job file's check, its JSON schema and the records read them from here (:data:`ftkit.deployment_settings.ENGINES`).

This module imports nothing, so that the job file's check can read it without loading torch.
"""

from __future__ import annotations

__all__ = ["ENGINES"]

ENGINES: dict[str, str] = {
    "static": "ftkit.serve.engines.static",  # batches of the requests that arrive together (any model, CPU or GPU)
    "continuous": "ftkit.serve.engines.continuous.start",  # in-flight batching over ftkit's paged KV cache
    "transformers": "ftkit.serve.engines.transformers",  # transformers' own continuous batching (greedy only)
}
"""Engine name to the module that starts it (its ``start`` function)."""
