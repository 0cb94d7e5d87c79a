"""The rank hooks: where :func:`~ftkit.backends.local.training.train` on several processes differs from one.

A job whose config asks for ``processes > 1`` is trained by that many ranks that ``torch.distributed.run``
(torchrun) starts (:mod:`ftkit.backends.local.launcher` on the parent side, :mod:`ftkit.backends.local.rank_worker`
in each rank). Each rank runs the same :func:`~ftkit.backends.local.training.train` as one process, with a
:class:`TorchRanks` as its ``ranks`` hooks (:class:`Ranks`, the base, is one process):

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
  of the model load, which each rank cuts short on its own: see :mod:`.stopping`), so no rank waits for another.

The sharding policy (:func:`sharding_for`, :func:`describe`) lives here too: the backend maps a job's
``apply_deepspeed`` / ``deepspeed_stage`` through it.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import numpy as np

from ....exceptions import Problem, ValidationError

if TYPE_CHECKING:
    from ..data import EncodedSet

__all__ = [
    "SHARDINGS",
    "Ranks",
    "StepShare",
    "TorchRanks",
    "describe",
    "example_labels",
    "partition",
    "sharding_for",
]

SHARDINGS = ("ddp", "zero2", "zero3")
"""``ddp``: weights replicated; ``zero2``: FSDP2 sharding gradients and optimizer state; ``zero3``: weights too."""


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


Split = Callable[[np.ndarray, Sequence[int], int], list[list[int]]]
"""Cuts a share of a step (example indices) into micro-batches of at most a token budget (``budget.split``)."""

B = TypeVar("B")


class Ranks:
    """The hooks :func:`~ftkit.backends.local.training.train` calls where several processes differ from one.

    This base class is one process: every hook is the identity. :class:`TorchRanks` is the distributed one.
    """

    world = 1
    rank = 0
    main = True
    separate_gradients = False
    """Whether gradients must move out of the model after every backward pass (DDP reduces what is there)."""
    fsdp = False
    """Whether FSDP2 shards the weights (then no rank holds a whole bf16 copy of them, see :mod:`.cpu_bf16`)."""

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

    def eval_share(self, batches: Sequence[B]) -> list[tuple[B, float]]:
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

    state: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
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
