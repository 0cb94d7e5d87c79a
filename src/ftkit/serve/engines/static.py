"""Dynamic batching: one queue and one worker thread per deployment.

Requests are queued as :class:`~.base.Job` values (one per conversation). The worker takes whatever is waiting, up
to ``max_batch_size``, after a short window that lets requests arriving together meet, and generates them
as one left-padded batch; so throughput grows with concurrency instead of each request waiting for the one
before it. The queue is bounded: past ``max_queue`` waiting jobs, :meth:`Batcher.submit` raises
:class:`~.base.QueueFull` and the server answers 503 with ``Retry-After``.

The worker talks to the asyncio side only through ``loop.call_soon_threadsafe``: text for streaming jobs,
one ``done`` (or ``error``) event for every job. Each job's :class:`~.stops.RowText` turns its tokens into text
in the worker (cut at a stop string, which ends the row with finish reason ``stop``), so the event loop never
decodes. A failure in generation fails that batch's jobs and the
worker carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .base import EngineOptions, EngineStart, Job, JobQueue
from .generation import LoadedModel

__all__ = ["Batcher", "start"]

log = logging.getLogger("ftkit.serve")


class Batcher(JobQueue):
    """The queue and worker thread of one deployment.

    Args:
        name: The deployment's name (for the log).
        model: The loaded model.
        max_batch_size: Most jobs generated together (1: one request at a time).
        window_s: How long the worker waits for more jobs once one arrives.
        max_queue: Most jobs waiting (beyond the batch being generated) before :class:`~.base.QueueFull`.
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

    @property
    def cache_bytes(self) -> int:
        """None held: each batch's KV cache lives only while it is generated."""
        return 0

    def describe(self) -> dict[str, Any]:
        """What the engine holds, for logs and ``endpoint list``."""
        return {"engine": "static", "slots": self.max_batch_size, "window_s": self.window_s}


def start(name: str, model: LoadedModel, options: EngineOptions) -> Batcher:
    """Start the static batcher of a deployment (the ``static`` entry of :mod:`.registry`)."""
    return Batcher(name, model, max_batch_size=options.slots, window_s=options.window_s, max_queue=options.max_queue)


# Checked by mypy: the engine meets the Engine Protocol through its start function.
_checked: EngineStart = start
