"""Did the fine-tune help? On a real model (SmolLM2-135M-Instruct), end to end, from subprocesses.

SmolLM2 is taught to answer in a pirate's voice. ``ftkit run`` with an ``evaluate:`` section must find the tuned
model better than its base on held-out questions (interval above zero, the gate passes), and ``ftkit eval`` on
the finished run must find it *no better* on a control task the data never touched (capitals): that gate fails,
exit 1, with the report written. The comparison can fail, not only pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftkit.backends.local.lessons import capital_conversations, pirate_conversations, write_jsonl

pytest.importorskip("mlflow")
pytest.importorskip("rouge_score")

JOB = """\
name: pirate
backend: local
model: {{name: SmolLM2-135M-Instruct, path: {model}}}
data: {{train_file: train.jsonl, test_file: test.jsonl}}
finetune:
  learning_rate: 2e-3
  max_steps: 20
  per_device_train_batch_size: 8
  max_seq_length: 96
  evaluation_strategy: disable
local: {{device: cpu, max_eval_examples: 8}}
evaluate:
  prompts: 8
  max_new_tokens: 16
  metrics: [loss, rouge_l]
  checks:
    - {{name: pirate, kind: starts_with, value: Ahoy, ignore_case: true}}
  require:
    - {{metric: "check:pirate", min_delta: 0.3}}
"""

CONTROL = """\
name: pirate
backend: local
model: {{name: SmolLM2-135M-Instruct, path: {model}}}
evaluate:
  prompts: 12
  max_new_tokens: 12
  metrics: []
  checks:
    - {{name: capital, kind: contains, ignore_case: true}}
  require:
    - {{metric: "check:capital", min_delta: 0.1}}
"""


def _ftkit(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTKIT_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ftkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
    )


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two or three minutes on an idle 2-core machine; far more when it is shared
def test_the_tuned_model_is_better_where_taught_and_no_better_elsewhere(tmp_path: Path, smollm2_dir: Path) -> None:
    rows = pirate_conversations(160, seed=3)
    write_jsonl(rows[:140], tmp_path / "train.jsonl")
    write_jsonl(rows[140:], tmp_path / "test.jsonl")
    write_jsonl(capital_conversations(), tmp_path / "control.jsonl")
    (tmp_path / "job.yaml").write_text(JOB.format(model=smollm2_dir), encoding="utf-8")
    (tmp_path / "control.yaml").write_text(CONTROL.format(model=smollm2_dir), encoding="utf-8")
    home = tmp_path / "home"

    run = _ftkit("run", "--poll", "1", "job.yaml", cwd=tmp_path, home=home)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "evaluation       passed" in run.stdout
    (run_dir,) = (home / "runs").iterdir()
    report = json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))
    pirate = next(m for m in report["metrics"] if m["name"] == "check:pirate")
    assert pirate["low"] > 0, pirate
    assert pirate["verdict"] == "better"
    loss = next(m for m in report["metrics"] if m["name"] == "loss")
    assert loss["tuned"] < loss["base"]
    assert loss["verdict"] == "better"
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert record["evaluation"]["status"] == "passed"
    assert record["evaluation"]["logged_to_run"] is True
    markdown = (run_dir / "evaluation.md").read_text(encoding="utf-8")
    assert "## Largest wins (check:pirate)" in markdown
    assert "Ahoy" in markdown

    control = _ftkit(
        "eval", "--run", str(run_dir), "--job", "control.yaml", "--data", "control.jsonl", "--out", "control",
        cwd=tmp_path, home=home,
    )  # fmt: skip
    assert control.returncode == 1, control.stderr[-3000:]
    assert "did not meet evaluate.require: check:capital" in control.stderr
    assert "Traceback" not in control.stderr
    capital = json.loads((tmp_path / "control" / "evaluation.json").read_text(encoding="utf-8"))
    (check,) = capital["metrics"]
    assert check["verdict"] != "better", check
    assert capital["passed"] is False
    listing = _ftkit("endpoint", "list", cwd=tmp_path, home=home)
    assert "pirate" not in listing.stdout  # both endpoints were deleted
