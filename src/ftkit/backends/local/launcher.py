"""The parent side of a multi-process job: the job's worker starts ``torchrun`` and waits for its ranks.

:func:`launch` runs ``python -m torch.distributed.run --standalone`` with ``config.processes`` ranks of
:mod:`.rank_worker` (which train with the hooks of :mod:`.training.ranks`), passes a stop request on to them
(a file in the job folder), and turns a failed rank into one clear :class:`RankFailure`; whatever happens, no
rank is left running when it returns.

NCCL's NVLink multicast (and PyTorch's and NVSHMEM's) is switched off in every process the launcher starts
(:data:`NO_MULTICAST`): on shared hosts a program using it can put the GPUs out of service.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from ...exceptions import FtkitError, Problem, ValidationError
from .spawn import child_env, python_command
from .training.config import TrainConfig, TrainResult
from .training.ranks import describe

__all__ = ["NO_MULTICAST", "RANKS_DIR", "RANK_MODULE", "RESULT_FILE", "STOP_FILE", "RankFailure", "launch"]

RANK_MODULE = "ftkit.backends.local.rank_worker"
"""The module each rank runs (``torchrun ... -m ftkit.backends.local.rank_worker JOB_DIR TRACKING_URI``)."""

NO_MULTICAST: Mapping[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""Set in every process the launcher starts: NVLink multicast off in NCCL, PyTorch and NVSHMEM."""

STOP_FILE = "stop-ranks"  # in the job folder: the worker asks the ranks to checkpoint and stop
RANKS_DIR = "ranks"  # in the job folder: torchrun's per-rank logs and the ranks' error files
RESULT_FILE = ".rank0-result.json"  # in the output folder: rank 0's TrainResult for the worker
_TAIL_LINES = 25


class RankFailure(FtkitError):
    """A rank of a multi-process job failed; the message names the rank and ends with its log's last lines."""


def _cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _check_devices(config: TrainConfig) -> None:
    gpus = _cuda_count()
    if config.device == "cuda" and config.processes > gpus:
        raise ValidationError(
            [
                Problem(
                    "local.processes",
                    f"{config.processes} processes on CUDA need {config.processes} GPUs, torch sees {gpus}",
                    f"ask for at most {gpus}, or use device: cpu to test with gloo processes",
                )
            ],
            "not enough GPUs",
        )
    if config.device == "auto" and 0 < gpus < config.processes:
        raise ValidationError(
            [
                Problem(
                    "local.processes",
                    f"{config.processes} processes need {config.processes} GPUs, this machine has {gpus}",
                    f"ask for at most {gpus} (compute.gpus_per_node or local.processes)",
                )
            ],
            "not enough GPUs",
        )


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _failure(folder: Path, processes: int, launcher: str) -> RankFailure:
    """Strictly private: the error for a failed launch: the first rank that failed, why, and its log's tail."""
    root = launcher.rpartition("Root Cause (first observed failure):")[2]
    found = re.search(r"rank\s*:\s*(\d+)", root)
    if found is None:  # torchrun itself failed (e.g. the rendezvous): its own last lines say why
        tail = "\n".join(launcher.rstrip().splitlines()[-_TAIL_LINES:])
        return RankFailure(f"the launcher of {processes} processes failed; its last lines:\n{tail}")
    rank = int(found.group(1))
    code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
    exit_code = int(code.group(1)) if code else None
    if exit_code is not None and exit_code < 0:
        how = f"killed by {signal.Signals(-exit_code).name}" if -exit_code in signal.valid_signals() else "killed"
    else:
        how = f"exit code {exit_code}"
    error = ""
    error_file = folder / RANKS_DIR / f"rank-{rank}.error.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(error_file.read_text(encoding="utf-8"))
        error = f": {data['type']}: {data['message']}"
    logs = sorted((folder / RANKS_DIR).glob(f"*/attempt_*/{rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    log = logs[-1] if logs else None
    tail = _tail(log) if log is not None else ""
    # A rank may have written nothing yet when it is killed: still name its log, so the user knows where to look.
    where = f"\nlast lines of its log ({log}):\n{tail}" if tail else (f"\nits log ({log}) is empty" if log else "")
    return RankFailure(f"rank {rank} of {processes} failed ({how}){error}{where}")


def _pump(stream: IO[bytes], keep: collections.deque[str]) -> None:
    """Strictly private: copy the launcher's output to this process's stderr line by line, keeping the last."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        keep.append(line)
        with contextlib.suppress(Exception):  # a closed or captured stderr must not stop the copying
            sys.stderr.write(line)
            sys.stderr.flush()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Strictly private: end the launcher and every rank (they share its process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):  # ranks outliving a launcher that exited on its own
        os.killpg(proc.pid, signal.SIGKILL)


def launch(
    folder: str | Path, config: TrainConfig, tracking_uri: str, *, should_stop: Callable[[], bool] | None = None
) -> TrainResult:
    """Train the job in ``folder`` on ``config.processes`` ranks of this host and return rank 0's result.

    Runs ``python -m torch.distributed.run --standalone`` (in its own process group, so signals meant for the
    worker do not reach the ranks), copies its output (rank 0's lines) to this process's stderr, and, while it
    runs, asks the ranks to checkpoint and stop once ``should_stop()`` is true. Whatever happens, no rank is
    left running when it returns.

    Args:
        folder: The job's folder (``config.json``, ``job.json``).
        config: The job's config (``processes > 1``).
        tracking_uri: The MLflow store rank 0 logs to.
        should_stop: Polled a few times a second (cancellation).

    Returns:
        What rank 0's :func:`~ftkit.backends.local.training.train` returned.

    Raises:
        RankFailure: A rank failed (the message names it, says how, and ends with its log's last lines).
        ValidationError: More processes than GPUs.
    """
    folder = Path(folder).absolute()
    _check_devices(config)
    stop = folder / STOP_FILE
    stop.unlink(missing_ok=True)
    logs = folder / RANKS_DIR
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    result_file = Path(config.output_dir) / RESULT_FILE
    result_file.unlink(missing_ok=True)
    # PYTHONSAFEPATH (child_env) keeps the caller's directory off sys.path in torchrun and in every rank it starts.
    env = child_env({**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1", "FTKIT_WORKER_PID": str(os.getpid())})
    command = [
        *python_command("torch.distributed.run"),
        "--standalone",
        f"--nproc-per-node={config.processes}",
        "--max-restarts=0",
        f"--log-dir={logs}",
        "--redirects=3",  # every rank's stdout and stderr into its own file under ranks/
        "--tee=3",
        "--local-ranks-filter=0",  # ... and rank 0's to the job's log too
        "-m",
        RANK_MODULE,
        str(folder),
        tracking_uri,
    ]
    print(f"launching {describe(config.sharding, config.processes)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    kept: collections.deque[str] = collections.deque(maxlen=400)
    pump = threading.Thread(target=_pump, args=(proc.stdout, kept), daemon=True)
    pump.start()
    try:
        while True:
            try:
                code = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if should_stop is not None and not stop.exists() and should_stop():
                    stop.touch()
    finally:
        _terminate(proc)
        pump.join(timeout=5)
    if code != 0:
        raise _failure(folder, config.processes, "".join(kept))
    data = json.loads(result_file.read_text(encoding="utf-8"))
    data["model_dir"] = Path(data["model_dir"]) if data.get("model_dir") else None
    return TrainResult(**data)
