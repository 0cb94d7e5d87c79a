"""`ftkit validate` and `ftkit render` on the example job and on broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftkit.cli import main
from ftkit.jobfile import JobFile


def test_validate_example_against_the_real_spec(
    example_job: Path, pipeline_spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example validates against the real 0.0.82 spec and prints a summary."""
    assert main(["validate", str(example_job), "--component-spec", str(pipeline_spec)]) == 0
    out = capsys.readouterr().out
    assert "Phi-3-mini-4k-instruct-ultrachat-bs8-cosine-ds2-lora-save_limit-1-seqlen-1" in out
    assert "apply_lora = 'true'" in out


def test_render_carries_the_notebooks_values_in_component_encoding(
    example_job: Path, pipeline_spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """render prints the REST body: pinned component, cluster on every step, encoded parameters."""
    assert main(["render", str(example_job), "--component-spec", str(pipeline_spec)]) == 0
    body = json.loads(capsys.readouterr().out)
    props = body["properties"]
    (node,) = props["jobs"].values()
    assert node["componentId"] == "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82"
    inputs = {k: v.get("value", v.get("uri")) for k, v in node["inputs"].items()}
    assert inputs["apply_lora"] == "true"
    assert inputs["apply_deepspeed"] == "true"
    assert inputs["deepspeed_stage"] == "2"
    assert inputs["learning_rate"] == "5e-06"
    assert inputs["num_train_epochs"] == "3"
    assert inputs["lr_scheduler_type"] == "cosine"
    assert inputs["number_of_gpu_to_use_finetuning"] == "8"
    assert all(inputs[f"compute_{s}"] == "gpu-cluster-big" for s in ("model_import", "preprocess", "finetune"))
    assert inputs["mlflow_model_path"].endswith("/models/Phi-3-mini-4k-instruct/labels/latest")
    assert inputs["train_file_path"].endswith("train_sft.jsonl")
    assert props["settings"]["force_rerun"] is True
    assert props["settings"]["continue_on_step_failure"] is False
    assert props["displayName"] == "Phi-3-mini-4k-instruct-ultrachat-bs8-cosine-ds2-lora-save_limit-1-seqlen-1"
    assert props["experimentName"] == "chat_completion_Phi-3-mini-4k-instruct"


def test_render_offline_without_a_spec_matches_render_with_it(
    example_job: Path, pipeline_spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled snapshot renders the same job inputs as the real spec."""
    main(["render", str(example_job), "--format", "yaml"])
    bundled = yaml.safe_load(capsys.readouterr().out)
    main(["render", str(example_job), "--component-spec", str(pipeline_spec), "--format", "yaml"])
    real = yaml.safe_load(capsys.readouterr().out)
    (a,) = bundled["properties"]["jobs"].values()
    (b,) = real["properties"]["jobs"].values()
    assert a["inputs"] == b["inputs"]
    assert a["componentId"] == b["componentId"]


def test_validate_reports_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Typos, enums, ranges, types and unknown keys in one file: all listed with lines, exit 1."""
    job = tmp_path / "bad.yaml"
    job.write_text(
        "name: x\nbackend: azureml\nmodle: {name: y}\nmodel: {name: m}\ncompute: {cluster: c, gpus_per_node: 1}\n"
        "finetune:\n  learning_rat: 0.1\n  lr_scheduler_type: cosin\n  num_train_epochs: 0\n"
        "  apply_lora: maybe\n  per_device_train_batch_size: abc\n"
    )
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    for expected in (
        "bad.yaml:3: modle: unknown top-level key; did you mean model?",
        "bad.yaml:7: finetune.learning_rat: unknown parameter for chat_completion_pipeline 0.0.82; did you mean learning_rate?",
        "bad.yaml:8: finetune.lr_scheduler_type: 'cosin' is not allowed; did you mean cosine?",
        "bad.yaml:9: finetune.num_train_epochs: 0 is below the minimum 1",
        "bad.yaml:10: finetune.apply_lora: expected true or false, got str 'maybe'",
        "bad.yaml:11: finetune.per_device_train_batch_size: expected an integer",
    ):
        assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["validate", "render"])
def test_missing_and_malformed_files_are_one_line_errors(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file or broken YAML exits 1 with a message, not a traceback."""
    assert main([command, str(tmp_path / "missing.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [x\n")
    assert main([command, str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_offline_render_needs_gpus_per_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a live SKU list, an azureml job must state gpus_per_node to render."""
    job = tmp_path / "j.yaml"
    job.write_text("name: x\nbackend: azureml\nmodel: {name: m}\n")
    assert main(["render", str(job)]) == 1
    assert "compute.gpus_per_node" in capsys.readouterr().err


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_validates(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped example job files pass `ftkit validate` (a local one once its model directory is there)."""
    job = JobFile.load(example)
    if job.model.path:
        # The model directory is the user's own (nothing is downloaded): stand one in beside a copy of the job.
        copy = tmp_path / example.name
        copy.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
        _fake_model_dir(tmp_path / job.model.path)
        example = copy
    assert main(["validate", str(example)]) == 0, capsys.readouterr().err


def test_validate_names_what_a_model_directory_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local model directory without a tokenizer or chat template is named at model.path's line."""
    model = tmp_path / "m"
    _fake_model_dir(model)
    (model / "tokenizer_config.json").write_text("{}")
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nbackend: local\nmodel: {name: m, path: m}\n")
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert "job.yaml:3: model.path: " in err
    assert "has no chat template" in err
    (model / "tokenizer.json").unlink()
    assert main(["validate", str(job)]) == 1
    assert "has no tokenizer" in capsys.readouterr().err


def _fake_model_dir(path: Path) -> None:
    """A directory with every file a model needs, holding no real weights (enough for the file checks)."""
    import json
    import struct

    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    header = json.dumps(
        {"model.layers.0.self_attn.qkv_proj.weight": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}
    )
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
