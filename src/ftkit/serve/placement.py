"""Where a deployment runs and what serves it: device, dtype, engine and KV-cache size (server side: torch).

``device`` (a deployment's ``deploy.device``): ``auto`` takes the CUDA GPU with the most free memory when
there is one, else the CPU; ``cpu``; ``cuda`` (GPU 0) or ``cuda:N``. On the CPU a deployment runs exactly
as before: float32, the static batcher (:mod:`.engines.static`). On a GPU it runs in bfloat16 and, for
the Llama-family models :mod:`.engines.continuous.slots` implements, on the continuous batcher
(:mod:`.engines.continuous`) with ``max_batch_size`` rows decoding together over a paged KV cache
(:mod:`.engines.continuous.blocks`). Engine ``auto`` is this choice; any other registered engine
(:mod:`.engines.registry`) is started by name, through the :class:`~.engines.base.Engine` seam.

Memory is planned before anything is allocated: weights (counted on the meta device), the KV cache and a
working reserve must fit in the GPU's free memory, or the deployment fails at create time with the numbers,
rather than running out of memory under load. Each request may use the model's whole context (or an explicit
``max_context``); the KV cache is a pool of blocks of :data:`.slots.BLOCK_SIZE` positions that takes what is left
of ``gpu_memory_fraction`` of the GPU (never more than every row at a whole context needs), so the rows in
flight share it by their real lengths; it must hold at least one whole context. Several deployments share a GPU
when their plans fit together.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import attrs
import torch

from ..deployment_settings import DEVICE_CHOICES, ServerSettings
from .engines.base import Engine, EngineOptions, engine_start
from .engines.continuous.blocks import blocks_for
from .engines.continuous.slots import BLOCK_SIZE, kv_bytes_per_token, supports_config
from .engines.generation import LoadedModel
from .records import DeploymentRecord

__all__ = ["KVPlan", "Placement", "load_deployment", "plan_kv", "planned_context", "resolve_device"]

DEVICES = DEVICE_CHOICES

GIB = 2**30


@attrs.frozen
class Placement:
    """Where a deployment runs and what it holds.

    Attributes:
        device: ``cpu`` or ``cuda:N``.
        dtype: The weights' type (``float32``, ``bfloat16``).
        engine: ``static``, ``continuous`` or ``transformers``.
        weights_gib: The weights.
        kv_cache_gib: The KV cache (continuous engine; 0 for static, whose cache grows per batch).
        slots: Rows decoding together.
        context: Most positions of one request (prompt plus answer).
        why_static: Why a GPU deployment fell back to the static batcher (``None`` otherwise).
        kv_blocks: Blocks of the continuous engine's paged KV cache (0 for the other engines).
        block_size: Positions per block.
        kv_tokens: Positions the whole KV cache holds (``kv_blocks x block_size``), shared by the rows in flight.
    """

    device: str
    dtype: str
    engine: str
    weights_gib: float
    kv_cache_gib: float
    slots: int
    context: int
    why_static: str | None = None
    kv_blocks: int = 0
    block_size: int = 0
    kv_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return attrs.asdict(self)


def resolve_device(wanted: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a device.

    Raises:
        ValueError: An unknown value, CUDA asked for without a GPU, or a GPU index past the last one.
    """
    value = (wanted or "auto").strip().lower()
    if value == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value == "auto":
        if not count:
            return torch.device("cpu")
        free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
        return torch.device("cuda", max(range(count), key=lambda i: free[i]))
    if value == "cuda" or value.startswith("cuda:"):
        index_text = value.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ValueError(f"deploy.device: {wanted!r} is not a GPU index; use {DEVICES}")
        if not count:
            raise ValueError(f"deploy.device: {wanted!r} asks for a GPU but torch sees none; use cpu or auto")
        index = int(index_text)
        if index >= count:
            raise ValueError(f"deploy.device: GPU {index} does not exist; this machine has GPUs 0 to {count - 1}")
        return torch.device("cuda", index)
    raise ValueError(f"deploy.device: {wanted!r} is not a device; use {DEVICES}")


def _weight_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes the model's parameters take in ``dtype`` (counted on the meta device: nothing is loaded)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    size = torch.empty((), dtype=dtype).element_size()
    return int(sum(p.numel() for p in model.parameters())) * size


def _reserve_bytes(config: Any, slots: int, prefill_tokens: int, dtype: torch.dtype) -> int:
    """Working memory beyond weights and cache: one prefill's activations, the logits, graphs, allocator slack.

    ``prefill_tokens`` is the most positions one prefill computes: the engine's budget, or a whole context where
    that is longer (a prompt longer than the budget is still prefilled, alone).
    """
    size = torch.empty((), dtype=dtype).element_size()
    hidden, inter = int(config.hidden_size), int(getattr(config, "intermediate_size", 4 * config.hidden_size))
    vocab = int(config.vocab_size)
    prefill = prefill_tokens * (3 * inter + 8 * hidden) * size
    logits = 4 * slots * vocab * 4  # float32 copies for sampling
    return GIB + prefill + logits


@attrs.frozen
class KVPlan:
    """The continuous engine's KV cache on a GPU.

    Attributes:
        context: Most positions of one request (prompt plus answer).
        blocks: Blocks in the pool.
        block_size: Positions per block.
    """

    context: int
    blocks: int
    block_size: int

    @property
    def tokens(self) -> int:
        """Positions the pool holds, shared by the rows in flight."""
        return self.blocks * self.block_size


def planned_context(model_context: int, asked: int) -> int:
    """Most positions of one request: an explicit ``max_context`` (0: none) within the model's own."""
    return min(model_context, asked) if asked > 0 else model_context


def plan_kv(
    *,
    device: str,
    free: int,
    total: int,
    weights: int,
    reserve: int,
    slots: int,
    per_token: int,
    model_context: int,
    asked: int = 0,
    fraction: float = 0.9,
    block_size: int = BLOCK_SIZE,
) -> KVPlan:
    """The paged KV cache of a continuous deployment on a GPU, or a clear error when it does not fit.

    Args:
        device: The GPU (for the message).
        free: Its free bytes now.
        total: Its size in bytes.
        weights: Bytes of the weights.
        reserve: Bytes of working memory.
        slots: Rows decoding together.
        per_token: Bytes of KV cache per position.
        model_context: The model's own context.
        asked: An explicit ``max_context`` (0: none).
        fraction: The share of the whole GPU this deployment may plan for (less what others hold).
        block_size: Positions per block.

    Returns:
        The context (``asked`` or the model's) and as many blocks as fit, at most enough for every row to hold a
        whole context.

    Raises:
        ValueError: Not even one whole context fits, with the numbers and what to change.
    """
    context = planned_context(model_context, asked)
    # What this deployment may take: the free memory it found, at most its share of the whole GPU.
    allowed = min(free, int(total * fraction) - (total - free))
    room = allowed - weights - reserve
    per_block = per_token * block_size
    one = blocks_for(context, block_size)
    fits = max(0, room) // per_block
    if fits >= one:
        return KVPlan(context=context, blocks=int(min(fits, slots * one)), block_size=block_size)
    raise ValueError(
        f"the deployment does not fit on {device}: one request of {context} tokens needs {one} KV blocks of "
        f"{block_size} tokens ({one * per_block / GIB:.2f} GiB), and after {weights / GIB:.1f} GiB of weights and "
        f"{reserve / GIB:.1f} GiB of working memory there is room for {fits} ({max(0, allowed) / GIB:.1f} GiB may be "
        f"used: {free / GIB:.1f} GiB free of {total / GIB:.1f}); lower max_context, or choose another GPU"
    )


def load_deployment(
    name: str, record: DeploymentRecord, *, max_batch_size: int, window_s: float, settings: ServerSettings
) -> tuple[LoadedModel, Engine, Placement]:
    """Load a deployment's model where its record says and start the engine that serves it.

    Args:
        name: The deployment's name.
        record: Its record in ``endpoint.json`` (model path, engine and :class:`~ftkit.DeploymentSettings`).
        max_batch_size: The endpoint's batch size (slots on the continuous engine) unless the deployment sets one.
        window_s: The static batcher's gathering window.
        settings: The endpoint's server settings (``max_context``, ``prefill_tokens``,
            ``gpu_memory_fraction_pct``, ``cuda_graphs``).

    Raises:
        ValueError: A bad device, or a plan that does not fit on the GPU (with the numbers).
    """
    path = Path(record.model_path)
    device = resolve_device(record.settings.device)
    engine = record.engine
    options = EngineOptions(
        slots=max(1, record.settings.max_batch_size or max_batch_size),
        max_queue=record.settings.max_queue,
        window_s=window_s,
        settings=settings,
    )
    if engine not in ("auto", "static", "continuous"):
        # An engine that plans its memory itself (transformers' manager): the model where asked, nothing planned.
        return _start(name, engine, LoadedModel(path, device), options)
    if device.type == "cpu":
        return _start(name, "continuous" if engine == "continuous" else "static", LoadedModel(path, device), options)

    from transformers import AutoConfig

    dtype = torch.bfloat16
    config = AutoConfig.from_pretrained(path)
    weights = _weight_bytes(config, dtype)
    # A deployment removed or replaced in this process leaves its memory in torch's cache: give it back first,
    # so that the plan below counts it as free.
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    if weights + GIB > free:
        raise ValueError(
            f"the model does not fit on {device}: its weights take {weights / GIB:.1f} GiB and "
            f"{free / GIB:.1f} GiB of {total / GIB:.1f} GiB are free; choose another device or deploy.device: cpu"
        )
    why = supports_config(config) if engine != "static" else "engine: static"
    if why is not None:
        if engine == "continuous":
            raise ValueError(f"engine: continuous cannot serve this model: {why}")
        return _start(name, "static", LoadedModel(path, device, dtype), options, why_static=why)
    # The whole plan is checked before the weights are loaded: a deployment that does not fit allocates nothing.
    context = planned_context(_model_context(config), settings.max_context)
    plan = plan_kv(
        device=str(device),
        free=free,
        total=total,
        weights=weights,
        reserve=_reserve_bytes(config, options.slots, max(settings.prefill_tokens, context), dtype),
        slots=options.slots,
        per_token=kv_bytes_per_token(config, dtype),
        model_context=_model_context(config),
        asked=settings.max_context,
        fraction=settings.gpu_memory_fraction_pct / 100,
    )
    model = LoadedModel(path, device, dtype)
    return _start(name, "continuous", model, attrs.evolve(options, context=plan.context, kv_blocks=plan.blocks))


def _start(
    name: str, engine: str, model: LoadedModel, options: EngineOptions, *, why_static: str | None = None
) -> tuple[LoadedModel, Engine, Placement]:
    """Start a registered engine over a loaded model; its placement reads what the engine holds."""
    worker = engine_start(engine)(name, model, options)
    # The engine may have shortened the context (an asked max_context).
    placement = _placement(
        model, engine, options.slots, model.max_length, kv_bytes=worker.cache_bytes, why_static=why_static
    )
    # A paged KV cache (the continuous engine's) reports its blocks in what the engine describes.
    held = worker.describe()
    blocks, size = int(held.get("kv_blocks", 0)), int(held.get("block_size", 0))
    if blocks:
        placement = attrs.evolve(placement, kv_blocks=blocks, block_size=size, kv_tokens=blocks * size)
    return model, worker, placement


def _model_context(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


def _placement(
    model: LoadedModel, engine: str, slots: int, context: int, *, kv_bytes: int = 0, why_static: str | None = None
) -> Placement:
    """Where a loaded model runs and what it holds (its weights as loaded, LoRA merged)."""
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    return Placement(
        device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
        engine=engine,
        weights_gib=round(weights / GIB, 3),
        kv_cache_gib=round(kv_bytes / GIB, 3),
        slots=slots,
        context=context,
        why_static=why_static,
    )
