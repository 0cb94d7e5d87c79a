"""The typed, versioned records a local endpoint's server reads (no server started here)."""

from __future__ import annotations

import json

import pytest

from ftkit.deployment_settings import DeploymentSettings, ServerSettings
from ftkit.exceptions import ValidationError
from ftkit.serve.records import DeploymentRecord, read_server_settings


def test_deployment_record_round_trips_with_its_settings() -> None:
    """to_json/from_json keep every field; the reload key changes with the queue and batch size only."""
    record = DeploymentRecord(
        model_id="models:/m/1",
        model_name="m",
        model_version="1",
        model_path="/models/m",
        settings=DeploymentSettings(max_queue=3, max_batch_size=2, request_timeout_ms=1500),
    )
    again = DeploymentRecord.from_json(record.to_json())
    assert again == record
    assert again.timeout_s == 1.5
    assert json.loads(record.to_json())["version"] == DeploymentRecord.VERSION
    slower = DeploymentRecord.from_dict({**record.to_dict(), "settings": {"request_timeout_ms": 9}})
    assert slower.reload_key() != record.reload_key()  # max_queue/max_batch_size went back to defaults
    import attrs

    assert attrs.evolve(record, settings=attrs.evolve(record.settings, request_timeout_ms=9)).reload_key() == (
        record.reload_key()
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"version": 0}, "not a version 1 record"),
        ({"model_path": ""}, "deployment.model_path: is missing"),
        ({"settings": {"max_queue": -1}}, "settings.max_queue: -1 is below the minimum 1"),
        ({"settings": {"max_batch": 4}}, "settings.max_batch: unknown setting"),
    ],
)
def test_bad_deployment_records_are_refused_by_name(change: dict[str, object], words: str) -> None:
    """Another version, a missing field or a bad setting is a ValidationError naming it, never a guess."""
    good = DeploymentRecord(model_id="i", model_name="m", model_version="1", model_path="/p").to_dict()
    with pytest.raises(ValidationError) as info:
        DeploymentRecord.from_dict({**good, **change})
    assert words in info.value.render()


def test_server_settings_record() -> None:
    """An endpoint without settings gets the defaults; a written record is read back typed and checked."""
    assert read_server_settings({}) == ServerSettings()
    written = ServerSettings(max_batch_size=1, batch_window_ms=0).to_dict()
    assert read_server_settings({"settings": written}) == ServerSettings(max_batch_size=1, batch_window_ms=0)
    assert ServerSettings.from_json(ServerSettings().to_json()) == ServerSettings()
    with pytest.raises(ValidationError, match="version"):
        read_server_settings({"settings": {"max_batch_size": 1}})
    with pytest.raises(ValidationError, match="max_body_bytes"):
        read_server_settings({"settings": {**written, "max_body_bytes": 0}})
