"""Test doubles that ship with ftkit, for ftkit's own tests and for users' integration suites.

* :class:`FakeAzureML`: the Azure ML services in memory, as an azure-core transport plus a credential (and an
  opt-in loopback server), so the real azure-ai-ml client, its blob uploads, ``jobs.stream``, mlflow and
  ftkit's ``azureml`` backend run offline. See docs/testing.md.
* :class:`FakeClock`: a clock and sleep for anything that waits, so waiting takes no time.
* :class:`ScriptedBackend`: the backend protocol in memory (no SDK), for testing ``EndpointDeployer``,
  ``JobRunner`` and your own code above the backends.
"""

from __future__ import annotations

from .azureml import DEFAULT_VM_SIZES, FakeAzureML, FakeCredential, Fault, RecordedRequest, RegistryModel
from .clock import FakeClock
from .scripted import Call, ScriptedBackend, ScriptedEndpoints

__all__ = [
    "DEFAULT_VM_SIZES",
    "Call",
    "FakeAzureML",
    "FakeClock",
    "FakeCredential",
    "Fault",
    "RecordedRequest",
    "RegistryModel",
    "ScriptedBackend",
    "ScriptedEndpoints",
]
