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
    "! pip install": "installs packages (shell escape)",
    "%matplotlib inline": "plots the answer (IPython magic; seaborn, IPython display)",
    "from IPython.display import": "displays an image (IPython)",
    "!python coco2jsonl.py": "a shell escape writing the COCO copy of the annotations as JSONL, which no later cell reads",
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


FRIDGE_CLASSES = ("can", "carton", "milk_bottle", "water_bottle")


def fridge_objects_zip(path: str) -> None:
    """The stand-in for the fridgeObjects.zip download: four classes of small JPEGs, 99.jpg among them."""
    import io
    import zipfile

    from PIL import Image

    def jpeg(seed: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (40 * (seed % 6), 20 * seed % 255, 90)).save(buffer, format="JPEG")
        return buffer.getvalue()

    dataset = Path(path).stem
    with zipfile.ZipFile(path, "w") as archive:
        if dataset == "odFridgeObjects":  # images/<n>.jpg and Pascal VOC annotations/<n>.xml
            for i in (*range(1, 13), 31, 99):
                archive.writestr(f"{dataset}/images/{i}.jpg", jpeg(i))
                label = FRIDGE_CLASSES[i % 4]
                archive.writestr(
                    f"{dataset}/annotations/{i}.xml",
                    f"<annotation><filename>{i}.jpg</filename><size><width>8</width><height>8</height>"
                    f"<depth>3</depth></size><object><name>{label}</name><difficult>0</difficult>"
                    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>6</xmax><ymax>7</ymax></bndbox></object></annotation>",
                )
            return
        if dataset == "multilabelFridgeObjects":  # images/<n>.jpg and labels.csv ("filename,labels")
            lines = ["filename,labels"]
            for i in range(50, 62):
                archive.writestr(f"{dataset}/images/{i}.jpg", jpeg(i))
                lines.append(f"{i}.jpg,{FRIDGE_CLASSES[i % 4]} {FRIDGE_CLASSES[(i + 1) % 4]}")
            archive.writestr(f"{dataset}/labels.csv", "\n".join(lines) + "\n")
            return
        for k, name in enumerate(FRIDGE_CLASSES):  # <class>/<n>.jpg
            for i in (1, 2, 99):
                archive.writestr(f"{dataset}/{name}/{i}.jpg", jpeg(10 * k + i))


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
    downloads: bool = False  # it downloads its data with urllib (the stand-in writes a local zip instead)
    prints_metrics: bool = True  # it prints "Training metrics" / "Evaluation metrics"


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
    "hftransformers-fridgeobjects-multiclass-classification": Sample(
        notebook=f"{FINETUNE}/image-classification/multiclass-classification/"
        "hftransformers-fridgeobjects-multiclass-classification.ipynb",
        model=RegistryModel(name="microsoft-beit-base-patch16-224-pt22k-ft22k", version="12", tags={}),
        pipeline="transformers_image_classification_pipeline",
        dataset=None,
        downloads=True,
        prints_metrics=False,  # it shows pd.DataFrame(training_run.data.metrics)
        expect=("resp",),
    ),
    "hftransformers-fridgeobjects-multilabel-classification": Sample(
        notebook=f"{FINETUNE}/image-classification/multilabel-classification/"
        "hftransformers-fridgeobjects-multilabel-classification.ipynb",
        model=RegistryModel(name="microsoft-beit-base-patch16-224-pt22k-ft22k", version="12", tags={}),
        pipeline="transformers_image_classification_pipeline",
        dataset=None,
        downloads=True,
        prints_metrics=False,
        expect=("resp",),
    ),
    "mmdetection-fridgeobjects-object-detection": Sample(
        notebook=f"{FINETUNE}/image-object-detection/mmdetection-fridgeobjects-object-detection.ipynb",
        model=RegistryModel(name="mmd-3x-yolof_r50_c5_8x8_1x_coco", version="8", tags={}),
        pipeline="mmdetection_image_objectdetection_instancesegmentation_pipeline",
        dataset=None,
        downloads=True,
        prints_metrics=False,
        expect=("resp",),
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


def _kind(name: str, value: Any) -> str:
    if isinstance(value, str) and value.startswith("asset:"):  # an Input(type=...) argument
        return value.removeprefix("asset:")
    if name in ("mlflow_model_path", "mlflow_model"):
        return "mlflow_model"
    return {bool: "boolean", int: "integer", float: "number"}.get(type(value), "string")


def _input_type(call: ast.Call) -> str:
    """``Input(type="uri_file")`` or ``Input(type=AssetTypes.MLTABLE)``: the asset type."""
    for kw in call.keywords:
        if kw.arg == "type":
            if isinstance(kw.value, ast.Constant):
                return "asset:" + str(kw.value.value)
            if isinstance(kw.value, ast.Attribute):
                return "asset:" + kw.value.attr.lower()
    return "asset:uri_file"


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
            names = [(kw.arg, _input_type(kw.value))]
        else:
            names = [(kw.arg, eval(ast.unparse(kw.value), dict(ns)))]
        for name, value in names:
            inputs[name] = {"type": _kind(name, value), "optional": True}
    return write_spec(pipeline, inputs, tmp_path)


def static_pipeline_spec(pipeline: str, cells: list[str], function: str, tmp_path: Path) -> Path:
    """The same, read from the cells' code before they run (when the component is fetched cells before its call).

    Literal values give the input types; a ``**name`` argument is the dict literal assigned to ``name``.
    """
    trees = [ast.parse(c) for c in cells if not any(magic in c for magic in NOT_PYTHON)]
    literals: dict[str, Any] = {}
    dicts: dict[str, ast.Dict] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                target = node.targets[0].id
                if isinstance(node.value, ast.Dict):
                    dicts.setdefault(target, node.value)
                elif isinstance(node.value, ast.Constant):
                    literals.setdefault(target, node.value.value)
    call = next(
        node
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function
    )

    def value_of(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Call):
            return _input_type(node)
        if isinstance(node, ast.Name):
            return literals.get(node.id, "")
        return ""  # foundation_model.id...: a string

    inputs: dict[str, dict[str, Any]] = {}
    for kw in call.keywords:
        if kw.arg is None and isinstance(kw.value, ast.Name) and kw.value.id in dicts:
            literal = dicts[kw.value.id]
            pairs = [
                (k.value, value_of(v))
                for k, v in zip(literal.keys, literal.values, strict=True)
                if isinstance(k, ast.Constant)
            ]
        elif kw.arg is not None:
            pairs = [(kw.arg, value_of(kw.value))]
        else:
            pairs = []
        for name, value in pairs:
            inputs[str(name)] = {"type": _kind(str(name), value), "optional": True}
    return write_spec(pipeline, inputs, tmp_path)


def write_spec(pipeline: str, inputs: dict[str, dict[str, Any]], tmp_path: Path) -> Path:
    spec: dict[str, Any] = {
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


def with_transport(cell: str) -> str:
    """Add ``transport=fake.transport`` as the last argument of every ``MLClient(...)`` call."""
    out, start = [], 0
    for m in re.finditer(r"\bMLClient\(", cell):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(cell[i], 0)
            i += 1
        inner = cell[m.end() : i - 1].rstrip()
        out += [cell[start : m.end()], inner.rstrip(",") + ", transport=fake.transport"]
        start = i - 1
    return "".join(out) + cell[start:]


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
    if re.search(r'^\s*subscription_id = "', cell, re.M):  # the vision samples: ids in variables, no keywords
        for variable, value in (
            ("subscription_id", fake.subscription_id),
            ("resource_group", fake.resource_group),
            ("workspace_name", fake.workspace_name),
        ):
            cell = re.sub(rf'^(\s*){variable} = "[^"]*"$', rf"\g<1>{variable} = {value!r}", cell, flags=re.M)
        cell = with_transport(cell)
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
    pandas = pytest.importorskip("pandas", reason="the notebooks read their data with pandas")
    pandas_3 = int(pandas.__version__.split(".", 1)[0]) >= 3
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
            m = re.search(r"^(\w+) = registry_ml_client\.components\.get\(", cell, re.M)
            if m and m[1] != "pipeline_component_func" and spec.seed_component and spec.pipeline is not None:
                fake.add_registry_component(static_pipeline_spec(spec.pipeline, cells, m[1], tmp_path))
            if spec.downloads and "urllib.request.urlretrieve(" in cell:
                ns["fridge_objects_zip"] = fridge_objects_zip
                cell = re.sub(
                    r"urllib\.request\.urlretrieve\(download_url, filename=(\w+)\)", r"fridge_objects_zip(\1)", cell
                )
            if "pipeline_component_func(" in cell and spec.seed_component and spec.pipeline is not None:
                fake.add_registry_component(pipeline_spec(spec.pipeline, cell, ns, tmp_path))
            if index in spec.broken:
                error, why = spec.broken[index]
                with pytest.raises(error):
                    exec(compile(cell, f"<{sample} cell {index}>", "exec"), ns)
                broken.append(f"cell {index}: {why}")
                continue
            run = compile(cell, f"<{sample} cell {index}>", "exec")
            if "pd.read_json(response)" in cell and pandas_3:
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
        if spec.prints_metrics:
            assert "Training metrics" in out
            assert ("Evaluation metrics" in out) == spec.evaluates
    if "response_df" in ns:
        assert len(ns["response_df"]) == len(ns["test_df"])
    elif spec.pipeline == "chat_completion_pipeline":  # a chat model's answer, printed
        assert "You asked:" in out
    if "resp" in ns:  # the vision samples' answer, as their plotting cells read it
        first = json.loads(ns["resp"])[0]
        label = first["boxes"][0]["label"] if "boxes" in first else first["0"]["label"]
        assert label in FRIDGE_CLASSES
    for name in spec.expect:
        assert name in ns, f"the notebook did not define {name}"
    if hasattr(ns.get("response"), "status_code"):  # a requests.post to a serverless endpoint
        assert ns["response"].status_code == 200, ns["response"].text
    if "marketplace_subscription" in ns:
        assert ns["marketplace_subscription"].status == "subscribed"
    assert no_network == []
    assert len(skipped) <= 5  # pip installs, the validation notebook, display-only cells, a shell escape
    assert len(broken) <= 1 + len(spec.absent) + len(spec.broken)
    if spec.deletes_endpoint:
        assert not [k for k in fake.resources if "/onlineendpoints/" in k]  # the last cell deleted the endpoint
