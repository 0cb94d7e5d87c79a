"""What differs between backends is answered by their traits and methods, the same by name and by object."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftkit.backends import BACKENDS, TRAITS, backend_for_job, backend_traits, get_backend
from ftkit.backends.base import JobHandle, RegisterRequest
from ftkit.cli.dry_run import submission_body
from ftkit.compute import ComputeValidator
from ftkit.exceptions import NotFoundError, ValidationError
from ftkit.jobfile import ComputeSection, JobFile
from ftkit.model import FoundationModelRef
from ftkit.plan import plan_run
from ftkit.runner import JobRunner
from ftkit.testing import FakeClock, ScriptedBackend

REF = FoundationModelRef(name="Phi-3-mini-4k-instruct", version="15")


def test_every_backend_has_traits_and_a_factory() -> None:
    """One registry entry each, under the same names; an unknown name names those there are."""
    assert set(TRAITS) == set(BACKENDS)
    assert all(traits.name == name for name, traits in TRAITS.items())
    with pytest.raises(ValidationError, match="unknown backend 'sagemaker'.*choose one of: azureml, local"):
        backend_traits("sagemaker")
    with pytest.raises(ValidationError, match="choose one of: azureml, local"):
        get_backend("sagemaker")


def test_commands_name_the_backend_unless_it_is_the_default() -> None:
    assert backend_traits("local").command("ftkit cleanup") == "ftkit cleanup"
    assert backend_traits("azureml").command("ftkit job cancel j") == "ftkit job cancel j --backend azureml"


def test_the_dry_run_request_is_the_backends_own() -> None:
    """Each backend builds what it would submit from the plan, offline: a pipeline body, or the training request."""
    text = "name: t\nmodel: {name: Phi-3-mini-4k-instruct}\ncompute: {gpus_per_node: 1}\n"
    text += "data: {train_file: a.jsonl, test_file: b.jsonl}\n"
    local = plan_run(JobFile.from_yaml(text + "backend: local\n"))
    azure = plan_run(JobFile.from_yaml(text + "backend: azureml\n"))
    assert submission_body("local", local)["train_file"].endswith("a.jsonl")
    body = submission_body("azureml", azure)
    assert body["component"].startswith("azureml://registries/azureml/components/")


def test_backend_for_job_takes_the_jobs_local_settings(tmp_path: Path) -> None:
    job = JobFile.from_yaml(f"name: t\nbackend: local\nmodel: {{name: m}}\nlocal: {{home: {tmp_path}, device: cpu}}\n")
    backend = backend_for_job(job)
    assert backend.traits is backend_traits("local")
    assert (getattr(backend, "home", None), getattr(backend, "device", None)) == (tmp_path.absolute(), "cpu")
    assert backend.model_id(REF) == "models:/Phi-3-mini-4k-instruct/15"
    assert backend.model_id(REF, path=tmp_path) == str(tmp_path)


class TestScripted:
    def test_stands_in_for_the_backend_it_names(self) -> None:
        """name="local": local traits, no cluster, a models:/ id; the default: Azure ML's, a cluster, an asset id."""
        local, azure = ScriptedBackend(name="local"), ScriptedBackend()
        assert local.traits is backend_traits("local")
        assert azure.traits is backend_traits("azureml")
        section = ComputeSection(cluster="gpu", size="Standard_ND40rs_v2")
        assert local.ensure_compute(section, ComputeValidator()) is None
        check = azure.ensure_compute(section, ComputeValidator())
        assert check is not None
        assert check.gpus_per_node == 8
        assert local.model_id(REF) == "models:/Phi-3-mini-4k-instruct/15"
        assert azure.model_id(REF, path=Path("/m")) == REF.asset_id
        with pytest.raises(ValidationError, match="unknown backend"):
            ScriptedBackend(name="nowhere")

    def test_get_model_returns_what_was_registered(self) -> None:
        backend = ScriptedBackend()
        job = JobHandle(name="j", status="Completed")
        for version in ("1", "2"):
            backend.register_model(RegisterRequest(job=job, name="ft", version=version))
        assert backend.get_model("ft", "1").id == "models:/ft/1"
        assert backend.get_model("ft").version == "2"
        with pytest.raises(NotFoundError, match="registered: ft:1, ft:2"):
            backend.get_model("ft", "3")


def test_an_interrupted_run_asks_the_backend_whether_to_stop_its_job(tmp_path: Path) -> None:
    """A backend whose jobs resume gets its job stopped by default; one whose jobs cannot resume keeps it running."""
    for name, stops in (("local", True), ("azureml", False)):
        job = JobFile.from_yaml(f"name: t\nbackend: {name}\nmodel: {{name: m}}\ndata: {{source: s}}\n")
        runner = JobRunner(job, ScriptedBackend(name=name), run_dir=tmp_path / name, clock=FakeClock())
        assert runner.stop_job_on_interrupt is stops
