"""``ftkit endpoint list | show | delete`` and ``ftkit cleanup``, run as separate processes over a live endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ftkit.backends.base import DeploymentSpec, EndpointSpec, RegisteredModel
from ftkit.backends.local.endpoint_process import is_server_alive, port_open
from ftkit.backends.local.endpoints import LocalEndpoints
from ftkit.cli.main import main
from ftkit.serve.files import EndpointFiles


def ftkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftkit", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )


def test_list_delete_cleanup_from_another_process(tmp_path: Path, tiny_model: RegisteredModel) -> None:
    """Endpoints started here are listed, shown Failed once their server dies, and deleted from another process."""
    endpoints = LocalEndpoints(tmp_path)
    endpoints.create_endpoint(EndpointSpec(name="ep-one"))
    endpoints.create_deployment(DeploymentSpec(name="blue", endpoint="ep-one", model=tiny_model))
    endpoints.set_traffic("ep-one", {"blue": 100})
    endpoints.create_endpoint(EndpointSpec(name="ep-two"))
    one = EndpointFiles(tmp_path / "endpoints" / "ep-one").read_server()
    two = EndpointFiles(tmp_path / "endpoints" / "ep-two").read_server()
    try:
        listed = ftkit("endpoint", "list", "--home", str(tmp_path), "--json")
        assert listed.returncode == 0, listed.stderr
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["name"] for r in records] == ["ep-one", "ep-two"]
        assert records[0]["traffic"] == {"blue": 100}
        assert records[0]["provisioning_state"] == "Succeeded"
        placement = records[0]["placement"]["blue"]
        assert (placement["device"], placement["dtype"], placement["engine"]) == ("cpu", "float32", "static")
        assert placement["weights_gib"] > 0
        shown = ftkit("endpoint", "list", "--home", str(tmp_path))
        assert "blue         cpu float32, static batching" in shown.stdout

        os.kill(two["pid"], signal.SIGKILL)
        endpoints.get_endpoint("ep-two")  # reaps the killed child
        text = ftkit("endpoint", "list", "--home", str(tmp_path))
        assert "ep-two  Failed" in text.stdout
        assert "is gone" in text.stdout

        deleted = ftkit("endpoint", "delete", "ep-one", "--home", str(tmp_path))
        assert deleted.returncode == 0, deleted.stderr
        files = EndpointFiles(tmp_path / "endpoints" / "ep-one")
        assert not is_server_alive(files, one["pid"])
        assert not port_open(one["port"])

        missing = ftkit("endpoint", "delete", "ep-one", "--home", str(tmp_path))
        assert missing.returncode == 1
        assert "endpoint 'ep-one' not found; endpoints: ep-two" in missing.stderr

        dry = ftkit("cleanup", "--home", str(tmp_path), "--dry-run")
        assert "would delete endpoint ep-two" in dry.stdout
        assert endpoints.names() == ["ep-two"]
        clean = ftkit("cleanup", "--home", str(tmp_path))
        assert clean.returncode == 0, clean.stderr
        assert endpoints.names() == []
    finally:
        for name in endpoints.names():
            endpoints.delete_endpoint(name)


def test_show_gives_what_a_client_needs(tmp_path: Path, tiny_model: RegisteredModel) -> None:
    """`ftkit endpoint show NAME` from another process prints the URLs, deployments and traffic; the keys only
    with --show-keys; a client that takes them from there is answered."""
    import httpx

    endpoints = LocalEndpoints(tmp_path)
    endpoints.create_endpoint(EndpointSpec(name="ep-show"))
    endpoints.create_deployment(DeploymentSpec(name="blue", endpoint="ep-show", model=tiny_model))
    endpoints.set_traffic("ep-show", {"blue": 100})
    try:
        keys = endpoints.get_keys("ep-show")
        plain = ftkit("endpoint", "show", "ep-show", "--home", str(tmp_path))
        assert plain.returncode == 0, plain.stderr
        assert "state        Succeeded" in plain.stdout
        assert "traffic      blue=100%" in plain.stdout
        assert "blue       cpu float32, static batching" in plain.stdout
        assert keys.primary not in plain.stdout
        assert "--show-keys" in plain.stdout
        shown = ftkit("endpoint", "show", "ep-show", "--home", str(tmp_path), "--show-keys", "--json")
        record = json.loads(shown.stdout)
        assert record["keys"] == {"primary": keys.primary, "secondary": keys.secondary}
        assert record["scoring_uri"] in plain.stdout
        assert record["openai_uri"] in plain.stdout
        body = {"input_data": {"input_string": [[{"role": "user", "content": "hi"}]], "parameters": {}}}
        answer = httpx.post(
            record["scoring_uri"], json=body, headers={"Authorization": f"Bearer {record['keys']['secondary']}"}
        )
        assert answer.status_code == 200, answer.text
        missing = ftkit("endpoint", "show", "nope", "--home", str(tmp_path))
        assert missing.returncode == 1
        assert "endpoint 'nope' not found; endpoints: ep-show" in missing.stderr
    finally:
        endpoints.delete_endpoint("ep-show")


def test_empty_home(tmp_path: Path, capsys: object) -> None:
    """With no endpoints, list and cleanup say so and succeed."""
    assert main(["endpoint", "list", "--home", str(tmp_path)]) == 0
    assert main(["cleanup", "--home", str(tmp_path)]) == 0
