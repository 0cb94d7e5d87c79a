"""Dynamic batching: one queue and one worker thread per deployment.

Requests are queued as :class:`Job` values (one per conversation). The worker takes whatever is waiting, up
to ``max_batch_size``, after a short window that lets requests arriving together meet, and generates them
as one left-padded batch; so throughput grows with concurrency instead of each request waiting for the one
before it. The queue is bounded: past ``max_queue`` waiting jobs, :meth:`Batcher.submit` raises
:class:`QueueFull` and the server answers 503 with ``Retry-After``.

The worker talks to the asyncio side only through ``loop.call_soon_threadsafe``: text for streaming jobs,
one ``done`` (or ``error``) event for every job. Each job's :class:`~.stops.RowText` turns its tokens into text
in the worker (cut at a stop string, which ends the row with finish reason ``stop``), so the event loop never
decodes. A failure in generation fails that batch's jobs and the
worker carries on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import attrs

from ..contract.requests import GenParams
from ..contract.stops import RowText
from .generation import LoadedModel

__all__ = ["Batcher", "Job", "JobQueue", "QueueFull", "Unsupported"]

log = logging.getLogger("ftkit.serve")


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


class Batcher(JobQueue):
    """The queue and worker thread of one deployment.

    Args:
        name: The deployment's name (for the log).
        model: The loaded model.
        max_batch_size: Most jobs generated together (1: one request at a time).
        window_s: How long the worker waits for more jobs once one arrives.
        max_queue: Most jobs waiting (beyond the batch being generated) before :class:`QueueFull`.
    """

    def __init__(self, name: str, model: LoadedModel, *, max_batch_size: int, window_s: float, max_queue: int) -> None:
        super().__init__(name, max_queue)
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.window_s = max(0.0, window_s)
        self.batches = 0
        self.generated = 0
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if len(self._pending) < self.max_batch_size and self.window_s:
                # Let requests that arrive together meet; stop waiting as soon as the batch is full.
                end = time.monotonic() + self.window_s
                while len(self._pending) < self.max_batch_size and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            batch: list[Job] = []
            while self._pending and len(batch) < self.max_batch_size:
                job = self._pending.popleft()
                if job.alive:
                    batch.append(job)
                else:
                    job.post("done", "cancelled")
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._generate(batch)

    def _generate(self, batch: list[Job]) -> None:
        def emit(row: int, token: int) -> bool:
            job = batch[row]
            job.tokens.append(token)
            if not job.text.update(job.tokens):
                return False  # a stop string: finish reason "stop" below
            if job.stream and (piece := job.text.delta()):
                job.post("text", piece)
            return job.alive

        started = time.monotonic()
        try:
            reasons = self.model.generate([j.prompt for j in batch], [j.params for j in batch], emit)
        except Exception as exc:
            log.exception("deployment %s: generation failed for a batch of %d", self.name, len(batch))
            for job in batch:
                job.post("error", f"generation failed: {type(exc).__name__}")
            return
        self.batches += 1
        self.generated += sum(len(j.tokens) for j in batch)
        for job, reason in zip(batch, reasons, strict=True):
            try:
                rest = job.text.finish(job.tokens)
            except Exception as exc:  # a detokenizer failure fails this job, not the worker
                log.exception("deployment %s: decoding failed", self.name)
                job.post("error", f"decoding failed: {type(exc).__name__}")
                continue
            if job.stream and rest:
                job.post("text", rest)
            job.post("done", "stop" if job.text.stopped else reason)
        log.debug(
            "deployment %s: batch of %d, %d tokens in %.3fs",
            self.name,
            len(batch),
            sum(len(j.tokens) for j in batch),
            time.monotonic() - started,
        )
