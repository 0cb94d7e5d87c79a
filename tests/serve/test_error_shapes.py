"""Error shapes the live routes cannot produce on demand (a 422, an unexpected exception), on the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from ftkit.serve.files import EndpointFiles
from ftkit.serve.http.app import ServerState, create_app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The endpoint's app (no deployments) with routes that take a typed path parameter or fail."""
    files = EndpointFiles(tmp_path / "ep-shapes")
    files.write_config({"name": "ep-shapes", "deployments": {}, "traffic": {}})
    files.write_keys({"primary": "p", "secondary": "s", "admin": "a"})
    app = create_app(ServerState(files))

    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    async def boom() -> None:
        raise RuntimeError("a bug")

    for prefix in ("/v1", "/score"):
        app.add_api_route(f"{prefix}/typed/{{n}}", typed)
        app.add_api_route(f"{prefix}/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_validation_error_takes_the_route_familys_shape(client: TestClient) -> None:
    """A 422 names the parameter: OpenAI's shape under /v1, Azure's under /score."""
    openai = client.get("/v1/typed/x")
    assert openai.status_code == 422
    assert openai.json()["error"]["param"] == "n"
    assert openai.json()["error"]["type"] == "invalid_request_error"
    azure = client.get("/score/typed/x")
    assert azure.status_code == 422
    assert azure.json() == {
        "error": {"code": "UnprocessableEntity", "message": azure.json()["error"]["message"], "target": "n"}
    }
    assert azure.json()["error"]["message"].startswith("n: ")


def test_unexpected_error_is_a_500_in_shape(client: TestClient) -> None:
    """An exception no route handled still answers in the family's shape, naming only its type."""
    openai = client.get("/v1/boom")
    assert openai.status_code == 500
    assert openai.json()["error"] == {
        "message": "internal error: RuntimeError",
        "type": "server_error",
        "param": None,
        "code": 500,
    }
    azure = client.get("/score/boom")
    assert azure.json() == {"error": {"code": "InternalServerError", "message": "internal error: RuntimeError"}}
