"""The seed notebook's own Python cells, run unchanged against FakeAzureML, offline.

Only what docs/testing.md allows is replaced: the credential (``DefaultAzureCredential()`` becomes the fake's),
the workspace ids (the ``<SUBSCRIPTION_ID>`` placeholders), the transport (``transport=fake.transport`` added to
the two ``MLClient(...)`` calls), and the dataset download (``download-dataset.py`` is a stand-in writing tiny
splits). Everything else runs as written: local data inputs uploaded by azure-ai-ml itself, ``jobs.stream``,
registration, deployment, traffic, ``invoke`` and delete, plus the metrics review the notebook's outline
promises, written the usual way with plain mlflow. Cells broken on their own are asserted broken, as
docs/testing.md lists them. No socket may be opened to a non-loopback address.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ftkit.testing import FakeAzureML

from .notebook_cells import python_cells

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "FineTuning_MLSDK.pl.md"

pytestmark = pytest.mark.skipif(not SEED.is_file(), reason="../shared/seed is absent")

CONVERSATION = [
    {"content": "How do I bake bread?", "role": "user"},
    {"content": "Mix flour, water, salt and yeast.", "role": "assistant"},
    {"content": "How long should it rise?", "role": "user"},
    {"content": "About an hour, until doubled.", "role": "assistant"},
]

# The stand-in for the notebook's download-dataset.py: the four splits, three rows each, no hub.
DOWNLOAD_STAND_IN = f"""
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--dataset"); p.add_argument("--download_dir"); p.add_argument("--dataset_split_pc")
a = p.parse_args()
out = pathlib.Path(a.download_dir); out.mkdir(exist_ok=True)
rows = [{{"prompt": "q%d" % i, "prompt_id": str(i), "messages": {CONVERSATION!r}}} for i in range(3)]
for split in ("train_sft", "test_sft", "train_gen", "test_gen"):
    (out / (split + ".jsonl")).write_text("".join(json.dumps(r) + "\\n" for r in rows))
"""

# The metrics review the outline promises (no cell of the notebook has it), written the usual way.
METRICS_REVIEW = """
import mlflow
from mlflow.tracking import MlflowClient

workspace = workspace_ml_client.workspaces.get(workspace_ml_client.workspace_name)
mlflow.set_tracking_uri(workspace.mlflow_tracking_uri)
client = MlflowClient()
run = client.get_run(pipeline_job.name)
loss_history = client.get_metric_history(pipeline_job.name, "loss")
print("metrics:", run.data.metrics)
print("learning_rate param:", run.data.params.get("learning_rate"))
print("loss by step:", [(m.step, m.value) for m in loss_history])
"""

# The head of the compute cell as the original azureml-examples notebook has it (seed-notebook-steps.md,
# step 3): the cookbook's copy starts inside its `except` branch, so it cannot run on its own.
COMPUTE_HEAD = """
compute_cluster_size = "Standard_ND40rs_v2"  # 8 x V100
compute_cluster = "gpu-cluster-big"
try:
    compute = workspace_ml_client.compute.get(compute_cluster)
    print("The compute cluster already exists! Reusing it for the current run")
except Exception as ex:
    print(f"Looks like the compute cluster doesn't exist. Creating a new one with compute size {compute_cluster_size}!")
    try:
        print("Attempt #1 - Trying to create a dedicated compute")
        compute = AmlCompute(name=compute_cluster, size=compute_cluster_size, tier="Dedicated", max_instances=2)
        workspace_ml_client.compute.begin_create_or_update(compute).wait()
    except Exception as e:
        try:
            print("Attempt #2 - Trying to create a low priority compute.")
            compute = AmlCompute(name=compute_cluster, size=compute_cluster_size, tier="LowPriority", max_instances=2)
            workspace_ml_client.compute.begin_create_or_update(compute).wait()
        except Exception as e:
"""


def _replace_credential_ids_transport(cell: str, fake: FakeAzureML) -> str:
    """The only edits docs/testing.md allows: credential, workspace ids, transport."""
    swaps = {
        "DefaultAzureCredential()": "fake.credential",
        '"<SUBSCRIPTION_ID>"': repr(fake.subscription_id),
        '"<RESOURCE_GROUP>"': repr(fake.resource_group),
        'workspace_name="<WORKSPACE_NAME>",': f"workspace_name={fake.workspace_name!r}, transport=fake.transport,",
        'MLClient(credential, registry_name="azureml")': (
            'MLClient(credential, registry_name="azureml", transport=fake.transport)'
        ),
    }
    for old, new in swaps.items():
        assert old in cell, f"the notebook's setup cell no longer contains {old!r}"
        cell = cell.replace(old, new)
    return cell


def _repaired_compute_cell(cell: str) -> str:
    """The cookbook's compute cell under the original notebook's head: its first lines go back in their branch."""
    end = cell.index(")\n", cell.index("raise ValueError(")) + 2
    return COMPUTE_HEAD + textwrap.indent(cell[:end], " " * 12) + cell[end:]


@pytest.mark.slow  # about 20 s: importing pandas and mlflow, and one 2 s sleep inside jobs.stream
def test_the_notebook_runs_unchanged_against_the_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every cell that is not broken on its own passes; the broken ones fail as docs/testing.md says."""
    pytest.importorskip("mlflow", reason="the notebook's metrics review needs mlflow (the local extra)")
    cells = python_cells(SEED)
    assert len(cells) == 18, "the seed notebook changed: update this test and docs/testing.md"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    (tmp_path / "download-dataset.py").write_text(DOWNLOAD_STAND_IN, encoding="utf-8")
    fake = FakeAzureML()
    ns: dict[str, Any] = {"fake": fake, "__name__": "__notebook__"}

    def run(index: int, source: str | None = None) -> None:
        code = compile(source if source is not None else cells[index], f"<notebook cell {index}>", "exec")
        exec(code, ns)  # the notebook's own code is what is under test

    with fake.serve():
        run(0, _replace_credential_ids_transport(cells[0], fake))
        run(1)
        run(2)
        # Broken on its own: the cookbook's compute cell starts inside an `except` branch (`print(e)`).
        with pytest.raises(NameError, match="'e' is not defined"):
            run(3)
        run(3, _repaired_compute_cell(cells[3]))
        # Not code: the record schema, with // comments.
        with pytest.raises(SyntaxError):
            run(4)
        for index in range(5, 11):
            run(index)
        run(10, METRICS_REVIEW)
        for index in range(11, 18):
            run(index)

    out = capsys.readouterr().out
    job = ns["pipeline_job"].name
    # The data: azure-ai-ml uploaded both local files itself, into the fake's default datastore.
    uploaded = {uri.rsplit("/", 1)[-1] for uri in fake.blobs}
    assert {"train_sft.jsonl", "test_sft.jsonl"} <= uploaded
    (put,) = fake.calls("PUT", rf"/jobs/{job}$")
    inputs = put.body["properties"]["jobs"]["chat_completion_pipeline"]["inputs"]
    assert inputs["train_file_path"]["uri"].startswith("azureml://datastores/workspaceblobstore/paths/LocalUpload/")
    # jobs.stream printed the run, its steps' log lines and the summary, and returned when the job completed.
    assert f"RunId: {job}" in out
    assert "Execution Summary" in out
    assert "chat_completion_finetune" in out
    # The metrics review read the run, its params and the loss history through mlflow.
    assert "loss by step: [(10," in out
    assert ns["run"].data.params["learning_rate"] == "5e-06"
    assert ns["registered_model"].version == ns["timestamp"]
    assert "raw response:" in out
    assert "You asked: How long should it rise?" in out
    assert fake.endpoint(ns["online_endpoint_name"]) is None
    assert no_network == []
