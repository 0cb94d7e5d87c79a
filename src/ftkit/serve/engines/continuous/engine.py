"""In-flight (continuous) batching: requests join and leave the running decode batch at every step.

:class:`ContinuousBatcher` is a drop-in for :class:`..static.Batcher` (same :class:`..base.Job` values,
``submit``/``close``/``queued``, the same bounded queue and 503): one worker thread per deployment runs a loop
of steps over a :class:`.slots.SlotDecoder`. Each step

1. drops finished, cancelled (client gone) and expired jobs and frees their slots at once;
2. admits waiting jobs into free slots, at most ``prefill_tokens`` prompt tokens per step (always one), and
   prefills them, which yields their first token; so a burst of long prompts delays the running rows' next
   token by one bounded prefill, not by the whole burst;
3. decodes one token for every running row (a CUDA graph replay on the GPU), picks each row's next token by
   its own sampling parameters, and reads the chosen ids back: the one host round trip per step.

On a GPU the steps overlap: as soon as step *N*'s ids are on the host, step *N + 1* is launched (its input ids
are already on the device), and the host turns step *N*'s ids into text, events and finished rows while the GPU
computes. A row that ends at step *N* has then been decoded once more in step *N + 1*; that result is dropped,
and its slot is free for the next prefill (whose writes follow on the same stream). On the CPU, where the step
is the host's own work, steps run one after the other as before.

Each job's :class:`~.stops.RowText` turns its tokens into text in the worker, as in the static path: streamed
text goes to the asyncio side in one ``call_soon_threadsafe`` per step (not one per token), which keeps the event
loop's wake-ups at the step rate whatever the batch size. Rows end exactly as in the static path: at an
end-of-sequence token (``stop``, not emitted), at a stop string (``stop``, the text cut before it), at their
``max_new_tokens`` (``length``) or when nobody waits any more (``cancelled``). A seeded row samples from its own
generator, held by its slot, so its answer does not depend on the other rows.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from ..base import Job, JobQueue, flush, settle, take_token
from ..generation import LoadedModel, choose_tokens, seeded_generator
from .slots import SlotDecoder

__all__ = ["ContinuousBatcher"]

log = logging.getLogger("ftkit.serve")


@attrs.define(eq=False)
class _Row:
    """Strictly private: a job while it holds a slot."""

    job: Job
    slot: int
    length: int  # positions of the slot's cache written or being written by launched steps


@attrs.define(eq=False)
class _Launch:
    """Strictly private: a decode step on its way: the rows it decodes, and where its chosen ids land."""

    rows: list[tuple[int, _Row]]
    count: int  # rows of the step (the highest slot + 1)
    chosen: torch.Tensor
    done: Any  # a CUDA event after the ids' copy to the host, or None on the CPU


class ContinuousBatcher(JobQueue):
    """The slot scheduler and worker thread of one deployment.

    Args:
        name: The deployment's name (for the log).
        model: The loaded model (its tokenizer, end-of-sequence ids and device).
        decoder: The model on a slot cache; its slot count is the most rows decoding together.
        max_queue: Most jobs waiting for a slot before :class:`..base.QueueFull`.
        prefill_tokens: Prompt tokens admitted per step (at least one prompt is, however long).
        gather_s: How long a waiting job may wait for others to share its prefill when every slot is decoding;
            with fewer rows decoding the wait is shorter, in proportion (none when no row is).
        overlap: Launch each step before handling the last one's tokens (by default on a GPU only, where the
            step runs asynchronously; on the CPU it would only delay every token by a step).
    """

    def __init__(
        self,
        name: str,
        model: LoadedModel,
        decoder: SlotDecoder,
        *,
        max_queue: int,
        prefill_tokens: int = 8192,
        gather_s: float = 0.1,
        overlap: bool | None = None,
    ) -> None:
        super().__init__(name, max_queue)
        self.model = model
        self.decoder = decoder
        self.max_batch_size = decoder.slots
        self.prefill_tokens = max(1, prefill_tokens)
        self.gather_s = max(0.0, gather_s)
        # A prefill costs a launch chain and a stall of every decoding row whatever its size: while rows decode,
        # one is run for a few prompts at once, not for every prompt that arrives alone. The oldest waits at most
        # gather_s scaled by the share of slots decoding: what a prefill stalls grows with the rows it stalls,
        # while a prompt that waits idles one slot (measured on an H200 at 256 streams: prefills of 2 prompts
        # cost 4.4 ms a prompt, of 8 prompts 3.9, plus a host round trip each).
        self._gather = max(1, decoder.slots // 32)
        self._free = list(range(decoder.slots))  # a heap: the lowest slot first keeps the decoded rows few
        self._rows: dict[int, _Row] = {}
        self._generators: list[torch.Generator | None] = [None] * decoder.slots
        self.steps = 0
        self.generated = 0
        device = decoder.device
        self._pinned = device.type == "cuda"
        self._temps = torch.ones(decoder.slots, dtype=torch.float32, device=device)
        self._top_ps = torch.ones(decoder.slots, dtype=torch.float32, device=device)
        self._sample = torch.zeros(decoder.slots, dtype=torch.bool, device=device)
        self._host_positions = torch.zeros(decoder.slots, dtype=torch.long, pin_memory=self._pinned)
        self._host_tokens = torch.zeros(decoder.slots, dtype=torch.long, pin_memory=self._pinned)
        self._host_first = torch.zeros(decoder.slots, dtype=torch.long, pin_memory=self._pinned)  # prefill's ids
        self._read_done: Any = torch.cuda.Event() if self._pinned else None  # type: ignore[no-untyped-call]
        self._step_done: Any = torch.cuda.Event() if self._pinned else None  # type: ignore[no-untyped-call]
        self._overlap = self._pinned if overlap is None else overlap
        self._inflight: _Launch | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # -- the request side ----------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Jobs holding a slot now."""
        return len(self._rows)

    @property
    def cache_bytes(self) -> int:
        """Bytes of the slot KV cache."""
        return int(self.decoder.cache_bytes)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker thread to exit (after :meth:`close`)."""
        self._thread.join(timeout)

    # -- the worker ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    break
            except Exception as exc:
                # A failure inside a step fails the rows it was generating (their slots are freed) and the worker
                # carries on with the next requests, as the static batcher does with a failed batch.
                log.exception("deployment %s: a step failed with %d rows running", self.name, len(self._rows))
                self._inflight = None
                for slot, row in list(self._rows.items()):
                    self._release(slot)
                    row.job.post("error", f"generation failed: {type(exc).__name__}")
        for row in self._rows.values():
            row.job.post("error", "the deployment was removed")
        self._rows.clear()

    def _admit(self) -> list[Job] | None:
        """Take the jobs that start this step (``None``: closed)."""
        with self._cond:
            while not self._pending and not self._rows and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            taken: list[Job] = []
            if self._rows and self._pending:
                room = min(len(self._free), len(self._pending))
                wait = self.gather_s * len(self._rows) / self.decoder.slots
                if room < self._gather and time.monotonic() - self._pending[0].arrived < wait:
                    return taken
            budget = self.prefill_tokens
            while self._pending and len(taken) < len(self._free):
                job = self._pending[0]
                if not job.alive:
                    self._pending.popleft()
                    job.post("done", "cancelled")
                    continue
                if taken and len(job.prompt) > budget:
                    break
                budget -= len(job.prompt)
                taken.append(self._pending.popleft())
            return taken

    def _step(self) -> bool:
        events: list[tuple[Job, str, object]] = []
        for slot, row in list(self._rows.items()):
            if not row.job.alive:
                self._release(slot)
                events.append((row.job, "done", "cancelled"))
        if not self._rows:
            self._inflight = None  # nothing it decodes is wanted any more
        if events:  # now: with no rows left, _admit may wait for new jobs for as long as none come
            flush(events)
            events = []
        new = self._admit()
        if new is None:
            return False
        if new:
            self._prefill(new, events)
        if self._overlap:
            done, self._inflight = self._inflight, None
            tokens = self._collect(done) if done is not None else []
            if self._rows:
                self._inflight = self._launch()  # the GPU computes step N + 1 while the host handles step N
            if done is not None:
                self._accept_step(done, tokens, events)
        elif self._rows:
            launch = self._launch()
            self._accept_step(launch, self._collect(launch), events)
        flush(events)
        self.steps += 1
        return True

    def _release(self, slot: int) -> None:
        del self._rows[slot]
        self._generators[slot] = None
        heapq.heappush(self._free, slot)

    def _set_params(self, slots: Sequence[int], jobs: Sequence[Job]) -> None:
        index = torch.tensor(list(slots), dtype=torch.long)
        temps = torch.tensor([j.params.temperature if j.params.do_sample else 1.0 for j in jobs])
        top_ps = torch.tensor([j.params.top_p for j in jobs], dtype=torch.float32)
        sample = torch.tensor([j.params.do_sample for j in jobs])
        device = self.decoder.device
        index = index.to(device)
        self._temps[index] = temps.to(device)
        self._top_ps[index] = top_ps.to(device)
        self._sample[index] = sample.to(device)
        for slot, job in zip(slots, jobs, strict=True):
            self._generators[slot] = seeded_generator(job.params, device)

    def _prefill(self, jobs: list[Job], events: list[tuple[Job, str, object]]) -> None:
        slots = [heapq.heappop(self._free) for _ in jobs]
        try:
            self._set_params(slots, jobs)
            logits = self.decoder.prefill(slots, [j.prompt for j in jobs])
        except Exception as exc:
            # Give their slots back and fail these prompts alone: the running rows carry on.
            log.exception("deployment %s: prefill of %d prompts failed", self.name, len(jobs))
            for slot, job in zip(slots, jobs, strict=True):
                self._generators[slot] = None
                heapq.heappush(self._free, slot)
                events.append((job, "error", f"generation failed: {type(exc).__name__}"))
            return
        index = torch.tensor(slots, dtype=torch.long, device=self.decoder.device)
        chosen = self._choose(logits, index, [j.params.do_sample for j in jobs], [self._generators[s] for s in slots])
        self.decoder.tokens[index] = chosen
        for slot, job, token in zip(slots, jobs, self._read(chosen), strict=True):
            row = _Row(job=job, slot=slot, length=len(job.prompt))
            self._rows[slot] = row
            self._accept(row, token, events)

    def _launch(self) -> _Launch:
        """Queue one decode step of every running row, with the copy of its chosen ids to the host."""
        rows = max(self._rows) + 1
        lengths = [0] * rows
        sampling = [False] * rows
        last = self.decoder.context - 1
        for slot, row in self._rows.items():
            # Never past the cache: only a row that ends at the step in flight can get here (its result is dropped).
            lengths[slot] = min(row.length, last)
            row.length += 1
            sampling[slot] = row.job.params.do_sample
        positions = self._host_positions[:rows]
        positions.copy_(torch.tensor(lengths, dtype=torch.long))
        self.decoder.positions[:rows].copy_(positions, non_blocking=True)
        logits = self.decoder.decode(rows, max(lengths) + 1)
        index = torch.arange(rows, device=self.decoder.device)
        chosen = self._choose(logits, index, sampling, self._generators[:rows])
        self.decoder.tokens[:rows].copy_(chosen)
        done = None
        if self._pinned:
            self._host_tokens[:rows].copy_(chosen, non_blocking=True)
            done = self._step_done
            done.record()
        return _Launch(rows=list(self._rows.items()), count=rows, chosen=chosen, done=done)

    def _collect(self, launch: _Launch) -> list[int]:
        """A launched step's chosen ids on the host (waits without holding the GIL)."""
        if launch.done is None:
            return [int(t) for t in launch.chosen.tolist()]
        launch.done.synchronize()
        return [int(t) for t in self._host_tokens[: launch.count].tolist()]

    def _accept_step(self, launch: _Launch, tokens: list[int], events: list[tuple[Job, str, object]]) -> None:
        for slot, row in launch.rows:
            if self._rows.get(slot) is row:  # not ended or cancelled since the step was launched
                self._accept(row, tokens[slot], events)

    def _choose(
        self,
        logits: torch.Tensor,
        index: torch.Tensor,
        sampling: Sequence[bool],
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:
        return choose_tokens(
            logits.float(),
            self._sample[index],
            self._temps[index],
            self._top_ps[index],
            any_sample=any(sampling),
            generators=generators,
        )

    def _read(self, chosen: torch.Tensor) -> list[int]:
        """The chosen ids on the host: the step's one round trip (waits without holding the GIL)."""
        if not self._pinned:
            return [int(t) for t in chosen.tolist()]
        host = self._host_first[: chosen.shape[0]]
        host.copy_(chosen, non_blocking=True)
        self._read_done.record()
        self._read_done.synchronize()  # releases the GIL, so the event loop keeps serving while the GPU works
        return [int(t) for t in host.tolist()]

    def _accept(self, row: _Row, token: int, events: list[tuple[Job, str, object]]) -> None:
        """Take a row's new token: the same rules as the static path (:meth:`.LoadedModel.generate`)."""
        if token not in self.model.eos_ids:
            self.generated += 1
        reason = take_token(row.job, token, self.model.eos_ids, events)
        if reason is not None:
            self._release(row.slot)
            settle(self.name, row.job, reason, events)

    def describe(self) -> dict[str, Any]:
        """What the engine holds, for logs and ``endpoint list``."""
        return {
            "engine": "continuous",
            "slots": self.decoder.slots,
            "context": self.decoder.context,
            "kv_cache_gib": round(self.decoder.cache_bytes / 2**30, 2),
            "cuda_graphs": self.decoder.cuda_graphs,
        }
