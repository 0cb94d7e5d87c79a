"""LocalBackend's endpoint operations (delegated to LocalEndpoints) satisfy the Backend protocol end to end."""

from __future__ import annotations

from pathlib import Path

from ftkit.backends.base import Backend, DeploymentSpec, EndpointSpec, RegisteredModel
from ftkit.backends.local import LocalBackend
from ftkit.backends.local.endpoint_process import port_open


def test_local_backend_endpoint_flow(tmp_path: Path, tiny_model: RegisteredModel) -> None:
    """Create, deploy blue then green, move traffic, score each, read logs, delete: no port left open."""
    backend = LocalBackend(home=tmp_path)
    assert isinstance(backend, Backend)
    info = backend.endpoints.create_endpoint(EndpointSpec(name="ep-backend"))
    port = int(info.scoring_uri.split(":")[2].split("/")[0])
    try:
        for name in ("blue", "green"):
            backend.endpoints.create_deployment(DeploymentSpec(name=name, endpoint="ep-backend", model=tiny_model))
        backend.endpoints.set_traffic("ep-backend", {"blue": 100, "green": 0})
        body = {
            "input_data": {"input_string": [[{"role": "user", "content": "hi"}]], "parameters": {"max_new_tokens": 3}}
        }
        assert isinstance(backend.endpoints.score("ep-backend", body)["output"], str)
        assert isinstance(backend.endpoints.score("ep-backend", body, deployment="green")["output"], str)
        info = backend.endpoints.set_traffic("ep-backend", {"blue": 0, "green": 100})
        assert info.traffic == {"blue": 0, "green": 100}
        backend.endpoints.delete_deployment("ep-backend", "blue")
        assert backend.endpoints.get_endpoint("ep-backend").deployments == ("green",)
        assert "green" in backend.endpoints.get_logs("ep-backend", "green")
        assert [e.name for e in backend.endpoints.list_endpoints()] == ["ep-backend"]
        keys = backend.endpoints.regenerate_key("ep-backend", "secondary")
        assert keys == backend.endpoints.get_keys("ep-backend")
    finally:
        backend.endpoints.delete_endpoint("ep-backend")
    assert not port_open(port)
    assert backend.endpoints.list_endpoints() == []
