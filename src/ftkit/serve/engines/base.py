"""What every engine shares: the :class:`Engine` Protocol, the jobs it takes and the events it posts back.

An engine turns queued :class:`Job` values (one conversation each, made by a request handler on the event loop)
into tokens, in threads of its own, and posts each job's events back to the handler's loop: ``("text", piece)``
while streaming, then one ``("done", reason)`` or ``("error", message)``. The three engines (``static``,
``continuous``, ``transformers``; see :mod:`.registry`) end rows by the same rules (:func:`take_token`), settle
their text the same way (:func:`settle`) and hand a step's events over in one wake-up per loop (:func:`flush`).
The HTTP side only sees :class:`Engine`: it submits, reads ``queued``/``max_queue`` for the 503 and closes.

Nothing here imports torch: the request side and the engines' bookkeeping are plain Python.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ..contract.requests import GenParams
from ..contract.stops import RowText
from .registry import ENGINES

if TYPE_CHECKING:
    from ...deployment_settings import ServerSettings
    from .generation import LoadedModel

__all__ = [
    "Engine",
    "EngineOptions",
    "EngineStart",
    "Job",
    "JobQueue",
    "QueueFull",
    "Unsupported",
    "engine_start",
    "flush",
    "settle",
    "take_token",
]

log = logging.getLogger("ftkit.serve")


class Engine(Protocol):
    """What the server needs of an engine serving one deployment.

    Attributes:
        name: The deployment's name.
        max_batch_size: Conversations generated together (the static batch size, the continuous slots).
        max_queue: Jobs that may wait beyond those before :meth:`submit` raises :class:`QueueFull`.
        generated: Tokens generated so far (for logs and benchmarks).
    """

    name: str
    max_batch_size: int
    max_queue: int
    generated: int

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs (all or none).

        Raises:
            QueueFull: Queuing them would pass the bound (or the deployment is being removed): a 503.
            Unsupported: A job asks for what this engine cannot do: a 400 naming the field.
        """
        ...

    @property
    def queued(self) -> int:
        """Jobs waiting now."""
        ...

    @property
    def cache_bytes(self) -> int:
        """Bytes of KV cache the engine holds for the deployment's life (0: none of ftkit's, or per batch)."""
        ...

    def close(self) -> None:
        """Stop taking jobs, fail those waiting or running; the worker exits soon after."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the engine holds, for the server's log (its name under ``engine``)."""
        ...


@attrs.frozen(kw_only=True)
class EngineOptions:
    """How to start an engine for one deployment (placement decides them; see :mod:`ftkit.serve.placement`).

    Attributes:
        slots: Conversations generated together.
        max_queue: Jobs waiting beyond those before :class:`QueueFull`.
        window_s: How long a batching engine waits for more jobs once one arrives.
        settings: The endpoint's server settings (``prefill_tokens``, ``cuda_graphs``, ``max_context``...).
        context: Most positions of one request, planned for the GPU (``None``: no plan, the engine's own default).
        kv_blocks: Blocks of a paged KV cache planned for the GPU (``None``: no plan; the continuous engine then
            gives every slot room for a whole context).
    """

    slots: int
    max_queue: int
    window_s: float
    settings: ServerSettings
    context: int | None = None
    kv_blocks: int | None = None


class EngineStart(Protocol):
    """An engine's start function (what :mod:`.registry` names): start the engine over a loaded model.

    It may shorten ``model.max_length`` (the context a prompt must fit, checked with a 400 at encode time).
    """

    def __call__(self, name: str, model: LoadedModel, options: EngineOptions) -> Engine:
        """Start the engine of deployment ``name``."""
        ...


def engine_start(engine: str) -> EngineStart:
    """The start function of a registered engine (imports its module: torch and all).

    Raises:
        ValueError: ``engine`` is not in :data:`.registry.ENGINES`.
    """
    if engine not in ENGINES:
        raise ValueError(f"{engine!r} is not an engine; engines: {', '.join(ENGINES)}")
    start: EngineStart = importlib.import_module(ENGINES[engine]).start
    return start


class QueueFull(Exception):
    """The deployment's queue is full."""


class Unsupported(ValueError):
    """A request asks for something the deployment's engine cannot do (answered with a 400).

    Args:
        param: The request field at fault.
        message: What is wrong and what to do instead.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@attrs.define(eq=False)
class Job:
    """One conversation to answer, between a request handler and the worker.

    Attributes:
        prompt: The prompt's token ids.
        params: Generation parameters.
        loop: The handler's event loop.
        events: Where the worker posts ``("text", piece)`` (streaming only), ``("done", reason)`` or
            ``("error", msg)``.
        deadline: ``time.monotonic()`` after which the job is dropped.
        text: The answer's text (final once ``done`` is posted); made by the handler with the model's decoder.
        stream: Whether to post text as it is generated.
        tokens: The generated token ids (complete once ``done`` is posted).
        cancelled: Set by the handler when nobody waits for the answer any more.
        arrived: ``time.monotonic()`` when the job was made (the continuous engine's gathering reads it).
    """

    prompt: Sequence[int]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, object]]
    deadline: float
    text: RowText
    stream: bool = False
    tokens: list[int] = attrs.field(factory=list)
    cancelled: bool = False
    arrived: float = attrs.field(factory=time.monotonic)

    def post(self, kind: str, value: object) -> None:
        """Post an event to the handler (thread-safe; a closed loop is ignored)."""
        # A closed loop (RuntimeError) means the server is shutting down: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    @property
    def alive(self) -> bool:
        """Whether someone still waits for this job."""
        return not self.cancelled and time.monotonic() < self.deadline


class JobQueue:
    """The bounded queue in front of a deployment's worker thread (the engines' shared request side).

    Args:
        name: The deployment's name (for the log and :class:`QueueFull`).
        max_queue: Most jobs waiting before :class:`QueueFull`.
    """

    def __init__(self, name: str, max_queue: int) -> None:
        self.name = name
        self.max_queue = max(0, max_queue)
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs (all or none).

        Raises:
            QueueFull: Queuing them would pass ``max_queue`` (or the deployment is being removed).
        """
        with self._cond:
            if self._closed or len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(self.name)
            self._pending.extend(jobs)
            self._cond.notify()

    @property
    def queued(self) -> int:
        """Jobs waiting now."""
        return len(self._pending)

    def close(self) -> None:
        """Stop taking jobs and fail those waiting; the worker exits after its current batch or step.

        The continuous engine also fails the rows it was decoding.
        """
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            job.post("error", "the deployment was removed")


def _deliver(events: list[tuple[Job, str, object]]) -> None:
    """Strictly private: runs on the event loop; hands a step's events to their handlers."""
    for job, kind, value in events:
        job.events.put_nowait((kind, value))


def flush(events: list[tuple[Job, str, object]]) -> None:
    """Hand a step's events to their handlers' event loops: one wake-up per loop, not one per token."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, str, object]]] = {}
    for event in events:
        by_loop.setdefault(event[0].loop, []).append(event)
    for loop, batch in by_loop.items():
        # A closed loop (RuntimeError) means the server is shutting down: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver, batch)


def take_token(job: Job, token: int, eos_ids: frozenset[int], events: list[tuple[Job, str, object]]) -> str | None:
    """Take a job's new token by the static path's rules (:meth:`.LoadedModel.generate`); say why it ends, if it does.

    An end-of-sequence token ends it (``stop``, not emitted), so does a stop string (``stop``, the text cut
    before it), its ``max_new_tokens`` (``length``) or nobody waiting any more (``cancelled``). Streamed text is
    appended to ``events``.
    """
    if token in eos_ids:
        return "stop"
    job.tokens.append(token)
    if not job.text.update(job.tokens):
        return "stop"  # a stop string: the text is cut before it
    if job.stream and (piece := job.text.delta()):
        events.append((job, "text", piece))
    if not job.alive:
        return "cancelled"
    if len(job.tokens) >= job.params.max_new_tokens:
        return "length"
    return None


def settle(name: str, job: Job, reason: str, events: list[tuple[Job, str, object]]) -> None:
    """Settle an ended job's text: send what streaming held back, then ``done`` (or the detokenizer's error)."""
    try:
        rest = job.text.finish(job.tokens)
    except Exception as exc:  # a detokenizer failure fails this job, not the worker
        log.exception("deployment %s: decoding failed", name)
        events.append((job, "error", f"decoding failed: {type(exc).__name__}"))
        return
    if job.stream and rest:
        events.append((job, "text", rest))
    events.append((job, "done", "stop" if job.text.stopped else reason))
