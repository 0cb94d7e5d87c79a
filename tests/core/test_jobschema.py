"""The job file's JSON Schema: generated from the attrs classes, committed in docs/, and true to every example."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from ftkit.jobfile import JobFile
from ftkit.jobschema import attribute_docs, job_file_schema

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "jobfile.schema.json"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = job_file_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_the_generated_one() -> None:
    """docs/jobfile.schema.json is what editors load; regenerate it with `python -m ftkit.jobschema`."""
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == job_file_schema()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_and_points_editors_at_the_schema(
    example: Path, validator: jsonschema.Draft202012Validator
) -> None:
    text = example.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    assert (example.parent / first.split("$schema=", 1)[1]).resolve() == COMMITTED
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))
    ]
    assert errors == []
    JobFile.load(example)  # and the loader agrees


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"backend": "cloud"}, "backend"),
        ({"deploy": {"kep": True}}, "deploy"),
        ({"data": {"percent": "lots"}}, "data.percent"),
        ({"finetune": {"apply_lora": "maybe"}}, "finetune.apply_lora"),
        ({"finetune": {"lr_scheduler_type": "wavy"}}, "finetune.lr_scheduler_type"),
        ({"finetune": {"num_train_epochs": 0}}, "finetune.num_train_epochs"),
        ({"nmae": "x"}, ""),
    ],
)
def test_what_the_loader_rejects_the_schema_rejects(
    change: dict[str, object], where: str, validator: jsonschema.Draft202012Validator
) -> None:
    data = yaml.safe_load(EXAMPLES[0].read_text(encoding="utf-8"))
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    errors = list(validator.iter_errors(data))
    assert errors, change
    assert {".".join(map(str, e.absolute_path)) for e in errors} == {where}


def test_keys_carry_their_docstring_descriptions_and_defaults() -> None:
    schema = job_file_schema()
    keep = schema["properties"]["deploy"]["properties"]["keep"]
    assert keep["description"].startswith("Keep the endpoint after the run")
    assert keep["default"] is False
    assert schema["required"] == ["name", "model"]
    finetune = schema["properties"]["finetune"]["properties"]
    assert finetune["learning_rate"]["description"] == "Starting learning rate."
    assert "train_file_path" not in finetune  # ftkit wires it from `data`
    assert "trust_remote_code" in finetune  # an input the component declares beyond the typed fields


def test_attribute_docs_reads_google_style_continuations() -> None:
    from ftkit.runner import StageEvent

    docs = attribute_docs(StageEvent)
    assert docs["stage"].startswith("One of `model`, `compute`")
    assert docs["stage"].endswith("`cleanup`.")


def test_ftkit_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    from ftkit.cli import main

    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == job_file_schema()
