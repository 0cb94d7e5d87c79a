"""The YAML job file: loading, every problem at once with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftkit import JobFile
from ftkit.exceptions import JobFileError


def test_example_loads_with_the_notebooks_values(example_job: Path) -> None:
    """examples/phi3-ultrachat.yaml loads into typed sections."""
    job = JobFile.load(example_job)
    assert job.name == "phi3-ultrachat"
    assert job.backend == "azureml"
    assert job.model.ref().label == "latest"
    assert job.compute.size == "Standard_ND40rs_v2"
    assert job.compute.gpus_per_node == 8
    assert job.data.percent == 5
    assert job.finetune.learning_rate == 5e-6
    assert job.deploy.liveness_initial_delay_s == 600
    assert job.lines["finetune.learning_rate"] > job.lines["finetune"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    """Unknown keys (with suggestions), wrong types and bad enums are all reported, each with its line."""
    path = write(
        tmp_path,
        "name: x\nbackend: azureml1\nmodle: {}\nmodel: {name: m}\ncompute:\n  sise: 1\n  max_instances: two\n"
        "deploy: {keep: maybe}\n",
    )
    with pytest.raises(JobFileError) as info:
        JobFile.load(path)
    found = {(p.where, p.line) for p in info.value.problems}
    assert found == {
        ("backend", 2),
        ("modle", 3),
        ("compute.sise", 6),
        ("compute.max_instances", 7),
        ("deploy.keep", 8),
    }
    text = str(info.value)
    assert "did you mean model?" in text
    assert "did you mean size?" in text
    assert "choose one of: azureml, local" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("backend: local\n", "name: is required"),
        ("name: x\n", "model: is required"),
        ("name: x\nmodel: {registry: azureml}\n", "model.name: is required"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    """Malformed YAML, a non-mapping and missing required keys are one-line errors."""
    with pytest.raises(JobFileError, match=message):
        JobFile.load(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    """A missing file says so."""
    with pytest.raises(JobFileError, match="no such file"):
        JobFile.load(tmp_path / "nope.yaml")


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """PyYAML reads 5e-6 as a string; ftkit treats it as the number it is."""
    job = JobFile.load(write(tmp_path, "name: x\nmodel: {name: m, version: 7}\nscore: {temperature: 6e-1}\n"))
    assert job.score.temperature == pytest.approx(0.6)
    assert job.model.version == "7"


def test_train_and_test_files_go_together(tmp_path: Path) -> None:
    """Giving only one ready data file is an error, not a silent mix with built data."""
    with pytest.raises(JobFileError, match="train_file and test_file go together"):
        JobFile.load(write(tmp_path, "name: x\nmodel: {name: m}\ndata: {train_file: t.jsonl}\n"))
