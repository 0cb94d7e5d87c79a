"""docs/tutorial.md's Azure job file and its FakeAzureML test, run as written (so the tutorial cannot rot)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = (REPO / "docs" / "tutorial.md").read_text(encoding="utf-8")


def block(language: str, starts_with: str) -> str:
    for match in re.finditer(rf"```{language}\n(.*?)```", TUTORIAL, re.S):
        if match.group(1).startswith(starts_with):
            return match.group(1)
    raise AssertionError(f"no {language} block starting {starts_with!r} in the tutorial")


@pytest.mark.slow
def test_the_tutorials_fake_azure_test_passes(tmp_path: Path) -> None:
    (tmp_path / "support-azure.yaml").write_text(block("yaml", "name: router-support\nbackend: azureml"))
    conversation = [
        {"role": "user", "content": "How do I reset my router?"},
        {"role": "assistant", "content": "Hold the reset button for 10 seconds."},
    ]
    (tmp_path / "data").mkdir()
    for split in ("train", "test"):
        (tmp_path / "data" / f"{split}.jsonl").write_text(json.dumps({"messages": conversation}) + "\n")
    (tmp_path / "test_support_job.py").write_text(block("python", "# test_support_job.py"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "test_support_job.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
