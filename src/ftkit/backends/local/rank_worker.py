"""One rank of a multi-process job: ``torchrun ... -m ftkit.backends.local.rank_worker JOB_DIR TRACKING_URI``.

:mod:`.launcher` starts it through torchrun, one per process, beside the one-process worker (:mod:`.worker`).
Each rank initialises the process group (NCCL on CUDA, gloo on a CPU) and runs
:func:`~ftkit.backends.local.training.train` with :class:`~ftkit.backends.local.training.ranks.TorchRanks`;
rank 0 logs to the job's run and writes its result for the launcher, a failing rank writes why, and every rank
dies with torchrun.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs

from .launcher import RANKS_DIR, RESULT_FILE, STOP_FILE

__all__ = ["main"]


def _die_with_parent() -> None:
    """Strictly private: on Linux, get SIGKILL when torchrun dies, so a killed launcher leaves no rank behind."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)


def _worker_gone(pid_text: str | None) -> Callable[[], bool]:
    """Strictly private: whether the job's worker (who waits for the ranks) has died."""
    from .pids import owned_process_alive

    pid = int(pid_text) if pid_text and pid_text.isdigit() else None
    if pid is None:
        return lambda: False
    return lambda: not owned_process_alive(pid, lambda _args: True)


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m torch.distributed.run ... -m ftkit.backends.local.rank_worker JOB_DIR TRACKING_URI``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or "RANK" not in os.environ:
        print("usage: torchrun ... -m ftkit.backends.local.rank_worker JOB_DIR TRACKING_URI", file=sys.stderr)
        return 2
    _die_with_parent()
    import torch
    import torch.distributed as dist

    from .job_sink import JobProgressSink
    from .jobs import JobRecord
    from .tracking import MlflowStore, RunLogger
    from .training import MetricsSink, TrainConfig, stopping, train
    from .training.ranks import TorchRanks

    folder, uri = Path(args[0]), args[1]
    rank = int(os.environ["RANK"])
    config = TrainConfig.from_json((folder / "config.json").read_text(encoding="utf-8"))
    device: Literal["cpu", "cuda"] = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    try:
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        sink: MetricsSink = MetricsSink()
        on_engine = None
        if rank == 0:
            record = JobRecord(**json.loads((folder / "job.json").read_text(encoding="utf-8")))
            logger = RunLogger(MlflowStore.at(folder.parent.parent, uri), record.run_id) if record.run_id else None
            sink = JobProgressSink(folder, record, logger)
            on_engine = logger.set_tags if logger is not None else None
        ranks = TorchRanks(config.sharding, device, on_engine)
        stop, gone = folder / STOP_FILE, _worker_gone(os.environ.get("FTKIT_WORKER_PID"))
        result = train(
            attrs.evolve(config, device=device),
            metrics=sink,
            progress="plain" if rank == 0 else "none",
            # A dead worker is a stop request too: the ranks checkpoint and exit instead of training unwatched.
            # Every rank watches, so that each cuts its own model load short (see training.stopping; ranks agree).
            should_stop=stopping.watch(lambda: stop.exists() or gone()),
            ranks=ranks,
        )
        if rank == 0:
            data = attrs.asdict(result)
            data["model_dir"] = str(result.model_dir) if result.model_dir else None
            out = Path(config.output_dir) / RESULT_FILE
            out.with_suffix(".tmp").write_text(json.dumps(data), encoding="utf-8")
            out.with_suffix(".tmp").replace(out)
    except BaseException as exc:
        error = {"type": type(exc).__name__, "message": str(exc)[:1500], "time": time.time()}
        with contextlib.suppress(OSError):
            (folder / RANKS_DIR / f"rank-{rank}.error.json").write_text(json.dumps(error), encoding="utf-8")
        raise
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
