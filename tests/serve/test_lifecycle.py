"""LocalEndpoints' lifecycle: create, deploy, update, crash detection, delete (no process, no port left)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from ftkit.backends.base import DeploymentSpec, EndpointSpec, RegisteredModel
from ftkit.backends.local.endpoint_process import is_server_alive, port_open
from ftkit.backends.local.endpoints import LocalEndpoints
from ftkit.exceptions import ConflictError, DeploymentError, NotFoundError, ValidationError
from ftkit.serve.files import EndpointFiles

BODY = {"input_data": {"input_string": [[{"role": "user", "content": "hello"}]], "parameters": {"max_new_tokens": 4}}}


def server(endpoints: LocalEndpoints, name: str) -> tuple[int, int]:
    info = EndpointFiles(endpoints.root / name).read_server()
    return int(info["pid"]), int(info["port"])


def gone(files: EndpointFiles, pid: int, port: int) -> bool:
    return not is_server_alive(files, pid) and not port_open(port)


def servers_of(files: EndpointFiles) -> list[int]:
    """The live server processes of an endpoint, found by their command lines (not by server.json)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and is_server_alive(files, int(p.name))]


class TestLifecycle:
    def test_create_deploy_score_delete(self, tmp_path: Path, tiny_model: RegisteredModel) -> None:
        """The notebook's flow: endpoint, deployment, traffic, score, logs; delete leaves no process and no port."""
        endpoints = LocalEndpoints(tmp_path)
        spec = EndpointSpec(name="ep-life", tags={"createdBy": "ftkit"})
        # Two clients creating the same endpoint at once start one server between them, not two.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            infos = list(pool.map(lambda e: e.create_endpoint(spec), [endpoints, LocalEndpoints(tmp_path)]))
        assert infos[0].scoring_uri == infos[1].scoring_uri
        assert len(servers_of(EndpointFiles(tmp_path / "endpoints" / "ep-life"))) == 1
        info = infos[0]
        assert info.provisioning_state == "Succeeded"
        assert info.scoring_uri.startswith("http://127.0.0.1:")
        assert info.scoring_uri.endswith("/score")
        assert info.deployments == ()
        dep = endpoints.create_deployment(DeploymentSpec(name="demo", endpoint="ep-life", model=tiny_model))
        assert dep.provisioning_state == "Succeeded"
        assert dep.model_id == "models:/tiny/1"
        assert endpoints.get_deployment("ep-life", "demo").provisioning_state == "Succeeded"
        info = endpoints.set_traffic("ep-life", {"demo": 100})
        assert info.traffic == {"demo": 100}
        assert isinstance(endpoints.score("ep-life", BODY)["output"], str)
        assert "deployment demo: ready" in endpoints.get_logs("ep-life", "demo")
        assert [e.name for e in endpoints.list_endpoints()] == ["ep-life"]
        # Another process's view: a fresh object over the same home sees the same endpoint, and can delete it.
        other = LocalEndpoints(tmp_path)
        assert other.get_endpoint("ep-life").provisioning_state == "Succeeded"
        pid, port = server(endpoints, "ep-life")
        files = EndpointFiles(tmp_path / "endpoints" / "ep-life")
        other.delete_endpoint("ep-life")
        assert gone(files, pid, port)
        assert not files.root.exists()
        assert endpoints.list_endpoints() == []
        with pytest.raises(NotFoundError, match="ep-life"):
            endpoints.get_endpoint("ep-life")
        endpoints.delete_endpoint("ep-life")  # idempotent

    def test_crash_is_detected_and_recreate_restarts(self, tmp_path: Path, tiny_model: RegisteredModel) -> None:
        """A killed server shows as Failed with its log; scoring says so; create_endpoint restarts it."""
        endpoints = LocalEndpoints(tmp_path)
        endpoints.create_endpoint(EndpointSpec(name="ep-crash"))
        endpoints.create_deployment(DeploymentSpec(name="blue", endpoint="ep-crash", model=tiny_model))
        before = endpoints.set_traffic("ep-crash", {"blue": 100})
        keys = endpoints.get_keys("ep-crash")
        pid, port = server(endpoints, "ep-crash")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120  # generous: a loaded machine is slow, not wrong
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            assert endpoints.get_endpoint("ep-crash").provisioning_state == "Failed"
            assert endpoints.get_deployment("ep-crash", "blue").provisioning_state == "Failed"
            error = endpoints.server_error("ep-crash")
            assert error is not None
            assert f"server process {pid} is gone" in error
            with pytest.raises(DeploymentError, match="not running") as info:
                endpoints.score("ep-crash", BODY)
            assert info.value.logs
            # Even down, the endpoint's URL is its own.
            assert endpoints.get_endpoint("ep-crash").scoring_uri == before.scoring_uri
            info2 = endpoints.create_endpoint(EndpointSpec(name="ep-crash"))
            assert info2.provisioning_state == "Succeeded"
            assert info2.traffic == {"blue": 100}
            assert isinstance(endpoints.score("ep-crash", BODY)["output"], str)
            # Same URL and keys: a client that saved them before the crash carries on.
            assert (info2.scoring_uri, info2.openai_uri) == (before.scoring_uri, before.openai_uri)
            assert endpoints.get_keys("ep-crash") == keys
            for key in (keys.primary, keys.secondary):
                resp = httpx.post(before.scoring_uri, json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=30)
                assert resp.status_code == 200, resp.text
            assert server(endpoints, "ep-crash")[1] == port
        finally:
            endpoints.delete_endpoint("ep-crash")

    def test_restart_on_a_taken_port_fails_clearly(self, tmp_path: Path) -> None:
        """If another process took the endpoint's port while it was down, the restart fails naming the port
        instead of moving the endpoint to another URL; once the port is free it comes back on it."""
        endpoints = LocalEndpoints(tmp_path)
        info = endpoints.create_endpoint(EndpointSpec(name="ep-port"))
        try:
            pid, port = server(endpoints, "ep-port")
            os.kill(pid, signal.SIGKILL)
            files = EndpointFiles(tmp_path / "endpoints" / "ep-port")
            deadline = time.monotonic() + 120  # generous: a loaded machine is slow, not wrong
            while not gone(files, pid, port) and time.monotonic() < deadline:
                time.sleep(0.05)
            squatter = socket.socket()
            # As any server would: the dead server's accepted connections (our own probes) may linger in
            # TIME_WAIT on this port, and a bind without SO_REUSEADDR fails on them, not on a listener.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                squatter.bind(("127.0.0.1", port))
                squatter.listen()
                with pytest.raises(ConflictError, match=f"port {port} .* is taken by another process"):
                    endpoints.create_endpoint(EndpointSpec(name="ep-port"))
                assert f"port {port} is taken" in endpoints.server_error("ep-port")  # type: ignore[operator]
            finally:
                squatter.close()
            again = endpoints.create_endpoint(EndpointSpec(name="ep-port"))
            assert again.scoring_uri == info.scoring_uri
            assert again.provisioning_state == "Succeeded"
        finally:
            endpoints.delete_endpoint("ep-port")

    def test_update_and_delete_deployment(self, tmp_path: Path, tiny_model: RegisteredModel) -> None:
        """Deployments update in place, cannot be deleted while they have traffic, and go away after."""
        endpoints = LocalEndpoints(tmp_path)
        endpoints.create_endpoint(EndpointSpec(name="ep-upd"))
        try:
            spec = DeploymentSpec(name="blue", endpoint="ep-upd", model=tiny_model)
            endpoints.create_deployment(spec)
            endpoints.create_deployment(DeploymentSpec(name="green", endpoint="ep-upd", model=tiny_model))
            endpoints.set_traffic("ep-upd", {"blue": 100, "green": 0})
            endpoints.create_deployment(spec)  # update: same model, no reload needed
            with pytest.raises(ConflictError, match="traffic"):
                endpoints.delete_deployment("ep-upd", "blue")
            endpoints.delete_deployment("ep-upd", "green")
            endpoints.delete_deployment("ep-upd", "green")  # idempotent
            assert endpoints.get_endpoint("ep-upd").deployments == ("blue",)
            assert endpoints.score("ep-upd", BODY, deployment="blue")["output"] is not None
        finally:
            endpoints.delete_endpoint("ep-upd")


class TestErrors:
    def test_bad_names_and_traffic(self, tmp_path: Path) -> None:
        """Invalid names and traffic are ValidationErrors naming the problem; unknown endpoints NotFoundError."""
        endpoints = LocalEndpoints(tmp_path)
        with pytest.raises(ValidationError, match="letters, digits and hyphens"):
            endpoints.create_endpoint(EndpointSpec(name="9 bad name"))
        with pytest.raises(NotFoundError, match="endpoints: none"):
            endpoints.get_endpoint("nope")
        with pytest.raises(NotFoundError):
            endpoints.get_keys("../etc")
        endpoints.delete_endpoint("nope")

    def test_delete_never_leaves_the_endpoints_folder(self, tmp_path: Path) -> None:
        """delete_endpoint("..") is refused: it once removed the whole ftkit home (endpoints' parent)."""
        home = tmp_path / "home"
        endpoints = LocalEndpoints(home)
        (home / "endpoints").mkdir(parents=True)
        (home / "mlflow.db").write_text("precious")
        for bad in ("..", ".", "../home", "a/b", ""):
            with pytest.raises(ValidationError, match="not a valid endpoint name"):
                endpoints.delete_endpoint(bad)
        assert (home / "mlflow.db").read_text() == "precious"

    def test_model_without_a_directory_and_failed_load(self, tmp_path: Path) -> None:
        """A deployment of a model with no directory is refused; one whose files do not load fails with logs."""
        endpoints = LocalEndpoints(tmp_path)
        endpoints.create_endpoint(EndpointSpec(name="ep-bad"))
        try:
            no_path = RegisteredModel(name="m", version="1", id="models:/m/1")
            with pytest.raises(ValidationError, match="no local directory"):
                endpoints.create_deployment(DeploymentSpec(name="blue", endpoint="ep-bad", model=no_path))
            empty = tmp_path / "empty-model"
            empty.mkdir()
            broken = RegisteredModel(name="m", version="1", id="models:/m/1", path=empty)
            with pytest.raises(DeploymentError, match="deployment blue of endpoint ep-bad failed") as info:
                endpoints.create_deployment(DeploymentSpec(name="blue", endpoint="ep-bad", model=broken))
            assert info.value.logs
            assert endpoints.get_deployment("ep-bad", "blue").provisioning_state == "Failed"
            with pytest.raises(ValidationError, match="sum to 50"):
                endpoints.set_traffic("ep-bad", {"blue": 50})
            with pytest.raises(ValidationError, match="no such deployment"):
                endpoints.set_traffic("ep-bad", {"red": 100})
        finally:
            endpoints.delete_endpoint("ep-bad")
