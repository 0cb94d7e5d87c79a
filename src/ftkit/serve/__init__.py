"""ftkit's inference server: the HTTP contract, the application, and the engines that generate.

The local backend runs one server process per endpoint (``python -m ftkit.serve --state-dir DIR``) and manages
its lifecycle (:mod:`ftkit.backends.local.endpoints`, :mod:`ftkit.backends.local.endpoint_process`); everything
that process runs lives here, in three layers that only import downwards:

* :mod:`.contract` — what a client may send and gets back, with no torch and no HTTP: request parsing and
  checking (:mod:`.contract.requests`, 400s that name the field), the OpenAPI schemas generated from the same
  field definitions (:mod:`.contract.openapi`), stop strings (:mod:`.contract.stops`), prompt rendering
  (:mod:`.contract.prompts`);
* :mod:`.http` — the FastAPI application (:mod:`.http.app`), by route group: ``/score`` (:mod:`.http.score`),
  ``/v1/chat/completions`` and the models (:mod:`.http.chat`), probes (:mod:`.http.probes`), with the error
  shapes (:mod:`.http.errors`), the server's state (:mod:`.http.state`) and the request plumbing
  (:mod:`.http.jobs`);
* :mod:`.engines` — what turns queued requests into tokens, behind one :class:`~.engines.base.Engine` Protocol
  and registered by name (:mod:`.engines.registry`): ``static`` (:mod:`.engines.static`, batches of
  requests that arrive together), ``continuous`` (:mod:`.engines.continuous`, in-flight batching over a KV
  cache of its own with CUDA-graph decode steps and Triton kernels), ``transformers``
  (:mod:`.engines.transformers`, transformers' own continuous batching);

and beside them the server process's own pieces: :mod:`.files` (the endpoint's files under the ftkit home,
shared with the managing process), :mod:`.records` (the typed records ``endpoint.json`` holds),
:mod:`.placement` (device, dtype, engine and KV-cache size of a deployment) and :mod:`.logs`.

Only :mod:`.files` and :mod:`.records` are imported by client processes; the rest loads in the server process.
"""
