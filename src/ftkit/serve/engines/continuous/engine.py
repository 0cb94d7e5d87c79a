"""In-flight (continuous) batching: requests join and leave the running decode batch at every step.

:class:`ContinuousBatcher` is a drop-in for :class:`..static.Batcher` (same :class:`..base.Job` values,
``submit``/``close``/``queued``, the same bounded queue and 503): one worker thread per deployment runs a loop
of steps over a :class:`.slots.SlotDecoder`. Each step

1. drops finished, cancelled (client gone) and expired jobs and frees their slots and KV blocks at once;
2. admits waiting jobs into free slots while the pool has KV blocks for their prompts (and one growing block
   for each running row), at most ``prefill_tokens`` prompt tokens per step (always one), and prefills them,
   which yields their first token; so a burst of long prompts delays the running rows' next token by one
   bounded prefill, not by the whole burst;
3. gives each running row the block its next position needs; when the pool is empty, the newest running
   request is *preempted*: its blocks are freed and it goes back to the head of the queue, to be prefilled again
   later from its prompt and the tokens it already has (queued, never failed; the others are untouched);
4. decodes one token for every running row (a CUDA graph replay on the GPU), picks each row's next token by
   its own sampling parameters, and reads the chosen ids back: the one host round trip per step.

A request whose prompt + ``max_tokens`` could never fit the whole pool is refused at :meth:`submit` with the
numbers (a 400), rather than queued forever.

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

from ..base import Job, JobQueue, Unsupported, flush, settle, take_token
from ..generation import LoadedModel, choose_tokens, seeded_generator
from .blocks import BlockPool
from .slots import SlotDecoder

__all__ = ["ContinuousBatcher"]

log = logging.getLogger("ftkit.serve")


@attrs.define(eq=False)
class _Row:
    """Strictly private: a job while it holds a slot."""

    job: Job
    slot: int
    length: int  # positions of the slot's cache written or being written by launched steps
    blocks: list[int]  # its block table: position p lives in blocks[p // block_size]
    order: int  # when it was admitted: the newest is preempted first


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
        # The engine owns the blocks: every slot starts empty (its writes land in the trash block).
        self.pool = BlockPool(decoder.blocks, decoder.block_size)
        decoder.clear(range(decoder.slots))
        self._resumed: dict[Job, torch.Generator | None] = {}  # preempted jobs' samplers, kept for their return
        self._admitted = 0
        self.steps = 0
        self.generated = 0
        self.preempted = 0
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

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs (all or none), refusing at once any that the KV pool could never hold.

        Raises:
            Unsupported: A job's prompt + ``max_tokens`` needs more blocks than the whole pool has.
            QueueFull: Queuing them would pass ``max_queue``.
        """
        for job in jobs:
            need = self._blocks_at_most(job)
            if need > self.pool.blocks:
                raise Unsupported(
                    "messages",
                    f"messages: the prompt ({len(job.prompt)} tokens) + max_tokens ({job.params.max_new_tokens}) "
                    f"need {need} KV blocks of {self.pool.block_size} tokens, and this deployment's whole KV cache "
                    f"holds {self.pool.blocks} blocks ({self.pool.tokens} tokens); shorten the conversation or "
                    "lower max_tokens",
                )
        super().submit(jobs)

    def _blocks_at_most(self, job: Job) -> int:
        """The most blocks a job can hold: its prompt and answer, and the position a last step writes past them."""
        positions = min(len(job.prompt) + job.params.max_new_tokens + 1, self.decoder.context)
        return self.pool.needed(positions)

    @property
    def cache_bytes(self) -> int:
        """Bytes of the paged KV cache (every block of every layer)."""
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
            free = self.pool.free
            longest = total = 0
            while self._pending and len(taken) < len(self._free):
                job = self._pending[0]
                if not job.alive:
                    self._pending.popleft()
                    self._resumed.pop(job, None)
                    job.post("done", "cancelled")
                    continue
                length = len(job.prompt) + len(job.tokens)  # a preempted job resumes from what it has
                # The budget bounds the positions the prefill computes: the prompts' own where the decoder packs
                # them end to end, else the batch padded to its longest prompt.
                cost = total + length if self.decoder.packed else (len(taken) + 1) * max(longest, length)
                if taken and cost > self.prefill_tokens:
                    break
                # Its prompt and first decoded position, and room for every running row to grow by a block.
                need = self.pool.needed(length + 1)
                if need + len(self._rows) + len(taken) > free and (self._rows or taken):
                    break
                longest = max(longest, length)
                total += length
                free -= need
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
            if launch is not None:
                self._accept_step(launch, self._collect(launch), events)
        flush(events)
        self.steps += 1
        return True

    def _release(self, slot: int) -> None:
        row = self._rows.pop(slot)
        self.pool.give_back(row.blocks)
        row.blocks = []
        self.decoder.clear([slot])  # after any launched step in stream order: its writes now land in the trash
        self._generators[slot] = None
        heapq.heappush(self._free, slot)

    def _preempt(self, row: _Row) -> None:
        """Free the newest row's blocks and put its job back at the head of the queue, to resume later."""
        self._resumed[row.job] = self._generators[row.slot]
        self._release(row.slot)
        self.preempted += 1
        with self._cond:
            self._pending.appendleft(row.job)
        log.info(
            "deployment %s: KV cache full, request preempted after %d tokens (queued to resume)",
            self.name,
            len(row.job.tokens),
        )

    def _grow(self) -> None:
        """Give every running row the block its next position needs, preempting the newest rows when none is left."""
        size, last = self.pool.block_size, self.decoder.context - 1
        while True:
            short = [row for row in self._rows.values() if min(row.length, last) // size >= len(row.blocks)]
            if len(short) <= self.pool.free or not self._rows:
                break
            self._preempt(max(self._rows.values(), key=lambda r: r.order))
        updates: list[tuple[int, int, int]] = []
        for row in short:
            if self._rows.get(row.slot) is not row:
                continue  # preempted above
            taken = self.pool.take(1)
            if taken is None:  # counted free above; only this thread takes blocks
                raise RuntimeError("the KV pool has fewer free blocks than the step counted")
            block = taken[0]
            updates.append((row.slot, len(row.blocks), block))
            row.blocks.append(block)
        self.decoder.set_blocks(updates)

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
            if job in self._resumed:  # a preempted job samples on from where it was
                self._generators[slot] = self._resumed.pop(job)
            else:
                self._generators[slot] = seeded_generator(job.params, device)

    def _prefill(self, jobs: list[Job], events: list[tuple[Job, str, object]]) -> None:
        slots = [heapq.heappop(self._free) for _ in jobs]
        prompts = [[*j.prompt, *j.tokens] for j in jobs]  # a preempted job is prefilled with its answer so far
        tables: list[list[int]] = []
        try:
            for prompt in prompts:
                # _admit counted these blocks free; nothing took any since (only this thread takes blocks).
                taken = self.pool.take(self.pool.needed(len(prompt)))
                if taken is None:
                    raise RuntimeError("the KV pool has fewer free blocks than admission counted")
                tables.append(taken)
            self.decoder.set_blocks(
                [(slot, i, block) for slot, table in zip(slots, tables, strict=False) for i, block in enumerate(table)]
            )
            self._set_params(slots, jobs)
            logits = self.decoder.prefill(slots, prompts)
        except Exception as exc:
            # Give their slots and blocks back and fail these prompts alone: the running rows carry on.
            log.exception("deployment %s: prefill of %d prompts failed", self.name, len(jobs))
            for table in tables:
                self.pool.give_back(table)
            self.decoder.clear(slots)
            for slot, job in zip(slots, jobs, strict=True):
                self._generators[slot] = None
                self._resumed.pop(job, None)
                heapq.heappush(self._free, slot)
                events.append((job, "error", f"generation failed: {type(exc).__name__}"))
            return
        index = torch.tensor(slots, dtype=torch.long, device=self.decoder.device)
        chosen = self._choose(logits, index, [j.params.do_sample for j in jobs], [self._generators[s] for s in slots])
        self.decoder.tokens[index] = chosen
        for slot, job, prompt, table, token in zip(slots, jobs, prompts, tables, self._read(chosen), strict=True):
            self._admitted += 1
            row = _Row(job=job, slot=slot, length=len(prompt), blocks=table, order=self._admitted)
            self._rows[slot] = row
            self._accept(row, token, events)

    def _launch(self) -> _Launch | None:
        """Queue one decode step of every running row, with the copy of its chosen ids to the host."""
        self._grow()
        if not self._rows:
            return None
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
            "kv_blocks": self.pool.blocks,
            "block_size": self.pool.block_size,
            "kv_tokens": self.pool.tokens,
            "kv_cache_gib": round(self.decoder.cache_bytes / 2**30, 2),
            "cuda_graphs": self.decoder.cuda_graphs,
        }
