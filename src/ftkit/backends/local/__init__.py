"""The local backend: the whole flow on this machine, with no Azure account.

* training: LoRA fine-tuning with transformers + peft (:mod:`.training`), CPU or one CUDA GPU;
* tracking and registry: MLflow on SQLite under the ftkit home (:mod:`.tracking`, :mod:`.registry`);
* endpoints: a real HTTP server process per endpoint on a loopback port with key auth (:mod:`.endpoints`).

:class:`LocalBackend` implements :class:`~ftkit.backends.base.Backend` by delegating to those parts.
"""

from __future__ import annotations

from .backend import LocalBackend

__all__ = ["LocalBackend"]
