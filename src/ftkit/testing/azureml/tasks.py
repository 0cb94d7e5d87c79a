"""Task knowledge the fake shares: a fine-tuning pipeline's task and child steps, the metrics it logs, scoring.

The foundation-model fine-tuning pipelines of the ``azureml`` registry are named ``<task>_pipeline``
(``text_classification_pipeline``, ``summarization_pipeline``...). Each runs validation, model import,
preprocessing, finetuning and model conversion; the NLP and vision ones then evaluate the model on the test
split. The finetune step logs Hugging Face Trainer's metrics to MLflow (``epoch``, ``loss``, ``eval_loss``,
``train_runtime``...: the ``logging_strategy``/``evaluation_strategy``/``metric_for_best_model`` inputs of
``finetune/chat_completion/spec.yaml`` in ../shared/fixtures/azureml-assets), and the evaluation step logs the
task's metrics under the names the azureml-examples notebooks read (``accuracy``, ``exact_match``, ``rouge1``,
``bleu_1``, ``iou``, ``mean_average_precision``, ``MOTA``).

A deployed model answers in its task's shape (an MLflow model behind Azure ML's inference server): a list with
one item per input row, labels for classification, ``{"0": text}`` records for text-to-text tasks, ``{"0":
{label, score}, ...}`` per image for image classification (one entry, or one per class for multi-label), boxes
for object detection. Chat models keep the ``{"output": str}``
answer that ftkit and its tests read.

Strictly private; use :class:`ftkit.testing.FakeAzureML`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "EVALUATION_METRICS",
    "PIPELINE_TASKS",
    "Responder",
    "ScoringError",
    "answer_for_task",
    "pipeline_steps",
    "trainer_metrics",
]

Responder = Callable[[Mapping[str, Any]], Any]
"""A user-supplied scoring answer: the request's JSON body in, the JSON answer out."""

# The registry pipeline components of azureml-examples' fine-tune notebooks and the task each fine-tunes.
PIPELINE_TASKS: Mapping[str, str] = {
    "chat_completion_pipeline": "chat-completion",
    "text_generation_pipeline": "text-generation",
    "text_classification_pipeline": "text-classification",
    "token_classification_pipeline": "token-classification",
    "question_answering_pipeline": "question-answering",
    "summarization_pipeline": "summarization",
    "translation_pipeline": "translation",
    "transformers_image_classification_pipeline": "image-classification",
    "mmdetection_image_objectdetection_instancesegmentation_pipeline": "image-object-detection",
    "mmtracking_video_multi_object_tracking_pipeline": "video-multi-object-tracking",
    "diffusers_text_to_image_dreambooth_pipeline": "text-to-image",
}

# What the evaluation step logs per task (the keys azureml-examples' notebooks test for come first).
EVALUATION_METRICS: Mapping[str, Mapping[str, float]] = {
    "text-classification": {
        "accuracy": 0.8125,
        "f1_score_macro": 0.7904,
        "f1_score_micro": 0.8125,
        "f1_score_weighted": 0.8087,
        "precision_score_macro": 0.8011,
        "recall_score_macro": 0.7836,
        "AUC_macro": 0.9412,
        "log_loss": 0.5531,
    },
    "token-classification": {
        "accuracy": 0.9712,
        "f1_score_macro": 0.8843,
        "precision_score_macro": 0.8791,
        "recall_score_macro": 0.8902,
    },
    "question-answering": {"exact_match": 0.7125, "f1_score": 0.8034},
    "summarization": {"rouge1": 0.4123, "rouge2": 0.1934, "rougeL": 0.3011, "rougeLsum": 0.3842},
    "text-generation": {"rouge1": 0.3876, "rouge2": 0.1611, "rougeL": 0.2954, "rougeLsum": 0.3512},
    "translation": {"bleu_1": 0.5512, "bleu_2": 0.3987, "bleu_3": 0.2961, "bleu_4": 0.2214},
    "image-classification": {
        "accuracy": 0.9167,
        "f1_score_macro": 0.9143,
        "precision_score_macro": 0.9201,
        "recall_score_macro": 0.9112,
    },
    "image-classification-multilabel": {"iou": 0.8714, "iou_macro": 0.8532, "iou_micro": 0.8714},
    "image-object-detection": {"mean_average_precision": 0.8237, "precision": 0.8812, "recall": 0.8533},
    "video-multi-object-tracking": {"MOTA": 0.6123, "MOTP": 0.2211, "IDF1": 0.7012},
}

CHAT_TASKS = frozenset({"chat-completion", "text-generation"})
TEXT_TO_TEXT = frozenset({"summarization", "translation", "question-answering", "text-generation", "fill-mask"})
IMAGE_TASKS = frozenset(
    {"image-classification", "image-classification-multilabel", "image-object-detection", "image-instance-segmentation"}
)
DEFAULT_LABELS = ("LABEL_0", "LABEL_1")


def pipeline_steps(pipeline: str, node_inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A registry fine-tuning pipeline's child steps and the pipeline input naming each one's compute.

    Args:
        pipeline: The pipeline component's name (``text_classification_pipeline``...).
        node_inputs: The pipeline node's inputs (an evaluation runs where the pipeline is given a compute
            for it, as the notebooks do with ``compute_model_evaluation``, or a serverless instance type,
            ``instance_type_model_evaluation``).

    Returns:
        ``(step name, compute input)`` pairs in the order the steps run.
    """
    prefix = pipeline.removesuffix("_pipeline")
    steps = [
        ("ft_nlp_common_validation", "compute_model_import"),
        (f"{prefix}_model_import", "compute_model_import"),
        (f"{prefix}_datapreprocess", "compute_preprocess"),
        (f"{prefix}_finetune", "compute_finetune"),
        ("ft_nlp_model_converter", "compute_finetune"),
    ]
    task = PIPELINE_TASKS.get(pipeline)
    evaluated = "compute_model_evaluation" in node_inputs or "instance_type_model_evaluation" in node_inputs
    if task in EVALUATION_METRICS and evaluated:
        # azureml's model_evaluation_pipeline: batch prediction on the test split, then compute_metrics.
        steps += [("model_prediction", "compute_model_evaluation"), ("compute_metrics", "compute_model_evaluation")]
    return steps


def evaluation_task(pipeline: str, node_inputs: Mapping[str, Any]) -> str | None:
    """The task whose metrics a pipeline's evaluation logs (multi-label image classification has its own)."""
    task = PIPELINE_TASKS.get(pipeline)
    if task == "image-classification":
        raw = node_inputs.get("task_name")
        value = raw.get("value") if isinstance(raw, Mapping) else raw
        if isinstance(value, str) and "multilabel" in value.lower():
            return "image-classification-multilabel"
    return task


def trainer_metrics(
    steps: int = 60, logging_steps: int = 10, epochs: int = 3, *, upto: int | None = None
) -> dict[str, list[tuple[int, float, int]]]:
    """Metric histories shaped like Hugging Face Trainer's MLflow callback logs for a finetune step.

    Args:
        steps: Total optimizer steps.
        logging_steps: Steps between training logs.
        epochs: Epochs (an evaluation at the end of each).
        upto: Only the points logged up to this step (a step still running); ``None``: the whole run with
            the end-of-training summary (``train_runtime``, ``train_loss``...).

    Returns:
        ``{metric: [(step, value, timestamp_ms), ...]}``.
    """
    last = steps if upto is None else upto
    t0 = 1_735_689_600_000
    out: dict[str, list[tuple[int, float, int]]] = {"loss": [], "grad_norm": [], "learning_rate": [], "epoch": []}
    for step in range(logging_steps, last + 1, logging_steps):
        ts = t0 + step * 1000
        out["loss"].append((step, round(2.0 * math.exp(-step / 40) + 0.6, 4), ts))
        out["grad_norm"].append((step, round(1.5 / math.sqrt(step), 4), ts))
        out["learning_rate"].append((step, 5e-6 * 0.5 * (1 + math.cos(math.pi * step / steps)), ts))
        out["epoch"].append((step, round(epochs * step / steps, 3), ts))
    per_epoch = steps // epochs
    evals = [per_epoch * e for e in range(1, epochs + 1) if per_epoch * e <= last]
    out["eval_loss"] = [(s, round(1.9 * math.exp(-s / 45) + 0.7, 4), t0 + s * 1000) for s in evals]
    out["eval_runtime"] = [(s, 12.5, t0 + s * 1000) for s in evals]
    out["eval_samples_per_second"] = [(s, 8.0, t0 + s * 1000) for s in evals]
    out["eval_steps_per_second"] = [(s, 1.0, t0 + s * 1000) for s in evals]
    if upto is None:
        end = t0 + steps * 1000
        for key, value in (
            ("train_runtime", 1200.0),
            ("train_samples_per_second", 0.4),
            ("train_steps_per_second", 0.05),
            ("train_loss", 1.05),
            ("total_flos", 1.2e15),
        ):
            out[key] = [(steps, value, end)]
    return {k: v for k, v in out.items() if v}


# ---------------------------------------------------------------- scoring


class ScoringError(Exception):
    """A scoring request the deployed model refuses: answered 400 with ``{"message": ...}``."""


def answer_for_task(task: str, deployment: str, body: Mapping[str, Any]) -> Any:
    """The deterministic answer of a model of ``task`` to a scoring request.

    Args:
        task: The model's task (``text-classification``...).
        deployment: The deployment answering (part of the answer, so tests see which one did).
        body: The request's JSON body.

    Returns:
        The JSON answer, one item per input row.

    Raises:
        ScoringError: The body does not hold the task's input.
    """
    rows = input_rows(body)
    if task in IMAGE_TASKS:
        images = [_image(row, i) for i, row in enumerate(rows)]
        if task == "image-classification":
            return [{"0": {"label": _pick(DEFAULT_IMAGE_LABELS, img), "score": 0.91}} for img in images]
        if task == "image-classification-multilabel":
            # One {label, score} per class, keyed "0", "1"...: the multilabel sample iterates prediction.items().
            scores = (0.93, 0.12, 0.71, 0.04)
            return [
                {
                    str(i): {"label": label, "score": score}
                    for i, (label, score) in enumerate(zip(DEFAULT_IMAGE_LABELS, scores, strict=True))
                }
                for _ in images
            ]
        return [{"boxes": [_box(img, i) for i in range(2)]} for img in images]
    texts = [_text(task, row, i) for i, row in enumerate(rows)]
    if task == "text-classification":
        return [_pick(DEFAULT_LABELS, text) for text in texts]
    if task == "token-classification":
        return [{"0": ["O" if j % 3 else "B-PER" for j, _ in enumerate(text.split())]} for text in texts]
    if task in TEXT_TO_TEXT:
        return [{"0": f"[{deployment}:{task}] {text[:60]}"} for text in texts]
    raise ScoringError(f"the fake has no answer for task '{task}'; pass a responder function to answer_with")


DEFAULT_IMAGE_LABELS = ("can", "carton", "milk_bottle", "water_bottle")

# The columns each task's model reads from a row (Azure's MLflow scoring takes the first string column for
# single-input tasks; question answering needs both of its columns).
TASK_COLUMNS: Mapping[str, Sequence[str]] = {"question-answering": ("question", "context")}


def input_rows(body: Mapping[str, Any]) -> list[Any]:
    """The rows of a scoring request, whatever the accepted layout.

    Layouts: ``{"input_data": {"columns": [...], "index": [...], "data": [[...]]}}`` (pandas split),
    ``{"input_data" | "inputs": {column: [values]}}``, ``{"input_data": [values or records]}``.

    Raises:
        ScoringError: No rows could be read.
    """
    if not isinstance(body, Mapping):
        raise ScoringError("the request body must be a JSON object with 'input_data'")
    data = body.get("input_data", body.get("inputs"))
    if data is None:
        raise ScoringError("the request has neither 'input_data' nor 'inputs'")
    if isinstance(data, list):
        rows = list(data)
    elif isinstance(data, Mapping) and "data" in data:
        columns = list(data.get("columns") or [])
        raw = data["data"]
        if not isinstance(raw, list):
            raise ScoringError("'input_data.data' must be a list of rows")
        rows = [
            dict(zip(columns, row, strict=False)) if isinstance(row, list) else {(columns or ["0"])[0]: row}
            for row in raw
        ]
    elif isinstance(data, Mapping) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise ScoringError(f"the input columns have different lengths: {sorted(lengths)}")
        n = lengths.pop()
        rows = [{k: v[i] for k, v in data.items()} for i in range(n)]
    else:
        raise ScoringError(
            "'input_data' must be a list, a {column: [values]} mapping or a pandas 'split' mapping "
            "with 'columns' and 'data'"
        )
    if not rows:
        raise ScoringError("the request holds no rows")
    return rows


def _text(task: str, row: Any, i: int) -> str:
    if isinstance(row, str):
        text = row
    elif isinstance(row, Mapping):
        needed = TASK_COLUMNS.get(task)
        if needed is not None:
            missing = [c for c in needed if c not in row]
            if missing:
                raise ScoringError(f"row {i}: a {task} model needs columns {list(needed)}; missing {missing}")
            return " | ".join(str(row[c]) for c in needed)
        values = [v for v in row.values() if isinstance(v, str | list)]
        if not values:
            raise ScoringError(f"row {i}: no text column in {sorted(row)}")
        value = values[0]
        text = " ".join(map(str, value)) if isinstance(value, list) else value
    elif isinstance(row, list) and task == "token-classification":
        text = " ".join(map(str, row))
    else:
        raise ScoringError(f"row {i}: expected text, got {type(row).__name__}")
    if task == "fill-mask" and "[MASK]" not in text and "<mask>" not in text:
        raise ScoringError(f"row {i}: a fill-mask input needs a [MASK] (or <mask>) token")
    return text


def _image(row: Any, i: int) -> bytes:
    value = row
    if isinstance(row, Mapping):
        value = row.get("image", next(iter(row.values()), None))
    if not isinstance(value, str) or not value:
        raise ScoringError(f"row {i}: an image input must be a base64 string (or an image URL)")
    if value.startswith(("http://", "https://")):
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ScoringError(f"row {i}: the image is not valid base64 ({exc})") from None


def _pick(choices: Sequence[str], item: str | bytes) -> str:
    raw = item.encode("utf-8") if isinstance(item, str) else item
    return choices[int(hashlib.sha256(raw).hexdigest(), 16) % len(choices)]


def _box(image: bytes, i: int) -> dict[str, Any]:
    return {
        "box": {"topX": 0.1 + 0.4 * i, "topY": 0.2, "bottomX": 0.4 + 0.4 * i, "bottomY": 0.7},
        "label": _pick(DEFAULT_IMAGE_LABELS, image + bytes([i])),
        "score": round(0.95 - 0.2 * i, 2),
    }


def chat_text(deployment: str, body: Mapping[str, Any]) -> str:
    """The deterministic chat answer (the ``output`` ftkit reads): echoes the last user turn."""
    data = body.get("input_data", {})
    conversation: Any = data.get("input_string", []) if isinstance(data, Mapping) else []
    while isinstance(conversation, list) and conversation and isinstance(conversation[0], list):
        conversation = conversation[-1]
    last = ""
    if isinstance(conversation, list):
        users = [m.get("content", "") for m in conversation if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else ""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return f"[{deployment}:{digest}] You asked: {last[:80]}"


def is_chat_request(body: Mapping[str, Any]) -> bool:
    """Whether a request carries a conversation (``input_data.input_string`` of messages)."""
    data = body.get("input_data")
    if not isinstance(data, Mapping) or "input_string" not in data:
        return False
    items = data["input_string"]
    while isinstance(items, list) and items and isinstance(items[0], list):
        items = items[-1]
    return isinstance(items, list) and all(isinstance(m, Mapping) for m in items)
