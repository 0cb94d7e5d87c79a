"""transformers' own continuous batching behind the server's :class:`~.base.Engine` interface.

transformers ships a continuous batcher of its own (``model.init_continuous_batching()``, a
``ContinuousBatchingManager`` over a paged KV cache, with a generation thread). This engine serves a
deployment through it, so that it can be measured through the same HTTP server, clients and settings as ftkit's
own engines (``benchmarks/bench_serve.py --gpu``), and used where a model runs under it but not on ftkit's slot
cache. What stays ftkit's: the queue bound and 503, deadlines and cancellation (a request nobody waits for is
cancelled in the manager), stop strings and streamed text (each job's :class:`~ftkit.serve.contract.stops.RowText`),
and the end-of-row rules of the other engines (:func:`.base.take_token`).

Its limits, which are the manager's: one generation config for every request, so it answers greedily and refuses
a request that asks to sample (``temperature`` > 0 with ``top_p``/``seed``) with a 400 naming the engine; and
the manager sizes its paged cache from the GPU's free memory itself, so such a deployment does not share a GPU.
On the CPU it would size it from the machine's RAM the same way (a 14 GiB server for a tiny model), so there the
cache is bounded by what the deployment can use: ``slots`` requests of the model's whole context
(:func:`cpu_cache_limits`).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from .base import EngineOptions, EngineStart, Job, QueueFull, Unsupported, flush, settle, take_token
from .generation import LoadedModel

__all__ = ["TransformersBatcher", "cpu_cache_limits", "start", "start_manager"]

log = logging.getLogger("ftkit.serve")

_NOT_FOR_CB = "not supported for continuous batching"


# The manager's default page: tokens of KV per block.
_PAGE_SIZE = 256
# Tokens one forward pass may take on the CPU (the attention mask's size grows with it times the cache's).
_CPU_BATCH_TOKENS = 2048


def cpu_cache_limits(slots: int, max_length: int) -> dict[str, int]:
    """The paged cache's bounds on the CPU.

    Room for ``slots`` requests of ``max_length`` tokens, and at most 2048 tokens (or one context) per forward
    pass. Unbounded, the manager takes 90% of the free memory it sees, which on a CPU is the machine's RAM.

    Returns:
        ``num_blocks`` and ``max_batch_tokens`` for transformers' continuous-batching config.
    """
    tokens = max(1, slots) * max(1, max_length)
    return {
        "num_blocks": math.ceil(tokens / _PAGE_SIZE) + 1,
        "max_batch_tokens": min(max(1, max_length), _CPU_BATCH_TOKENS),
    }


def start_manager(model: Any, generation_config: Any, limits: dict[str, int] | None = None) -> Any:
    """Start transformers' continuous-batching manager on ``model``.

    transformers 5.17 wants the attention implementation named ``paged|sdpa`` and later versions switch to a paged
    one themselves (and refuse that name): both are tried, the model's own first. ``limits`` (the cache's
    ``num_blocks`` and ``max_batch_tokens``) go in a ``ContinuousBatchingConfig`` where transformers has one, else
    on the generation config, where earlier versions read them.
    """
    kwargs: dict[str, Any] = {}
    if limits:
        if "continuous_batching_config" in inspect.signature(model.init_continuous_batching).parameters:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig

            kwargs["continuous_batching_config"] = ContinuousBatchingConfig(
                num_blocks=limits["num_blocks"], max_batch_tokens=limits["max_batch_tokens"]
            )
        else:
            for key, value in limits.items():
                setattr(generation_config, key, value)
    tried: list[str] = []
    for attn in (None, "paged|sdpa", "sdpa"):
        if attn is not None:
            model.config._attn_implementation = attn
        try:
            manager = model.init_continuous_batching(generation_config=generation_config, **kwargs)
            manager.start()
            return manager
        except ValueError as exc:
            if _NOT_FOR_CB not in str(exc):
                raise
            tried.append(str(model.config._attn_implementation))
    raise ValueError(f"transformers' continuous batching refused the attention implementations {', '.join(tried)}")


class TransformersBatcher:
    """The queue of one deployment served by transformers' ``ContinuousBatchingManager``.

    Args:
        name: The deployment's name (for the log and request ids).
        model: The loaded model.
        slots: Requests the manager may hold at once (beyond them, requests wait in ``max_queue``).
        max_queue: Requests waiting beyond ``slots`` before :class:`.base.QueueFull`.
    """

    def __init__(self, name: str, model: LoadedModel, *, slots: int, max_queue: int) -> None:
        import transformers
        from transformers import GenerationConfig

        if not hasattr(model.model, "init_continuous_batching"):
            raise ValueError(f"transformers {transformers.__version__} has no continuous batching; upgrade it")
        self.name = name
        self.model = model
        self.max_batch_size = max(1, slots)
        self.max_queue = max(0, max_queue)
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False,
            max_new_tokens=model.max_length,
            eos_token_id=sorted(model.eos_ids) or None,
            pad_token_id=model.pad_id,
        )
        limits = cpu_cache_limits(self.max_batch_size, model.max_length) if model.device.type == "cpu" else None
        self.manager = start_manager(model.model, config, limits)
        self.version = transformers.__version__
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self.generated = 0
        self._thread = threading.Thread(target=self._run, name=f"hf-engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs (all or none).

        Raises:
            Unsupported: A job asks to sample (the manager has one greedy generation config).
            QueueFull: Queuing them would pass ``slots + max_queue`` (or the deployment is being removed).
        """
        for job in jobs:
            if job.params.do_sample:
                raise Unsupported(
                    "temperature",
                    "engine 'transformers' answers greedily (one generation config for every request): "
                    "send temperature 0, or serve with engine 'auto' or 'continuous'",
                )
        with self._lock:
            if self._closed or len(self._jobs) + len(jobs) > self.max_batch_size + self.max_queue:
                raise QueueFull(self.name)
            ids = [f"{self.name}-{next(self._ids)}" for _ in jobs]
            self._jobs.update(zip(ids, jobs, strict=True))
        for request_id, job in zip(ids, jobs, strict=True):
            self.manager.add_request(
                list(job.prompt), request_id=request_id, max_new_tokens=job.params.max_new_tokens, streaming=True
            )

    @property
    def queued(self) -> int:
        """Jobs beyond the manager's slots now."""
        return max(0, len(self._jobs) - self.max_batch_size)

    @property
    def running(self) -> int:
        """Jobs the manager holds now."""
        return min(len(self._jobs), self.max_batch_size)

    def close(self) -> None:
        """Stop taking jobs, fail those in flight and stop the manager's thread."""
        with self._lock:
            self._closed = True
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.post("error", "the deployment was removed")

    @property
    def cache_bytes(self) -> int:
        """None of ftkit's: the manager sizes its paged cache itself, from the memory it finds free."""
        return 0

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader thread (after :meth:`close`)."""
        self._thread.join(timeout)

    def _run(self) -> None:
        checked = time.monotonic()
        try:
            while not self._closed:
                events: list[tuple[Job, str, object]] = []
                result = self.manager.get_result(timeout=0.02)
                while result is not None:  # everything the manager has produced, then one wake-up per loop
                    self._take(result, events)
                    result = self.manager.get_result(timeout=0)
                if time.monotonic() - checked > 0.02:
                    self._drop_abandoned(events)
                    checked = time.monotonic()
                flush(events)
        except Exception:
            log.exception("deployment %s: transformers' continuous batching failed", self.name)
            self.close()
        finally:
            with contextlib.suppress(Exception):
                self.manager.stop(block=True, timeout=30)

    def _end(
        self, request_id: str, job: Job, reason: str, events: list[tuple[Job, str, object]], *, live: bool
    ) -> None:
        with self._lock:
            self._jobs.pop(request_id, None)
        if live:  # the manager is still generating it: free its cache blocks now
            self.manager.cancel_request(request_id)
        settle(self.name, job, reason, events)

    def _take(self, result: Any, events: list[tuple[Job, str, object]]) -> None:
        request_id = result.request_id
        job = self._jobs.get(request_id)
        if job is None:  # ended (stop string, cancelled) while the manager still had tokens of it queued
            return
        finished = result.is_finished() if hasattr(result, "is_finished") else str(result.status).endswith("FINISHED")
        if getattr(result, "error", None):
            with self._lock:
                self._jobs.pop(request_id, None)
            events.append((job, "error", f"generation failed: {result.error}"))
            return
        # Streamed results carry every token generated so far: the new ones are those past what the job holds.
        for token in list(result.generated_tokens)[len(job.tokens) :]:
            if token not in self.model.eos_ids:
                self.generated += 1
            reason = take_token(job, int(token), self.model.eos_ids, events)
            if reason is not None:
                self._end(request_id, job, reason, events, live=not finished)
                return
        if finished:
            self._end(request_id, job, "length", events, live=False)

    def _drop_abandoned(self, events: list[tuple[Job, str, object]]) -> None:
        now = time.monotonic()
        for request_id, job in list(self._jobs.items()):
            if job.cancelled or now >= job.deadline:
                self._end(request_id, job, "cancelled", events, live=True)

    def describe(self) -> dict[str, Any]:
        """What the engine holds, for logs and ``endpoint list``."""
        return {"engine": "transformers", "slots": self.max_batch_size, "transformers": self.version}


def start(name: str, model: LoadedModel, options: EngineOptions) -> TransformersBatcher:
    """Start transformers' continuous batching (the ``transformers`` entry of :mod:`.registry`).

    An asked ``max_context`` bounds the answers' context (the manager plans no slots of ftkit's).
    """
    if options.settings.max_context > 0:
        model.max_length = min(model.max_length, options.settings.max_context)
    return TransformersBatcher(name, model, slots=options.slots, max_queue=options.max_queue)


# Checked by mypy: the engine meets the Engine Protocol through its start function.
_checked: EngineStart = start
