"""``ftkit run`` options that need no backend: --set, --dry-run (local), --json, --version, and a broken pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftkit
from ftkit.cli import main
from ftkit.cli.main import build_parser
from ftkit.exceptions import JobFileError, ValidationError

REPO = Path(__file__).resolve().parents[2]
AZURE_EXAMPLE = REPO / "examples" / "phi3-ultrachat.yaml"
LOCAL_EXAMPLE = REPO / "examples" / "local-phi3.yaml"


def dry_run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["run", *argv, "--dry-run", "--json"]) == 0
    record: dict[str, object] = json.loads(capsys.readouterr().out)
    return record


def test_set_values_are_typed_like_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """YAML values: 5 is an int, true a bool, 2.0e-4 a number; they reach the parameters in the component's encoding."""
    record = dry_run_json(
        capsys,
        str(AZURE_EXAMPLE),
        "--set",
        "finetune.learning_rate=2.0e-4",
        "--set",
        "finetune.apply_lora=false",
        "--set",
        "data.percent=1",
    )
    parameters = record["parameters"]
    assert isinstance(parameters, dict)
    assert parameters["learning_rate"] == 2.0e-4
    assert parameters["apply_lora"] == "false"
    assert record["overrides"] == {"finetune.learning_rate": 2.0e-4, "finetune.apply_lora": False, "data.percent": 1}


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("data.percent=lots", "--set data.percent: expected a number, got str 'lots'"),
        ("backend=cloud", "--set backend: 'cloud' is not allowed; choose one of: azureml, local"),
        ("deploy.kep=true", "--set deploy.kep: unknown key; did you mean keep?"),
        ("finetune.learning_rate=fast", "--set finetune.learning_rate: expected a number, got str 'fast'"),
        ("finetune.lerning_rate=1e-4", "--set finetune.lerning_rate: unknown parameter"),
        ("name.first=x", "--set name.first: name is str 'phi3-ultrachat', not a mapping of keys"),
    ],
)
def test_bad_overrides_are_named_by_their_set_not_a_line_of_the_file(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loader's and the parameter check's own messages, pointing at the --set (and no file line)."""
    assert main(["run", str(AZURE_EXAMPLE), "--dry-run", "--set", assignment]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "phi3-ultrachat.yaml:" not in err.replace(f"{AZURE_EXAMPLE}:\n", "")


def test_a_line_of_the_file_is_still_named_when_the_override_is_elsewhere(tmp_path: Path) -> None:
    """Only the overridden key loses its line; the file's own mistakes keep theirs."""
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nmodel: {name: m}\ndata:\n  percent: many\n", encoding="utf-8")
    with pytest.raises(JobFileError) as info:
        ftkit.JobFile.load(job, overrides={"data.rows": "ten"})
    rendered = info.value.render()
    assert f"{job}:4: data.percent: expected a number" in rendered
    assert "overrides data.rows: expected an integer" in rendered


@pytest.mark.parametrize("assignment", ["no-equals-sign", "=5", "a..b=1", "finetune.x=[unclosed"])
def test_malformed_set_is_a_usage_error(assignment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "job.yaml", "--set", assignment])
    assert info.value.code == 2
    assert "--set" in capsys.readouterr().err


def test_backend_and_keep_endpoint_are_overrides_too(capsys: pytest.CaptureFixture[str]) -> None:
    record = dry_run_json(capsys, str(AZURE_EXAMPLE), "--backend", "local", "--keep-endpoint")
    assert record["backend"] == "local"
    assert record["overrides"] == {"backend": "local", "deploy.keep": True}
    assert "keep the endpoint" in str(record["then"])


def test_local_dry_run_starts_nothing_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No backend is created, no process started, the ftkit home and the data directory stay untouched."""
    import ftkit.backends

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a dry run called {args} {kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(ftkit.backends, "get_backend", refuse)
    home = tmp_path / "home"
    monkeypatch.setenv("FTKIT_HOME", str(home))
    job = tmp_path / "job.yaml"
    job.write_text(LOCAL_EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    record = dry_run_json(
        capsys,
        str(job),
        "--output",
        str(tmp_path / "out"),
        "--set",
        "model.path=null",  # a local registry entry instead of a directory: nothing to read from disk
        "--set",
        "data={train_file: train.jsonl, test_file: test.jsonl}",
    )
    body = record["body"]
    assert isinstance(body, dict)
    assert body["model"] == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/labels/latest"
    assert body["train_file"] == str(tmp_path / "train.jsonl")
    assert body["parameters"]["lora_r"] == 16
    assert body["local"] == {"save_steps": 200, "max_eval_examples": 500}
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dry_run_checks_the_files_as_validate_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(LOCAL_EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["run", str(job), "--dry-run"]) == 1
    assert "model.path: " in capsys.readouterr().err
    assert main(["run", str(job), "--dry-run", "--set", "model.path=elsewhere"]) == 1
    assert "--set model.path: " in capsys.readouterr().err


BAD_LOCAL_JOB = """\
name: bad
backend: local
model: {name: tiny, path: nosuchdir}
data: {train_file: nope.jsonl, test_file: nope.jsonl}
finetune:
  learning_rate: fast
  num_train_epochs: -1
local: {device: cuda, colour: red}
"""


def test_run_and_dry_run_report_what_validate_reports_in_one_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate, run --dry-run and run print the same problems, in the same order (by line) and form, with the
    file's name; the file's loader problems and the file checks come in one message, not two rounds."""
    job = tmp_path / "bad.yaml"
    job.write_text(BAD_LOCAL_JOB, encoding="utf-8")
    errors = []
    for argv in (["validate", str(job)], ["run", str(job), "--dry-run"], ["run", str(job)]):
        assert main(argv) == 1
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] == errors[2], errors
    lines = errors[0].splitlines()
    assert lines[0] == f"error: {len(lines) - 1} problem(s) in {job}:"
    where = [line.split(": ")[1] for line in lines[1:]]
    assert where == [
        "model.path",
        "data.train_file",
        "data.test_file",
        "finetune.learning_rate",
        "finetune.num_train_epochs",
        "local.colour",
        *(["local.device"] if "local.device" in errors[0] else []),
    ]
    assert all(line.startswith(f"  - {job}:") for line in lines[1:])


@pytest.mark.parametrize(
    ("data", "label"),
    [
        ("{source: HuggingFaceH4/ultrachat_200k}", "ultrachat"),
        ("{source: corpora/my-chats.jsonl}", "my-chats"),
        ("{source: ./support tickets/}", "support_tickets"),
        ("{train_file: built/train.jsonl, test_file: built/test.jsonl}", "built"),
    ],
)
def test_the_display_name_names_the_data(tmp_path: Path, data: str, label: str) -> None:
    """The notebook's display name says ultrachat only for ultrachat; other data is named by its source."""
    from ftkit.jobfile import JobFile
    from ftkit.plan import plan_run

    job = JobFile.from_yaml(f"name: n\nbackend: local\nmodel: {{name: m}}\ndata: {data}\n")
    assert plan_run(job).display_name.startswith(f"m-{label}-bs1-")


def test_validate_checks_what_this_machine_knows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local job without data fails validation (not the data stage); local.device: cuda without a CUDA device
    too, saying why."""
    job = tmp_path / "job.yaml"
    job.write_text("name: n\nbackend: local\nmodel: {name: tiny-phi3}\nlocal: {device: cuda}\n", encoding="utf-8")
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert "data: says nowhere to get the chat data from" in err
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is None:
        assert "local.device: is cuda, but torch is not installed" in err
    elif not torch.cuda.is_available():
        assert f"{job}:4: local.device: is cuda, but " in err
    else:
        assert "local.device" not in err
    job.write_text("name: n\nbackend: local\nmodel: {name: tiny-phi3}\ndata: {source: chats}\n", encoding="utf-8")
    assert main(["validate", str(job)]) == 0


def test_readable_dry_run_names_the_plan_and_prints_the_body(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(AZURE_EXAMPLE), "--dry-run", "--set", "deploy.keep=true"]) == 0
    out = capsys.readouterr().out
    assert "nothing was submitted" in out
    assert "--set          deploy.keep=true" in out
    body = json.loads(out[out.index("\n{") :])
    assert body["properties"]["displayName"].startswith("Phi-3-mini-4k-instruct-ultrachat-bs8")


def test_python_overrides_check_like_the_file_and_evolve_keeps_earlier_ones() -> None:
    job = ftkit.JobFile.load(AZURE_EXAMPLE)
    faster = job.evolve({"finetune.learning_rate": 1e-4}).evolve(deploy={"keep": True})
    assert faster.finetune.learning_rate == 1e-4
    assert faster.deploy.keep is True
    assert faster.deploy.instance_type == job.deploy.instance_type  # a section mapping merges
    assert dict(faster.overrides.values) == {"finetune.learning_rate": 1e-4, "deploy": {"keep": True}}
    assert job.evolve({}) == job
    with pytest.raises(JobFileError, match=r"overrides deploy.instance_count: expected an integer"):
        job.evolve({"deploy.instance_count": "two"})
    from ftkit.plan import plan_run

    with pytest.raises(ValidationError, match=r"overrides finetune.lr_scheduler_type: 'wavy' is not allowed"):
        plan_run(job.evolve({"finetune.lr_scheduler_type": "wavy"}))


def test_compact_repr_and_html() -> None:
    job = ftkit.JobFile.load(AZURE_EXAMPLE).evolve({"finetune.learning_rate": 1e-4})
    text = repr(job)
    assert len(text) < 300, text
    assert text.startswith("JobFile('phi3-ultrachat', backend='azureml'")
    assert "overrides={'finetune.learning_rate': 0.0001}" in text
    page = job._repr_html_()
    assert "<table>" in page
    assert "Standard_ND40rs_v2" in page
    assert "overrides finetune.learning_rate" in page


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ftkit {version('ftkit')}"


@pytest.mark.parametrize(
    "argv",
    [["validate", str(AZURE_EXAMPLE)], ["render", str(AZURE_EXAMPLE)], ["run", str(AZURE_EXAMPLE), "--dry-run"]],
    ids=lambda a: a[0],
)
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """`ftkit ... | head`: the reader is gone before ftkit writes; no message, no traceback, exit 141 like SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ftkit", *argv], stdout=write_end, stderr=subprocess.PIPE, timeout=120, check=False
        )
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""
    assert proc.returncode == 141


def test_progress_lines_wrap_under_the_message_column_in_a_terminal() -> None:
    import io

    from ftkit.cli.run import ProgressPrinter
    from ftkit.runner import StageEvent

    message = "job phi3-ultrachat-7f3a Running: step 120/400, loss 1.234, eval loss 1.456, 512 tokens/s, 3 min left"
    wrapped, piped = io.StringIO(), io.StringIO()
    ProgressPrinter(wrapped, width=80)(StageEvent("finetune", message))
    ProgressPrinter(piped)(StageEvent("finetune", message))
    lines = wrapped.getvalue().splitlines()
    assert len(lines) == 2
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].startswith(" " * ProgressPrinter.PREFIX)
    assert lines[0].index("job") == ProgressPrinter.PREFIX
    assert " ".join(" ".join(lines).split()).endswith(message)
    assert piped.getvalue().count("\n") == 1  # not a terminal: one line per event


@pytest.mark.parametrize(
    ("response", "text"),
    [
        ({"output": "Paris."}, "Paris."),
        (["Paris."], "Paris."),
        ([{"0": "Paris."}], "Paris."),
        ("Paris.", "Paris."),
        ({"output": ["a", "b"]}, '["a", "b"]'),
        ({"choices": [1]}, '{"choices": [1]}'),
    ],
)
def test_answer_text(response: object, text: str) -> None:
    from ftkit.runner import answer_text

    assert answer_text(response) == text


def test_a_multi_line_answer_keeps_its_lines_under_the_label() -> None:
    from ftkit.cli.run import _indented

    assert _indented("First line.\nSecond line.\n") == "First line.\n" + " " * 17 + "Second line."


def test_a_shared_output_directory_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--output that already holds another run's run.json: a warning before this run replaces it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"status": "succeeded"}', encoding="utf-8")
    job = tmp_path / "job.yaml"
    job.write_text(LOCAL_EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    main(["run", str(job), "--output", str(out), "--set", "model.path=missing-model"])
    err = capsys.readouterr().err
    assert f"warning: {out / 'run.json'} belongs to another run (succeeded); this run replaces it" in err
    (out / "run.json").unlink()
    main(["run", str(job), "--output", str(out), "--set", "model.path=missing-model"])
    assert "warning:" not in capsys.readouterr().err
