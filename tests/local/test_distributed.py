"""Several training processes on one host: torchrun ranks with gloo on the CPU, on the tiny model.

The multi-GPU path is the same code with NCCL; these tests check what does not depend on the GPU: the loss
trajectory equals one process's on the same global batch, a killed rank fails the job with its log's tail and
leaves no process, and the resubmitted job resumes to the same final step.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from ftkit.backends.base import FinetuneRequest, JobHandle
from ftkit.backends.local import LocalBackend
from ftkit.backends.local.launcher import NO_MULTICAST
from ftkit.backends.local.training import MetricsSink, train
from ftkit.backends.local.training.ranks import Ranks, describe, partition, sharding_for
from ftkit.finetune import FinetunePipelineSpec
from ftkit.jobfile import JobFile
from ftkit.plan import plan_run

from .conftest import TINY_TRAINING, ChatFiles, tiny_train_config

pytest.importorskip("mlflow")
psutil = pytest.importorskip("psutil")

STEPS = 8
# One process's global batch: 8 conversations; two ranks take 4 each (per_device_train_batch_size is per rank).
COMMON = {**TINY_TRAINING, "max_steps": STEPS, "logging_steps": 1, "evaluation_strategy": "disable"}
# float32 on both sides; only the order of the sums differs (per rank, then across ranks).
TOLERANCE = 1e-4


class _Losses(MetricsSink):
    def __init__(self) -> None:
        self.loss: dict[int, float] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if "loss" in metrics:
            self.loss[step] = metrics["loss"]


@pytest.fixture(scope="module")
def one_process(
    tiny_model_dir: Path, chat_files: ChatFiles, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, float]:
    """The loss at every step of one process on the 8-conversation global batch."""
    sink = _Losses()
    config = tiny_train_config(
        tiny_model_dir,
        chat_files,
        tmp_path_factory.mktemp("one"),
        **{**COMMON, "per_device_train_batch_size": 8},
        precision="32",  # float32 throughout, as the ranks (see _request)
        token_cache_dir="",
    )
    result = train(config, metrics=sink, progress="none")
    assert result.global_step == STEPS
    return sink.loss


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> LocalBackend:
    b = LocalBackend(tmp_path_factory.mktemp("home"), device="cpu")
    b.register_model_dir("tiny-phi3", tiny_model_dir, {"origin": "tiny"})
    return b


def _request(
    backend: LocalBackend, chat_files: ChatFiles, *, name: str, processes: int | None = 2, **finetune: Any
) -> FinetuneRequest:
    job = JobFile.from_mapping(
        {
            "name": name,
            "backend": "local",
            "model": {"name": "tiny-phi3", "registry": "local"},
            "data": {"train_file": str(chat_files.train), "test_file": str(chat_files.test)},
            "compute": {"gpus_per_node": 4},
            "local": {"device": "cpu", "save_steps": 3, **({"processes": processes} if processes else {})},
        }
    )
    job = attrs.evolve(
        job,
        finetune=FinetunePipelineSpec.from_mapping(
            # precision 32: no bf16 base products on a CPU with native bf16 (FSDP2 ranks have none), so both sides
            # compute in float32 and differ only in the order of the sums
            {**COMMON, "per_device_train_batch_size": 4, "precision": 32, **finetune}
        ),
    )
    model = backend.resolve_model(job.model.ref())
    plan = attrs.evolve(plan_run(job, model=model), display_name=name, experiment_name="ftkit-tests")
    return FinetuneRequest(plan=plan, compute=None, train_data=str(chat_files.train), test_data=str(chat_files.test))


# Limits for polled states: generous, since a loaded 2-core machine is slow, not wrong (the states are what count).
LIMIT_S = 900


def _wait(backend: LocalBackend, handle: JobHandle, timeout: float = LIMIT_S) -> JobHandle:
    deadline = time.monotonic() + timeout
    while not handle.is_terminal:
        assert time.monotonic() < deadline, (backend.job_dir(handle.name) / "train.log").read_text()
        time.sleep(0.2)
        handle = backend.get_job(handle.name)
    return handle


def _ours(folder: Path) -> list[Any]:
    """Processes whose command line names the job's folder (worker, launcher, ranks)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(folder) in part for part in cmdline) and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _none_left(folder: Path, timeout: float = LIMIT_S) -> None:
    """No process of the job is left (a worker that just wrote its record may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while _ours(folder):
        assert time.monotonic() < deadline, _ours(folder)
        time.sleep(0.2)


def _losses(backend: LocalBackend, handle: JobHandle) -> dict[int, float]:
    return dict(backend.read_metrics(handle).series("loss"))


def _close(got: Mapping[int, float], want: Mapping[int, float]) -> None:
    assert sorted(got) == sorted(want)
    worst = max(abs(got[s] - want[s]) for s in want)
    print(f"largest loss difference: {worst:.2e}")
    assert worst < TOLERANCE, (worst, got, want)


class TestShares:
    def test_sharding_follows_deepspeed(self) -> None:
        """apply_deepspeed picks FSDP2 at its ZeRO stage (2 by default); without it, DDP."""
        assert sharding_for({"apply_deepspeed": "false", "deepspeed_stage": "3"}) == "ddp"
        assert sharding_for({"apply_deepspeed": "true"}) == "zero2"
        assert sharding_for({"apply_deepspeed": True, "deepspeed_stage": 3}) == "zero3"
        assert "stage 3" in describe("zero3", 4)

    def test_partition_balances_tokens_and_keeps_order(self) -> None:
        """Every example goes to one share, shares stay in the step's order, loads are close."""
        lengths = np.array([50, 10, 40, 30, 20, 60, 5, 5])
        chosen = [5, 0, 2, 7, 3, 1, 4, 6]
        shares = partition(lengths, chosen, 3)
        assert sorted(i for s in shares for i in s) == sorted(chosen)
        for s in shares:
            assert s == [i for i in chosen if i in s]
        loads = [int(lengths[s].sum()) for s in shares]
        assert max(loads) - min(loads) <= 10

    def test_ranks_run_as_many_micro_batches(self, tiny_model_dir: Path, chat_files: ChatFiles) -> None:
        """Two ranks' shares cover the step once, in equal counts (repeats weigh 0), with the global label count."""
        from transformers import AutoTokenizer

        from ftkit.backends.local.data import encode_file, pack_arrays
        from ftkit.backends.local.training.budget import split

        data, _ = encode_file(AutoTokenizer.from_pretrained(tiny_model_dir), str(chat_files.train), 256)
        chosen = list(range(9))
        one = Ranks().step_share(data, chosen, 300, split)
        shares = []
        for rank in (0, 1):
            ranks = Ranks()
            ranks.world, ranks.rank = 2, rank
            shares.append(ranks.step_share(data, chosen, 300, split))
        assert len(shares[0].groups) == len(shares[1].groups)
        real = [i for s in shares for g, w in zip(s.groups, s.weights, strict=True) if w == 1.0 for i in g]
        assert sorted(real) == chosen
        assert shares[0].labels == shares[1].labels == one.labels == pack_arrays(data, chosen).num_labels


def test_the_job_picks_processes_and_sharding(backend: LocalBackend, chat_files: ChatFiles) -> None:
    """local.processes and DeepSpeed's stage reach the config; on one process DeepSpeed's settings are ignored."""
    request = _request(backend, chat_files, name="map", apply_deepspeed=True, deepspeed_stage=3)
    config, ignored = backend.train_config(request, output_dir="-")
    assert (config.processes, config.sharding) == (2, "zero3")
    assert "apply_deepspeed" not in ignored
    # compute.gpus_per_node describes an Azure node: on the CPU it means one process, DeepSpeed unused
    config, ignored = backend.train_config(_request(backend, chat_files, name="one", processes=None), output_dir="-")
    assert config.processes == 1
    assert {"apply_deepspeed", "deepspeed_stage"} <= set(ignored)


@pytest.mark.slow
def test_two_ddp_processes_follow_one_process(
    backend: LocalBackend, chat_files: ChatFiles, one_process: dict[int, float]
) -> None:
    """DDP on 2 gloo processes, 4 conversations each: the loss at every step equals one process's on 8."""
    handle = _wait(backend, backend.submit_finetune(_request(backend, chat_files, name="ddp", apply_deepspeed=False)))
    folder = backend.job_dir(handle.name)
    assert handle.status == "Completed", handle.error
    _close(_losses(backend, handle), one_process)
    assert (backend.get_job(handle.name).progress or "").startswith(f"step {STEPS}: loss {one_process[STEPS]:.4f}")
    assert (folder / "output" / "model" / "config.json").is_file()
    assert "DDP" in json.loads((folder / "job.json").read_text())["tags"]["ftkit.distributed"]
    _none_left(folder)


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_it_resumes(
    backend: LocalBackend, chat_files: ChatFiles, one_process: dict[int, float]
) -> None:
    """FSDP2 stage 3: killing rank 1 mid-run fails the job with rank 1's log tail, leaves no process behind,
    and the resubmitted job resumes from the gathered checkpoint to the same final step and losses."""
    request = _request(backend, chat_files, name="zero3", apply_deepspeed=True, deepspeed_stage=3)
    handle = backend.submit_finetune(request)
    folder = backend.job_dir(handle.name)
    deadline = time.monotonic() + LIMIT_S
    rank1 = None
    while rank1 is None:  # found first (scanning processes is slow), then killed right after checkpoint 3
        assert time.monotonic() < deadline, (folder / "train.log").read_text()
        assert not backend.get_job(handle.name).is_terminal, (folder / "train.log").read_text()
        for proc in _ours(folder):
            try:
                if proc.environ().get("RANK") == "1" and "rank_worker" in " ".join(proc.cmdline()):
                    rank1 = proc
            except psutil.Error:
                continue
        time.sleep(0.05)
    checkpoint = folder / "output" / "checkpoints" / "checkpoint-3" / "state.json"
    while not checkpoint.is_file():
        assert time.monotonic() < deadline, (folder / "train.log").read_text()
        assert rank1.is_running(), (folder / "train.log").read_text()
        time.sleep(0.01)
    environ = rank1.environ()
    assert {k: environ.get(k) for k in NO_MULTICAST} == dict(NO_MULTICAST)  # what every started process gets
    rank1.send_signal(signal.SIGKILL)
    failed = _wait(backend, handle)
    assert failed.status == "Failed"
    assert "rank 1 of 2 failed (killed by SIGKILL)" in (failed.error or ""), failed.error
    assert "its log (" in (failed.error or "")  # its tail, or that it is empty when rank 1 had written nothing
    _none_left(folder)

    again = _wait(backend, backend.submit_finetune(request))
    assert again.name == handle.name
    assert again.status == "Completed", again.error
    result = json.loads((folder / "output" / "result.json").read_text())
    assert result["global_step"] == STEPS
    _close(_losses(backend, again), one_process)
    _none_left(folder)


@pytest.mark.slow
def test_cancel_stops_every_rank_with_a_checkpoint(backend: LocalBackend, chat_files: ChatFiles) -> None:
    """cancel_job (SIGTERM to the worker) makes the ranks agree on a step, checkpoint it and stop: Canceled."""
    request = _request(backend, chat_files, name="cancel", apply_deepspeed=False, max_steps=3000)
    handle = backend.submit_finetune(request)
    folder = backend.job_dir(handle.name)
    deadline = time.monotonic() + LIMIT_S
    # Training has begun: a step's loss is the progress (before it, the progress names the loading phases, and a
    # cancel there stops the ranks with nothing to checkpoint).
    while not re.match(r"step [1-9]", backend.get_job(handle.name).progress or ""):
        assert time.monotonic() < deadline, (folder / "train.log").read_text()
        assert not backend.get_job(handle.name).is_terminal, (folder / "train.log").read_text()
        time.sleep(0.1)
    backend.cancel_job(handle.name)
    done = _wait(backend, handle)
    assert done.status == "Canceled", done.error
    checkpoints = list((folder / "output" / "checkpoints").glob("checkpoint-*/state.json"))
    assert checkpoints, (folder / "train.log").read_text()
    assert not (folder / "output" / "model").exists()
    assert int(json.loads(max(checkpoints).read_text())["global_step"]) < 3000
    _none_left(folder)
