"""The local endpoint server: one process per endpoint, serving its deployments over loopback HTTP.

* :mod:`.state` — the endpoint's files under the ftkit home (config, keys with mode 0600, log), shared by the
  server and by :class:`~ftkit.backends.local.endpoints.LocalEndpoints` in any other process;
* :mod:`.process` — starting, probing and stopping the server process;
* :mod:`.requests` — parsing and checking scoring and chat-completion bodies (400s that name the field);
* :mod:`.generation` — loading a model and generating a left-padded batch token by token (torch);
* :mod:`.batching` — the per-deployment queue and worker that batch requests arriving together;
* :mod:`.app` — the FastAPI application (``/score``, ``/v1/chat/completions``, probes, OpenAPI).

Only :mod:`.state` and :mod:`.process` are imported by the client side; the rest load in the server process
(``python -m ftkit.backends.local.serve --state-dir DIR``).
"""
