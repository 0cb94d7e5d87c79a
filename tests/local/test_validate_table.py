"""``ftkit validate`` names every bad job value with its line, before anything runs (issue 10's table).

Each case changes one value of a valid local job; the combined case puts every independent one into one file
and checks they are all reported in a single run of the real command, exit 1, without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftkit.cli import main

from .conftest import ChatFiles

BASE = """\
name: table
backend: local
model: {{name: tiny, path: {model}}}
data:
  train_file: {train}
  test_file: {test}
  percent: 5
finetune:
  learning_rate: 2.0e-4
  max_seq_length: 256
compute:
  max_instances: 2
deploy:
  instance_count: 1
local:
  device: cpu
"""


def _job(tmp_path: Path, model: Path, files: ChatFiles, changes: dict[str, str] | None = None) -> Path:
    text = BASE.format(model=model, train=files.train, test=files.test)
    for old, new in (changes or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# (id, text to replace -> replacement, key named, words in the message, text on the key's line)
ERRORS = [
    ("percent -5", {"percent: 5": "percent: -5"}, "data.percent", "must be above 0", "percent:"),
    ("percent 150", {"percent: 5": "percent: 150"}, "data.percent", "above the maximum 100", "percent:"),
    (
        "lr -1e-3",
        {"learning_rate: 2.0e-4": "learning_rate: -1e-3"},
        "finetune.learning_rate",
        "above 0",
        "learning_rate",
    ),
    (
        "lr text",
        {"learning_rate: 2.0e-4": "learning_rate: fast"},
        "finetune.learning_rate",
        "expected a number",
        "learning_rate",
    ),
    (
        "instance_count 0",
        {"instance_count: 1": "instance_count: 0"},
        "deploy.instance_count",
        "minimum 1",
        "instance_count",
    ),
    (
        "max_instances 0",
        {"max_instances: 2": "max_instances: 0"},
        "compute.max_instances",
        "minimum 1",
        "max_instances",
    ),
    (
        "max_seq_length 8",
        {"max_seq_length: 256": "max_seq_length: 8"},
        "finetune.max_seq_length",
        "no assistant token",
        "max_seq_length",
    ),
    (
        "lora nonexistent",
        {"device: cpu": "device: cpu\n  lora_target_modules: nonexistent"},
        "local.lora_target_modules",
        "'nonexistent' is not a module",
        "lora_target_modules",
    ),
]


@pytest.mark.parametrize(("changes", "key", "words", "on_line"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_value_is_named_with_its_line(
    tmp_path: Path,
    tiny_model_dir: Path,
    chat_files: ChatFiles,
    changes: dict[str, str],
    key: str,
    words: str,
    on_line: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 1 and one line ``file:line: key: reason`` for the bad value."""
    job = _job(tmp_path, tiny_model_dir, chat_files, changes)
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert f"{job}:{_line_of(job, on_line)}: {key}: " in err, err
    assert words in err, err


def test_model_and_file_problems(
    tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing model directory, one without a tokenizer, and a missing train file are named with their lines."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_model_dir / name).read_bytes())
    cases = [
        (str(tiny_model_dir), str(tmp_path / "nowhere"), "model.path", "is not a directory", "model:"),
        (str(tiny_model_dir), str(bare), "model.path", "has no tokenizer", "model:"),
        (str(chat_files.train), str(tmp_path / "missing.jsonl"), "data.train_file", "does not exist", "train_file"),
    ]
    for old, new, key, words, on_line in cases:
        job = _job(tmp_path, tiny_model_dir, chat_files)
        job.write_text(job.read_text().replace(old, new, 1), encoding="utf-8")
        assert main(["validate", str(job)]) == 1
        err = capsys.readouterr().err
        assert f"{job}:{_line_of(job, on_line)}: {key}: " in err, err
        assert words in err, err


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("learning_rate: 5e-6", "learning_rate", "5e-06"),
        ("learning_rate: 1e-4", "learning_rate", "0.0001"),
        ("learning_rate: 2E-5", "learning_rate", "2e-05"),
        # No minimum on this input: a negative exponent form is a number like any other.
        ("early_stopping_threshold: -1e-3", "early_stopping_threshold", "-0.001"),
    ],
)
def test_exponent_forms_are_numbers(
    tmp_path: Path,
    tiny_model_dir: Path,
    chat_files: ChatFiles,
    line: str,
    name: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``5e-6`` is a string to YAML 1.1; ftkit reads it as the number it is (and shows it as one)."""
    job = _job(tmp_path, tiny_model_dir, chat_files, {"learning_rate: 2.0e-4": line})
    assert main(["validate", str(job)]) == 0, capsys.readouterr().err
    assert f"    {name} = {value}\n" in capsys.readouterr().out


def test_every_problem_in_one_run_of_the_command(tmp_path: Path, tiny_model_dir: Path, chat_files: ChatFiles) -> None:
    """All the independent bad values in one file: the real command lists each with its line, exit 1, no traceback."""
    changes = {
        str(chat_files.train): str(tmp_path / "missing.jsonl"),
        "percent: 5": "percent: -5",
        "learning_rate: 2.0e-4": "learning_rate: -1e-3",
        "max_seq_length: 256": "max_seq_length: 8",
        "max_instances: 2": "max_instances: 0",
        "instance_count: 1": "instance_count: 0",
        "device: cpu": "device: cpu\n  lora_target_modules: nonexistent",
    }
    job = _job(tmp_path, tiny_model_dir, chat_files, changes)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "ftkit", "validate", str(job)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    expected = {
        "data.percent": "percent:",
        "data.train_file": "train_file",
        "finetune.learning_rate": "learning_rate",
        "finetune.max_seq_length": "max_seq_length",
        "compute.max_instances": "max_instances",
        "deploy.instance_count": "instance_count",
        "local.lora_target_modules": "lora_target_modules",
    }
    for key, on_line in expected.items():
        assert f"{job}:{_line_of(job, on_line)}: {key}: " in done.stderr, (key, done.stderr)


def test_fast_prompt_lengths_match_transformers(tiny_model_dir: Path, chat_files: ChatFiles) -> None:
    """The check renders the chat template with jinja2 and ``tokenizers`` (validate stays fast); it counts the
    same tokens as transformers' own ``apply_chat_template``."""
    import json

    from ftkit.job_checks import _fast_prompt_lengths, _prompt_of, _transformers_prompt_lengths

    lines = chat_files.train.read_text(encoding="utf-8").splitlines()[:20]
    prompts = [p for p in (_prompt_of(line) for line in lines) if p is not None]
    prompts.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": json.dumps("x")}])
    fast = _fast_prompt_lengths(tiny_model_dir, prompts)
    assert fast is not None
    assert fast == _transformers_prompt_lengths(tiny_model_dir, prompts)
