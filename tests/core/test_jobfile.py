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


def test_every_section_is_typed_when_loaded() -> None:
    """Exponent forms, quoted numbers and "true"/"false" become their fields' types, finetune included."""
    job = JobFile.from_yaml(
        "name: x\nmodel: {name: m, version: 7}\ncompute: {max_instances: '3', gpus_per_node: 8.0}\n"
        "data: {percent: 2.5e0, rows: null, seed: '4'}\nscore: {do_sample: 'false', temperature: 6e-1}\n"
        "deploy: {request_timeout_ms: 9e4, keep: 'true', server: {batch_window_ms: '0'}}\n"
        "finetune: {learning_rate: 2E-5, apply_lora: 'false', deepspeed_stage: '3', num_train_epochs: 1.0}\n"
    )
    assert (job.model.version, job.compute.max_instances, job.compute.gpus_per_node) == ("7", 3, 8)
    assert (job.data.percent, job.data.seed) == (2.5, 4)
    assert (job.score.do_sample, job.score.temperature) == (False, 0.6)
    assert (job.deploy.request_timeout_ms, job.deploy.keep) == (90000, True)
    assert job.deploy.server is not None
    assert job.deploy.server.batch_window_ms == 0
    spec = job.finetune
    assert (spec.learning_rate, spec.apply_lora, spec.deepspeed_stage, spec.num_train_epochs) == (2e-5, False, 3, 1)
    assert isinstance(spec.num_train_epochs, int)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: {percent: -5}", ":3: data.percent: -5 is out of range: must be above 0 and at most 100"),
        ("data: {percent: 150}", ":3: data.percent: 150 is above the maximum 100"),
        ("data: {rows: 0}", ":3: data.rows: 0 is below the minimum 1"),
        ("data: {rows: 5, percent: 5}", ":3: data.rows: is set together with data.percent"),
        ("compute: {max_instances: 0}", ":3: compute.max_instances: 0 is below the minimum 1"),
        ("compute: {min_instances: 3}", "compute.min_instances: 3 is above compute.max_instances (2)"),
        ("deploy: {instance_count: 0}", ":3: deploy.instance_count: 0 is below the minimum 1"),
        (
            "deploy: {server: {max_bodybytes: 1}}",
            "deploy.server.max_bodybytes: unknown key; did you mean max_body_bytes?",
        ),
        (
            "deploy: {server: {engine: continous}}",
            ":3: deploy.server.engine: 'continous' is not allowed; did you mean continuous?",
        ),
        ("finetune: {learning_rate: 5e-6x}", ":3: finetune.learning_rate: expected a number, got str '5e-6x'"),
        ("finetune: {model_defaults: both}", "finetune.model_defaults: 'both' is not allowed"),
        ("score: {top_p: 0}", ":3: score.top_p: 0 is out of range: must be above 0 and at most 1"),
    ],
)
def test_out_of_range_values_are_problems_with_lines(text: str, message: str) -> None:
    """Bounds from the fields' metadata are checked at load, each named with its line."""
    with pytest.raises(JobFileError) as info:
        JobFile.from_yaml(f"name: x\nmodel: {{name: m}}\n{text}\n")
    assert message in info.value.render()


def test_bounds_are_introspectable() -> None:
    """A field's bounds are in its attrs metadata under JSON Schema's names (for generated schemas)."""
    import attrs

    from ftkit.jobfile import DataSection

    fields = attrs.fields_dict(DataSection)
    assert dict(fields["percent"].metadata) == {"maximum": 100, "exclusive_minimum": 0}
    assert dict(fields["rows"].metadata) == {"minimum": 1, "maximum": 1_000_000_000}
