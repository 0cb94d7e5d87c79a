"""The engines by name: the registry is what settings, records and the job file's schema accept."""

from __future__ import annotations

import importlib
import inspect

import pytest

from ftkit.deployment_settings import ENGINES, ServerSettings
from ftkit.exceptions import ValidationError
from ftkit.jobschema import job_file_schema
from ftkit.serve.engines import registry


def test_the_settings_accept_exactly_auto_and_the_registered_engines() -> None:
    assert ("auto", *registry.ENGINES) == ENGINES
    assert ServerSettings.from_dict({"version": 1, "engine": "transformers"}).engine == "transformers"
    with pytest.raises(ValidationError) as caught:
        ServerSettings.from_dict({"version": 1, "engine": "continous"})
    problem = caught.value.problems[0]
    assert problem.where == "settings.engine"
    assert "did you mean continuous?" in problem.message


def test_the_job_file_schema_lists_the_registered_engines() -> None:
    server = job_file_schema()["properties"]["deploy"]["properties"]["server"]
    assert server["properties"]["engine"]["enum"] == list(ENGINES)


@pytest.mark.parametrize("name", sorted(registry.ENGINES))
def test_every_registered_engine_has_a_start_function(name: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    start = importlib.import_module(registry.ENGINES[name]).start
    assert list(inspect.signature(start).parameters) == ["name", "model", "options"]
