"""Training on several processes of one host: ``torchrun`` ranks with DDP or FSDP2, and their launcher.

A job whose config asks for ``processes > 1`` is trained by that many ranks that ``torch.distributed.run``
(torchrun) starts; the job's worker (:mod:`.worker`) calls :func:`launch`, which runs torchrun, passes a stop
request on, and turns a failed rank into one clear error. Each rank runs :func:`main`, the same
:func:`~ftkit.backends.local.training.train` as one process, with a :class:`TorchRanks` as its ``ranks`` hooks:

- **Engine.** ``sharding="ddp"``: DistributedDataParallel (the weights replicated; for models whose weights fit
  one device). ``zero2`` and ``zero3``: FSDP2 (``torch.distributed.fsdp.fully_shard`` on each decoder layer and
  the root), mapping DeepSpeed's ZeRO stages: stage 2 shards gradients and optimizer state and keeps the
  gathered weights between forward and backward (``reshard_after_forward=False``); stage 3 shards the weights
  too. Under FSDP2 the weights are stored in float32 and computed in the compute dtype (bf16 on CUDA) with
  float32 gradient reduction, FSDP2's own mixed precision, in place of the one-process float32 masters.
- **Batches.** A step takes ``per_device_train_batch_size x gradient_accumulation_steps`` conversations per
  rank. Every rank knows the whole step's conversations, so each cuts the same balanced partition (longest
  first onto the least-loaded rank), the same micro-batch counts (a rank with fewer repeats one micro-batch at
  weight 0, so every rank runs as many forward/backward passes: each is a collective under FSDP2 and DDP), and
  the same count of the step's label tokens. Each rank's summed loss is divided by that **global** count and the
  gradients are summed across ranks (not averaged), so a step's gradient is the one process's on the same
  global batch. The count is computed from the data every rank holds, not all-reduced: same number, no
  collective.
- **Rank 0** alone logs metrics and progress, writes checkpoints (gathered: the same files as one process, so
  a run may resume with another process count) and the final model; a stop request is agreed by all ranks (a
  tiny all-reduce on a CPU group each step, between evaluation batches, after a checkpoint write and at the end
  of the model load, which each rank cuts short on its own: see :mod:`.stop_requests`), so no rank waits for another.

NCCL's NVLink multicast (and PyTorch's and NVSHMEM's) is switched off in every process the launcher starts
(:data:`NO_MULTICAST`): on shared hosts a program using it can put the GPUs out of service.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import numpy as np

from ...exceptions import FtkitError, Problem, ValidationError
from .spawn import child_env, python_command

if TYPE_CHECKING:
    from .data import EncodedSet
    from .training import TrainConfig, TrainResult

__all__ = [
    "NO_MULTICAST",
    "RANK_MODULE",
    "SHARDINGS",
    "RankFailure",
    "Ranks",
    "StepShare",
    "TorchRanks",
    "describe",
    "launch",
    "main",
    "sharding_for",
]

RANK_MODULE = "ftkit.backends.local.distributed"
"""The module each rank runs (``torchrun ... -m ftkit.backends.local.distributed JOB_DIR TRACKING_URI``)."""

SHARDINGS = ("ddp", "zero2", "zero3")
"""``ddp``: weights replicated; ``zero2``: FSDP2 sharding gradients and optimizer state; ``zero3``: weights too."""

NO_MULTICAST: Mapping[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""Set in every process the launcher starts: NVLink multicast off in NCCL, PyTorch and NVSHMEM."""

_STOP_FILE = "stop-ranks"  # in the job folder: the worker asks the ranks to checkpoint and stop
_RANKS_DIR = "ranks"  # in the job folder: torchrun's per-rank logs and the ranks' error files
_RESULT_FILE = ".rank0-result.json"  # in the output folder: rank 0's TrainResult for the worker
_TAIL_LINES = 25


def sharding_for(parameters: Mapping[str, object]) -> str:
    """The sharding that a job's ``apply_deepspeed`` / ``deepspeed_stage`` parameters ask for.

    Args:
        parameters: The job's fine-tuning parameters (component encoding or Python values).

    Returns:
        ``zero2`` or ``zero3`` when DeepSpeed is applied (its ZeRO stage, 2 by default), else ``ddp``.
    """
    apply = str(parameters.get("apply_deepspeed", "false")).lower() == "true"
    if not apply:
        return "ddp"
    return "zero3" if str(parameters.get("deepspeed_stage", "2")) == "3" else "zero2"


def describe(sharding: str, processes: int) -> str:
    """A line saying how the run is spread (for the run's tags and the job's log)."""
    if sharding == "ddp":
        engine = "DDP (weights replicated)"
    elif sharding == "zero2":
        engine = "FSDP2 (deepspeed_stage 2: gradients and optimizer state sharded)"
    else:
        engine = "FSDP2 (deepspeed_stage 3: weights, gradients and optimizer state sharded)"
    return f"{engine} on {processes} processes"


def example_labels(data: EncodedSet) -> np.ndarray:
    """Label tokens of each example, as :func:`~ftkit.backends.local.data.pack_arrays` counts them.

    An example's first token is never a label (it is not predicted from the example before it), so an
    example's labels are its assistant tokens after the first position.
    """
    ends = np.concatenate([[0], np.cumsum(data.assistant, dtype=np.int64)])
    starts = data.offsets[:-1]
    counts: np.ndarray = ends[data.offsets[1:]] - ends[np.minimum(starts + 1, data.offsets[1:])]
    return counts


def partition(lengths: np.ndarray, chosen: Sequence[int], parts: int) -> list[list[int]]:
    """Split a step's examples into ``parts`` shares of about equal tokens (each share in the step's order).

    Longest first, each onto the share with the fewest tokens so far (ties: the lower rank): deterministic,
    so every rank computes the same partition.
    """
    loads = [0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for pos in sorted(range(len(chosen)), key=lambda p: (-int(lengths[chosen[p]]), p)):
        k = min(range(parts), key=lambda r: (loads[r], r))
        shares[k].append(pos)
        loads[k] += int(lengths[chosen[pos]])
    return [[chosen[p] for p in sorted(s)] for s in shares]


@attrs.frozen
class StepShare:
    """This rank's part of one optimizer step.

    Attributes:
        groups: The micro-batches' example indices (as many on every rank).
        weights: 1.0 for a real micro-batch, 0.0 for a repeat that only keeps the ranks in step.
        labels: Label tokens of the whole step, on all ranks (the loss's normaliser).
        tokens: Tokens of the whole step, on all ranks.
    """

    groups: list[list[int]]
    weights: list[float]
    labels: int
    tokens: int


Split = Callable[[Any, Sequence[int], int], list[list[int]]]


class Ranks:
    """The hooks :func:`~ftkit.backends.local.training.train` calls where several processes differ from one.

    This base class is one process: every hook is the identity. :class:`TorchRanks` is the distributed one.
    """

    world = 1
    rank = 0
    main = True
    separate_gradients = False
    """Whether gradients must move out of the model after every backward pass (DDP reduces what is there)."""

    def __init__(self) -> None:
        self._labels: np.ndarray | None = None

    def weights_dtype(self, compute_dtype: Any) -> Any:
        """The dtype the model stores its weights in."""
        return compute_dtype

    def wrap(self, model: Any, loss: Callable[[Any, Any], Any], compute_dtype: Any) -> Callable[[Any], Any]:  # noqa: ARG002
        """Return ``forward(batch) -> summed loss``, through the engine's wrapper when there is one."""
        return lambda batch: loss(model, batch)

    def step_share(self, data: EncodedSet, chosen: Sequence[int], budget: int, split: Split) -> StepShare:
        """This rank's micro-batches of the step made of ``chosen``."""
        if self._labels is None:
            self._labels = example_labels(data)
        lengths = data.lengths
        labels = int(self._labels[list(chosen)].sum())
        tokens = int(lengths[list(chosen)].sum())
        if self.world == 1:
            groups = split(lengths, chosen, budget)
            return StepShare(groups, [1.0] * len(groups), labels, tokens)
        shares = partition(lengths, chosen, self.world)
        most = max(len(split(lengths, s, budget)) if s else 0 for s in shares)
        mine = split(lengths, shares[self.rank], budget) if shares[self.rank] else []
        filler = mine[0] if mine else [chosen[0]]
        pad = most - len(mine)
        return StepShare(mine + [filler] * pad, [1.0] * len(mine) + [0.0] * pad, labels, tokens)

    def eval_share(self, batches: Sequence[Any]) -> list[tuple[Any, float]]:
        """This rank's evaluation batches, with weights (as many on every rank)."""
        if self.world == 1:
            return [(b, 1.0) for b in batches]
        mine = [(b, 1.0) for b in batches[self.rank :: self.world]]
        most = -(-len(batches) // self.world)
        return mine + [(batches[0], 0.0)] * (most - len(mine))

    def sum(self, value: Any) -> Any:
        """The sum of a tensor over the ranks."""
        return value

    def agree(self, flag: bool) -> bool:
        """Whether any rank says yes (all ranks get the same answer)."""
        return flag

    def plain(self, value: Any) -> Any:
        """A plain tensor of a (replicated) distributed one, such as FSDP2's gradient norm."""
        return value

    def gathered(self, named: Mapping[str, Any], optimizer: Any) -> tuple[Mapping[str, Any], Any]:
        """The trainable weights and an optimizer whose ``state_dict()`` holds whole tensors (for a checkpoint)."""
        return named, optimizer

    def loading(self, named: Mapping[str, Any], optimizer: Any) -> tuple[Mapping[str, Any], Any]:
        """Targets a checkpoint's whole tensors are copied into (and an optimizer that re-shards its state)."""
        return named, optimizer

    def final_model(self, model: Any, named: Mapping[str, Any], rebuild: Callable[[], Any]) -> Any:  # noqa: ARG002
        """The model to save at the end on this rank (``None``: this rank saves nothing)."""
        return model


def _loss_module(model: Any, loss: Callable[[Any, Any], Any]) -> Any:
    """Strictly private: a module whose forward is the training loss, so the engine's hooks run around it.

    The loop computes the loss from the decoder's hidden states and the head (see :mod:`.loss`), not through
    the model's forward; DDP and FSDP2 only act on what runs inside their wrapped module's forward.
    """
    import torch

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Any) -> Any:
            return loss(self.model, batch)

    return LossModule()


def _sum_hook(_state: Any, bucket: Any) -> Any:
    """Strictly private: DDP comm hook that sums gradients over ranks in float32 (DDP's own averages them).

    The loss is already normalised by the global step's label tokens, so the sum is the step's gradient.
    """
    import torch
    import torch.distributed as dist

    buffer = bucket.buffer()
    wide = buffer if buffer.dtype == torch.float32 else buffer.float()
    future = dist.all_reduce(wide, async_op=True).get_future()

    def done(fut: Any) -> Any:
        return fut.value()[0].to(buffer.dtype)

    return future.then(done)


def _full(value: Any) -> Any:
    """Strictly private: the whole tensor of a DTensor (a collective), on the CPU."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return value.detach().cpu() if hasattr(value, "detach") else value


def _full_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _full_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_full_tree(v) for v in value]
    return _full(value) if hasattr(value, "full_tensor") else value


@attrs.frozen
class _SavedOptimizer:
    """Strictly private: stands for an optimizer in a checkpoint: its gathered ``state_dict``."""

    state: Any

    def state_dict(self) -> Any:
        return self.state


class _ShardTarget:
    """Strictly private: a DTensor parameter that a checkpoint's whole tensor is copied into (its shard)."""

    def __init__(self, param: Any) -> None:
        self.param = param
        self.device = param.device
        self.dtype = param.dtype

    def copy_(self, whole: Any) -> Any:
        from torch.distributed.tensor import distribute_tensor

        part = distribute_tensor(
            whole.detach().to(self.device, self.dtype),
            self.param.device_mesh,
            self.param.placements,
            src_data_rank=None,  # every rank holds the whole tensor: each takes its shard, nothing is sent
        )
        return self.param.copy_(part)


def _reshard_state(optimizer: Any) -> None:
    """Strictly private: after ``load_state_dict``, make whole state tensors DTensors like their parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            state = optimizer.state.get(p, {})
            for key, value in list(state.items()):
                if hasattr(value, "shape") and not isinstance(value, DTensor) and value.shape == p.shape:
                    state[key] = distribute_tensor(
                        value.detach().to(p.device), p.device_mesh, p.placements, src_data_rank=None
                    )


def _decoder_layers(model: Any) -> list[Any]:
    """Strictly private: the modules FSDP2 shards one by one (the model's no-split blocks: decoder layers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if layers:
        return layers
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    return list(getattr(decoder, "layers", []))


class TorchRanks(Ranks):
    """The hooks of one rank of a ``torch.distributed`` run (the process group already initialised).

    Args:
        sharding: One of :data:`SHARDINGS`.
        device: ``cpu`` (gloo) or ``cuda`` (NCCL, the current device set to the local rank).
        on_engine: Called with the run's tags once the engine is chosen (rank 0 sets them on its run).
    """

    def __init__(self, sharding: str, device: str, on_engine: Callable[[dict[str, str]], None] | None = None) -> None:
        import torch.distributed as dist

        super().__init__()
        if sharding not in SHARDINGS:
            raise ValidationError(
                [Problem("sharding", f"unknown value {sharding!r}", f"choose one of: {', '.join(SHARDINGS)}")]
            )
        self.sharding = sharding
        self.device = device
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self.main = self.rank == 0
        self.fsdp = sharding != "ddp"
        self.separate_gradients = not self.fsdp
        self.on_engine = on_engine
        # Stop votes go through a CPU group: no wait for the GPU, whatever the main group's backend.
        self.control = dist.new_group(backend="gloo") if device == "cuda" else None

    def weights_dtype(self, compute_dtype: Any) -> Any:
        """float32 under FSDP2 (which computes in ``compute_dtype``), else ``compute_dtype``."""
        import torch

        return torch.float32 if self.fsdp else compute_dtype

    def wrap(self, model: Any, loss: Callable[[Any, Any], Any], compute_dtype: Any) -> Callable[[Any], Any]:
        """Wrap the loss in DDP (gradients summed in float32) or shard it with FSDP2 (layers, then the root)."""
        import torch

        module = _loss_module(model, loss)
        if not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            with warnings.catch_warnings():
                # torch 2.13 suggests forward_sync_buffers, which still syncs at init; this syncs nothing
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                ddp = DistributedDataParallel(
                    module,
                    device_ids=[torch.cuda.current_device()] if self.device == "cuda" else None,
                    broadcast_buffers=False,  # buffers (rotary tables) are the same on every rank
                )
            # A lambda: DDP checks the hook's annotations against its own classes, and ours are strings here.
            ddp.register_comm_hook(None, lambda state, bucket: _sum_hook(state, bucket))
            wrapped: Callable[[Any], Any] = ddp
        else:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mixed = MixedPrecisionPolicy(
                param_dtype=None if compute_dtype == torch.float32 else compute_dtype, reduce_dtype=torch.float32
            )
            reshard = self.sharding == "zero3"
            for layer in _decoder_layers(model):
                fully_shard(layer, reshard_after_forward=reshard, mp_policy=mixed)
            fully_shard(module, reshard_after_forward=reshard, mp_policy=mixed)
            wrapped = module
        if self.on_engine is not None:
            self.on_engine(
                {
                    "ftkit.distributed": describe(self.sharding, self.world),
                    "ftkit.distributed.engine": "fsdp2" if self.fsdp else "ddp",
                    "ftkit.distributed.sharding": self.sharding,
                    "ftkit.distributed.processes": str(self.world),
                }
            )
        return wrapped

    def sum(self, value: Any) -> Any:
        """All-reduce a copy of ``value``."""
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def agree(self, flag: bool) -> bool:
        """A MAX all-reduce of the flag on the CPU group."""
        import torch
        import torch.distributed as dist

        vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.control)
        return bool(vote.item())

    def plain(self, value: Any) -> Any:
        """The whole tensor of a DTensor."""
        return value.full_tensor() if hasattr(value, "full_tensor") else value

    def gathered(self, named: Mapping[str, Any], optimizer: Any) -> tuple[Mapping[str, Any], Any]:
        """Under FSDP2, whole tensors gathered from the shards (every rank takes part)."""
        if not self.fsdp:
            return named, optimizer  # replicated: rank 0's copy is everyone's
        whole = {k: _full(v) for k, v in named.items()}  # every rank takes part in each gather, in one order
        return whole, _SavedOptimizer(_full_tree(optimizer.state_dict()))

    def loading(self, named: Mapping[str, Any], optimizer: Any) -> tuple[Mapping[str, Any], Any]:
        """Under FSDP2, targets that keep each rank's shard of a whole tensor, for weights and optimizer state."""
        if not self.fsdp:
            return named, optimizer
        optimizer.register_load_state_dict_post_hook(_reshard_state)
        return {k: _ShardTarget(p) for k, p in named.items()}, optimizer

    def final_model(self, model: Any, named: Mapping[str, Any], rebuild: Callable[[], Any]) -> Any:
        """Rank 0's model to save (under FSDP2 an unsharded rebuild with the gathered weights); others ``None``."""
        if not self.fsdp:
            return model if self.main else None
        import torch

        whole = {k: _full(v) for k, v in named.items()}
        if not self.main:
            return None
        # Rank 0 rebuilds the model unsharded on the CPU (its frozen weights from disk) and takes the trained ones.
        fresh = rebuild()
        params = dict(fresh.named_parameters())
        with torch.no_grad():
            for key, value in whole.items():
                params[key].copy_(value.to(params[key].dtype))
        return fresh


# -- the launcher (in the job's worker) --------------------------------------------------------------------


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
    error_file = folder / _RANKS_DIR / f"rank-{rank}.error.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(error_file.read_text(encoding="utf-8"))
        error = f": {data['type']}: {data['message']}"
    logs = sorted((folder / _RANKS_DIR).glob(f"*/attempt_*/{rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    log = logs[-1] if logs else None
    tail = _tail(log) if log is not None else ""
    where = f"\nlast lines of its log ({log}):\n{tail}" if tail else ""
    return RankFailure(f"rank {rank} of {processes} failed ({how}){error}{where}")


def _pump(stream: Any, keep: collections.deque[str]) -> None:
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
    from .training import TrainResult

    folder = Path(folder).absolute()
    _check_devices(config)
    stop = folder / _STOP_FILE
    stop.unlink(missing_ok=True)
    logs = folder / _RANKS_DIR
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    result_file = Path(config.output_dir) / _RESULT_FILE
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


# -- one rank (torchrun runs this module) ------------------------------------------------------------------


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
    """One rank: ``python -m torch.distributed.run ... -m ftkit.backends.local.distributed JOB_DIR TRACKING_URI``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or "RANK" not in os.environ:
        print("usage: torchrun ... -m ftkit.backends.local.distributed JOB_DIR TRACKING_URI", file=sys.stderr)
        return 2
    _die_with_parent()
    import torch
    import torch.distributed as dist

    from . import stop_requests as stops
    from .jobs import JobRecord
    from .tracking import MlflowStore, RunLogger
    from .training import MetricsSink, TrainConfig, train
    from .worker import _ProgressSink

    folder, uri = Path(args[0]), args[1]
    rank = int(os.environ["RANK"])
    config = TrainConfig.from_json((folder / "config.json").read_text(encoding="utf-8"))
    device: Literal["cpu", "cuda"] = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    try:
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        sink: Any = MetricsSink()
        on_engine = None
        if rank == 0:
            record = JobRecord(**json.loads((folder / "job.json").read_text(encoding="utf-8")))
            logger = RunLogger(MlflowStore.at(folder.parent.parent, uri), record.run_id) if record.run_id else None
            sink = _ProgressSink(folder, record, logger)
            on_engine = logger.set_tags if logger is not None else None
        ranks = TorchRanks(config.sharding, device, on_engine)
        stop, gone = folder / _STOP_FILE, _worker_gone(os.environ.get("FTKIT_WORKER_PID"))
        result = train(
            attrs.evolve(config, device=device),
            metrics=sink,
            progress="plain" if rank == 0 else "none",
            # A dead worker is a stop request too: the ranks checkpoint and exit instead of training unwatched.
            # Every rank watches, so that each cuts its own model load short (see .stop_requests; the ranks agree).
            should_stop=stops.watch(lambda: stop.exists() or gone()),
            ranks=ranks,
        )
        if rank == 0:
            data = attrs.asdict(result)
            data["model_dir"] = str(result.model_dir) if result.model_dir else None
            out = Path(config.output_dir) / _RESULT_FILE
            out.with_suffix(".tmp").write_text(json.dumps(data), encoding="utf-8")
            out.with_suffix(".tmp").replace(out)
    except BaseException as exc:
        error = {"type": type(exc).__name__, "message": str(exc)[:1500], "time": time.time()}
        with contextlib.suppress(OSError):
            (folder / _RANKS_DIR / f"rank-{rank}.error.json").write_text(json.dumps(error), encoding="utf-8")
        raise
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
