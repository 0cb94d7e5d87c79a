"""azureml-examples' fine-tune notebooks, their own cells run against FakeAzureML, offline.

The notebooks are read from a local snapshot of the public ``Azure/azureml-examples`` repository, never
vendored: set ``FTKIT_AZUREML_EXAMPLES`` to a clone (a work tree or its git directory; ``HEAD`` is read). Without
it the test skips, as in CI. Only what docs/testing.md allows is replaced: the credential
(``DefaultAzureCredential()``), the workspace ids (the ``<SUBSCRIPTION_ID>`` placeholders), the transport (added
to the ``MLClient(...)`` calls), the dataset download (``download-dataset.py`` becomes a stand-in writing small
splits with the dataset's columns), and the registry's contents, seeded through the fake's own options (the
foundation model with the tags the notebook reads, and a ``<task>_pipeline`` component whose inputs are the ones
the notebook passes). Cells that cannot run outside a notebook are listed with the reason and skipped.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftkit.testing import DEFAULT_VM_SIZES, FakeAzureML, RegistryModel

SNAPSHOT = os.environ.get("FTKIT_AZUREML_EXAMPLES", "")
PANDAS_3 = False
try:
    import pandas

    PANDAS_3 = int(pandas.__version__.split(".", 1)[0]) >= 3
except ImportError:  # the test skips without pandas
    pass
FINETUNE = "sdk/python/foundation-models/system/finetune"
MAAS = "sdk/python/jobs/finetuning/standalone/model-as-a-service"
MAAP = "sdk/python/jobs/finetuning/standalone/model-as-a-platform"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SNAPSHOT or not Path(SNAPSHOT).exists(),
        reason="set FTKIT_AZUREML_EXAMPLES to a local clone of Azure/azureml-examples",
    ),
]

T4 = {"name": "STANDARD_NC4AS_T4_V3", "family": "standardNCASv3_T4Family", "vCPUs": 4, "gpus": 1, "memoryGB": 28.0}

# Cells of these notebooks that cannot run outside Jupyter (skipped, as docs/testing.md says).
NOT_PYTHON = {
    "%pip install": "installs packages (IPython magic)",
    "%run ": "runs another notebook (IPython magic): pipeline_validations/common.ipynb, an optional check",
}


def sleep_free(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Polling loops in the notebooks (``time.sleep(30)``, jobs.stream's 2 s) do not wait; sleeps are recorded."""
    import time

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def read(path: str) -> str:
    """A file of the snapshot (a work tree, or a git directory read at HEAD)."""
    root = Path(SNAPSHOT)
    if (root / path).is_file():
        return (root / path).read_text(encoding="utf-8")
    git_dir = root / ".git" if (root / ".git").exists() else root
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], check=True, capture_output=True, text=True
    ).stdout


def code_cells(notebook: str) -> list[str]:
    cells = json.loads(read(notebook))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


# ---------------------------------------------------------------- the samples' datasets, small


def _download_stand_in(rows: Mapping[str, list[dict[str, Any]]], extra: Mapping[str, Any] | None = None) -> str:
    """A download-dataset.py that writes these splits (and extra JSON files) into --download_dir."""
    return f"""
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--download_dir"); p.add_argument("--dataset"); p.add_argument("--dataset_subset")
p.add_argument("--dataset_split_pc")
out = pathlib.Path(p.parse_known_args()[0].download_dir); out.mkdir(exist_ok=True)
for split, rows in {dict(rows)!r}.items():
    (out / (split + ".jsonl")).write_text("".join(json.dumps(r) + "\\n" for r in rows))
for name, value in {dict(extra or {})!r}.items():
    (out / name).write_text(json.dumps(value))
"""


EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def emotion_dataset() -> str:
    rows = [{"text": f"i feel {EMOTIONS[i % 6]} today, number {i}", "label": i % 6} for i in range(60)]
    labels = {"id2label": dict(enumerate(EMOTIONS)), "label2id": {e: i for i, e in enumerate(EMOTIONS)}}
    return _download_stand_in(dict.fromkeys(("train", "validation", "test"), rows), {"label.json": labels})


def squad_dataset() -> str:
    rows = [
        {
            "id": str(i),
            "title": "Bread",
            "context": f"Bread number {i} rises for about an hour.",
            "question": f"How long does bread {i} rise?",
            "answers": {"text": ["about an hour"], "answer_start": [len(f"Bread number {i} rises for ")]},
        }
        for i in range(40)
    ]
    return _download_stand_in({"train": rows, "validation": rows})


def news_dataset() -> str:
    rows = [
        {"id": str(i), "article": f"Article {i}: the town opened a bakery. " * 3, "highlights": f"Bakery {i}."}
        for i in range(40)
    ]
    return _download_stand_in({"train": rows, "validation": rows})


def wmt16_dataset() -> str:
    rows = [{"en": f"The bread number {i} is warm.", "ro": f"Painea numarul {i} este calda."} for i in range(40)]
    return _download_stand_in(dict.fromkeys(("train", "validation", "test"), rows))


def samsum_dataset() -> str:
    rows = [
        {"id": str(i), "dialogue": f"Ann: Bread {i}?\nBob: In an hour.", "summary": f"Bread {i} in an hour."}
        for i in range(20)
    ]
    return _download_stand_in(dict.fromkeys(("train", "validation", "test"), rows))


def truthful_qa_dataset() -> str:
    rows = [
        {
            "type": "Adversarial",
            "category": "Misconceptions",
            "question": f"Does bread {i} rise?",
            "best_answer": "Yes, for about an hour.",
            "correct_answers": ["Yes"],
            "incorrect_answers": ["No"],
            "source": "https://example.org",
        }
        for i in range(40)
    ]
    return _download_stand_in({"validation": rows})


def ultrachat_dataset() -> str:
    conversation = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water, salt and yeast."},
    ]
    rows = [{"prompt": f"q{i}", "prompt_id": str(i), "messages": conversation} for i in range(5)]
    return _download_stand_in(dict.fromkeys(("train_sft", "test_sft", "train_gen", "test_gen"), rows))


def conll_dataset() -> str:
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    rows = [
        {
            "id": str(i),
            "tokens": ["Ann", "lives", "in", f"Town{i}"],
            "pos_tags": [22, 42, 15, 22],
            "chunk_tags": [11, 21, 13, 11],
            "ner_tags": [1, 0, 0, 3],
            "ner_tags_str": [tags[1], tags[0], tags[0], tags[3]],
        }
        for i in range(200)
    ]
    return _download_stand_in(dict.fromkeys(("train", "validation", "test"), rows), {"label.json": {"id2label": tags}})


@attrs.frozen
class Sample:
    """One notebook: where it is, what its registry must hold, its dataset stand-in."""

    notebook: str
    model: RegistryModel
    pipeline: str | None  # None: a serverless (create_finetuning_job) sample
    dataset: Callable[[], str] | None
    files: tuple[str, ...] = ()  # files beside the notebook it reads (evaluation configs)
    absent: tuple[str, ...] = ()  # files it reads that the repository lacks (broken on its own; "{}" written)
    evaluates: bool = True  # whether its pipeline call asks for an evaluation (finds an evaluation run)
    reviews_metrics: bool = True  # whether it reads the runs' metrics with mlflow
    seed_component: bool = True  # False: the fake's own chat_completion_pipeline serves
    broken: Mapping[int, tuple[type[BaseException], str]] = attrs.field(factory=dict)  # cell: (error, why)
    expect: tuple[str, ...] = ()  # names the notebook must have defined
    deletes_endpoint: bool = True  # whether its last cells delete the online endpoint


SAMPLES = {
    "emotion-detection": Sample(
        notebook=f"{FINETUNE}/text-classification/emotion-detection.ipynb",
        model=RegistryModel(name="bert-base-uncased", version="4", tags={"task": "text-classification"}),
        pipeline="text_classification_pipeline",
        dataset=emotion_dataset,
        files=(f"{FINETUNE}/text-classification/text-classification-config.json",),
    ),
    **{
        name: Sample(
            notebook=f"{FINETUNE}/Llama-notebooks/{folder}/{name}.ipynb",
            model=RegistryModel(name="Llama-2-7b", version="20", tags={}, registry="azureml-meta"),
            pipeline="text_classification_pipeline",
            dataset=emotion_dataset,
            files=(f"{FINETUNE}/Llama-notebooks/{folder}/text-classification-config.json",),
            # The multinode serverless notebook misspells instance_type_model_evalutation: no evaluation runs.
            evaluates=not name.endswith("multinode-serverless"),
        )
        for folder, name in (
            ("text-classification", "emotion-detection-llama"),
            ("text-classification", "emotion-detection-llama-serverless-compute"),
            ("multinode-text-classification", "emotion-detection-llama-multinode"),
            ("multinode-text-classification", "emotion-detection-llama-multinode-serverless"),
        )
    },
    "chat-completion": Sample(
        notebook=f"{FINETUNE}/chat-completion/chat-completion.ipynb",
        model=RegistryModel(),  # Phi-3-mini-4k-instruct with its allow-list tags
        pipeline="chat_completion_pipeline",
        dataset=ultrachat_dataset,
        reviews_metrics=False,
        seed_component=False,
    ),
    "chat_completion_with_model_as_service": Sample(
        notebook=f"{MAAS}/chat-completion/chat_completion_with_model_as_service.ipynb",
        model=RegistryModel(
            name="Phi-4-mini-instruct", version="3", tags={"maas-finetuning-deploy-regions": "['eastus']"}
        ),
        pipeline=None,
        dataset=None,
        files=(f"{MAAS}/chat-completion/train.jsonl", f"{MAAS}/chat-completion/validation.jsonl"),
        reviews_metrics=False,
        expect=("created_endpoint", "auth_key", "response"),
    ),
    "text_generation_with_model_as_a_service": Sample(
        notebook=f"{MAAS}/text-generation/text_generation_with_model_as_a_service.ipynb",
        model=RegistryModel(
            name="Meta-Llama-3-8B",
            version="6",
            tags={"maas-finetuning-deploy-regions": "['eastus']"},
            properties={"finetune-recommended-sku": "Standard_NC96ads_A100_v4"},
            registry="azureml-meta",
        ),
        pipeline=None,
        dataset=None,
        files=(f"{MAAS}/text-generation/train.jsonl", f"{MAAS}/text-generation/validation.jsonl"),
        reviews_metrics=False,
        expect=("created_endpoint", "auth_key"),
        broken={18: (SyntaxError, 'the payload dict misses a ":" after "text"')},
    ),
    "chat_completion_with_model_as_platform": Sample(
        notebook=f"{MAAP}/chat-completion/chat_completion_with_model_as_platform.ipynb",
        model=RegistryModel(
            properties={
                "finetune-recommended-sku": "Standard_NC24ads_A100_v4",
                "inference-recommended-sku": "Standard_NC24ads_A100_v4",
            }
        ),
        pipeline=None,
        dataset=None,
        files=(f"{MAAP}/chat-completion/train.jsonl", f"{MAAP}/chat-completion/validation.jsonl"),
        reviews_metrics=False,
        broken={
            12: (SyntaxError, "'break' outside a loop"),
            17: (NameError, "foundation_model is never defined (the notebook calls it model_to_finetune)"),
            19: (NameError, "auth_key is never defined (no cell reads the endpoint's keys)"),
        },
        deletes_endpoint=False,
    ),
    "text_generation_with_model_as_a_platform": Sample(
        notebook=f"{MAAP}/text-generation/text_generation_with_model_as_a_platform.ipynb",
        model=RegistryModel(
            name="Meta-Llama-3-8B",
            version="6",
            tags={},
            properties={
                "finetune-recommended-sku": "Standard_NC96ads_A100_v4",
                "inference-recommended-sku": "Standard_NC24ads_A100_v4",
            },
            registry="azureml-meta",
        ),
        pipeline=None,
        dataset=None,
        files=(f"{MAAP}/text-generation/train.jsonl", f"{MAAP}/text-generation/validation.jsonl"),
        reviews_metrics=False,
        broken={
            11: (SyntaxError, "'break' outside a loop"),
            18: (NameError, "auth_key is never defined (no cell reads the endpoint's keys)"),
        },
        deletes_endpoint=False,
    ),
    "extractive-qa": Sample(
        notebook=f"{FINETUNE}/question-answering/extractive-qa.ipynb",
        model=RegistryModel(name="bert-base-uncased", version="4", tags={"task": "question-answering"}),
        pipeline="question_answering_pipeline",
        dataset=squad_dataset,
        files=(f"{FINETUNE}/question-answering/question-answering-config.json",),
    ),
    "news-summary": Sample(
        notebook=f"{FINETUNE}/summarization/news-summary.ipynb",
        model=RegistryModel(name="t5-small", version="4", tags={"task": "summarization"}),
        pipeline="summarization_pipeline",
        dataset=news_dataset,
        files=(f"{FINETUNE}/summarization/summarization-config.json",),
    ),
    "translation": Sample(
        notebook=f"{FINETUNE}/translation/translation.ipynb",
        model=RegistryModel(name="t5-small", version="4", tags={"task": "translation"}),
        pipeline="translation_pipeline",
        dataset=wmt16_dataset,
        files=(f"{FINETUNE}/translation/translation-config.json",),
    ),
    "summarization_with_text_gen": Sample(
        notebook=f"{FINETUNE}/text-generation/summarization_with_text_gen.ipynb",
        model=RegistryModel(name="microsoft-phi-2", version="9", tags={}, registry="azureml-msr"),
        pipeline="text_generation_pipeline",
        dataset=samsum_dataset,
        absent=("text-generation-config.json",),
    ),
    "abstractive_qna_with_text_gen": Sample(
        notebook=f"{FINETUNE}/text-generation/abstractive_qna_with_text_gen.ipynb",
        model=RegistryModel(name="microsoft-phi-2", version="9", tags={}, registry="azureml-msr"),
        pipeline="text_generation_pipeline",
        dataset=truthful_qa_dataset,
        absent=("text-generation-config.json",),
    ),
    "token-classification": Sample(
        notebook=f"{FINETUNE}/token-classification/token-classification.ipynb",
        model=RegistryModel(name="bert-base-uncased", version="4", tags={"task": "token-classification"}),
        pipeline="token_classification_pipeline",
        dataset=conll_dataset,
        files=(f"{FINETUNE}/token-classification/token-classification-config.json",),
    ),
}


# ---------------------------------------------------------------- seeding the registry from the notebook


def pipeline_spec(pipeline: str, cell: str, ns: Mapping[str, Any], tmp_path: Path) -> Path:
    """A ``<task>_pipeline`` spec whose inputs are exactly those the notebook's pipeline cell passes."""
    tree = ast.parse(cell)
    call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "pipeline_component_func"
    )
    inputs: dict[str, dict[str, Any]] = {}
    for kw in call.keywords:
        if kw.arg is None:  # **training_parameters: the dict an earlier cell built
            names: list[tuple[str, Any]] = list(eval(ast.unparse(kw.value), dict(ns)).items())
        elif isinstance(kw.value, ast.Call):  # Input(type="uri_file", ...)
            names = [(kw.arg, "uri_file")]
        else:
            names = [(kw.arg, eval(ast.unparse(kw.value), dict(ns)))]
        for name, value in names:
            kind = {bool: "boolean", int: "integer", float: "number"}.get(type(value), "string")
            if value == "uri_file":
                kind = "uri_file"
            elif name == "mlflow_model_path":
                kind = "mlflow_model"
            inputs[name] = {"type": kind, "optional": True}
    spec = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineComponent.schema.json",
        "type": "pipeline",
        "name": pipeline,
        "version": "0.0.9",
        "inputs": inputs,
        "outputs": {"mlflow_model_folder": {"type": "mlflow_model"}, "pytorch_model_folder": {"type": "uri_folder"}},
        "jobs": {
            "finetune": {
                "type": "command",
                "outputs": {
                    "mlflow_model_folder": "${{parent.outputs.mlflow_model_folder}}",
                    "pytorch_model_folder": "${{parent.outputs.pytorch_model_folder}}",
                },
                "component": f"azureml://registries/azureml/components/{pipeline.removesuffix('_pipeline')}_finetune/versions/0.0.9",
            }
        },
    }
    if "compute_finetune" in inputs:
        spec["jobs"]["finetune"]["compute"] = "${{parent.inputs.compute_finetune}}"
    else:  # serverless compute: the notebook passes instance_type_* inputs instead
        spec["jobs"]["finetune"]["compute"] = "serverless"
    path = tmp_path / f"{pipeline}.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
    return path


def setup_swaps(cell: str, fake: FakeAzureML) -> str:
    """The only edits to a setup cell: credential, workspace ids (whatever the placeholder says), transport."""
    assert "DefaultAzureCredential()" in cell
    cell = cell.replace("DefaultAzureCredential()", "fake.credential")
    swaps = {
        r'subscription_id="<[^">]+>"': f"subscription_id={fake.subscription_id!r}",
        r'resource_group_name="<[^">]+>"': f"resource_group_name={fake.resource_group!r}",
        r'workspace_name="<[^">]+>",?': f"workspace_name={fake.workspace_name!r}, transport=fake.transport,",
        r"MLClient\(credential, registry_name=(\"[^\"]+\")\)": r"MLClient(credential, registry_name=\1, transport=fake.transport)",
    }
    for old, new in swaps.items():
        cell = re.sub(old, new, cell)
    assert "<" not in "".join(re.findall(r'"<[^"]*>"', cell)), f"a placeholder is left in {cell!r}"
    return cell


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_the_sample_runs_against_the_fake(
    sample: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("mlflow", reason="the notebooks' metrics cells need mlflow (the local extra)")
    pytest.importorskip("pandas", reason="the notebooks read their data with pandas")
    import mlflow.tracking._tracking_service.utils as tracking_utils

    spec = SAMPLES[sample]
    cells = code_cells(spec.notebook)
    monkeypatch.chdir(tmp_path)
    sleep_free(monkeypatch)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if spec.dataset is not None:
        (tmp_path / "download-dataset.py").write_text(spec.dataset(), encoding="utf-8")
    for extra in spec.files:
        (tmp_path / Path(extra).name).write_text(read(extra), encoding="utf-8")
    for name in spec.absent:
        with pytest.raises(subprocess.CalledProcessError):  # not in the repository: broken on its own
            read(str(Path(spec.notebook).parent / name))
        (tmp_path / name).write_text("{}", encoding="utf-8")
    fake = FakeAzureML(models=[spec.model], vm_sizes=[*DEFAULT_VM_SIZES, T4], job_statuses=("Running", "Completed"))
    ns: dict[str, Any] = {"fake": fake, "__name__": "__notebook__"}
    skipped: list[str] = []
    broken: list[str] = []
    with fake.serve():
        for index, cell in enumerate(cells):
            reason = next((why for magic, why in NOT_PYTHON.items() if magic in cell), None)
            if reason is not None:
                skipped.append(f"cell {index}: {reason}")
                continue
            if "DefaultAzureCredential()" in cell:
                cell = setup_swaps(cell, fake)
            if "pipeline_component_func(" in cell and spec.seed_component and spec.pipeline is not None:
                fake.add_registry_component(pipeline_spec(spec.pipeline, cell, ns, tmp_path))
            if index in spec.broken:
                error, why = spec.broken[index]
                with pytest.raises(error):
                    exec(compile(cell, f"<{sample} cell {index}>", "exec"), ns)
                broken.append(f"cell {index}: {why}")
                continue
            run = compile(cell, f"<{sample} cell {index}>", "exec")
            if "pd.read_json(response)" in cell and PANDAS_3:
                # Broken on its own with pandas >= 3: read_json no longer parses a literal JSON string (it is
                # taken as a path). Asserted broken, then run with the repair pandas asks for (StringIO).
                with pytest.raises(OSError):  # FileNotFoundError, or "File name too long"
                    exec(run, ns)
                broken.append(f"cell {index}: pd.read_json(<literal JSON>) is a path in pandas >= 3")
                cell = "import io\n" + cell.replace("pd.read_json(response)", "pd.read_json(io.StringIO(response))")
                run = compile(cell, f"<{sample} cell {index}, repaired>", "exec")
            exec(run, ns)  # the notebook's own code is what is under test
    out = capsys.readouterr().out
    if spec.reviews_metrics:
        assert ns["training_run"] is not None
        assert (ns["evaluation_run"] is not None) == spec.evaluates
        assert "Training metrics" in out
        assert ("Evaluation metrics" in out) == spec.evaluates
    if "response_df" in ns:
        assert len(ns["response_df"]) == len(ns["test_df"])
    elif spec.pipeline is not None:  # a chat model's answer, printed
        assert "You asked:" in out
    for name in spec.expect:
        assert name in ns, f"the notebook did not define {name}"
    if hasattr(ns.get("response"), "status_code"):  # a requests.post to a serverless endpoint
        assert ns["response"].status_code == 200, ns["response"].text
    if "marketplace_subscription" in ns:
        assert ns["marketplace_subscription"].status == "subscribed"
    assert no_network == []
    assert len(skipped) <= 2
    assert len(broken) <= 1 + len(spec.absent) + len(spec.broken)
    if spec.deletes_endpoint:
        assert not [k for k in fake.resources if "/onlineendpoints/" in k]  # the last cell deleted the endpoint
