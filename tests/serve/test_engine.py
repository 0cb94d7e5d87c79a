"""The continuous batcher on its slot KV cache, driven through its Job interface (the server's side of it).

Every test runs on the CPU in float32 (CI) and again on CUDA (``gpu``; skipped without a GPU): in float32 a
row's greedy tokens must not depend on what else is in the batch, nor on when it joined; cancelled rows must
give their slot back at once. In bfloat16 kernels differ by batch shape, so there the logits are compared with
the transformers model's own forward pass within a tolerance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ftkit.serve.contract.requests import GenParams  # noqa: E402
from ftkit.serve.engines.base import Job  # noqa: E402
from ftkit.serve.engines.continuous.engine import ContinuousBatcher  # noqa: E402
from ftkit.serve.engines.continuous.slots import SlotDecoder  # noqa: E402
from ftkit.serve.engines.generation import LoadedModel  # noqa: E402

from .conftest import answer_all, finish, make_job, reference  # noqa: E402

QUESTIONS = ("hello there", "What is 12 plus 30?", "a b c d e f g h i j k l m n o p", "x", "Tell me about rivers.")


@pytest.fixture(
    scope="module",
    params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)],
)
def model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> LoadedModel:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return LoadedModel(tiny_model_dir, request.param, torch.float32)


@pytest.fixture(params=[False, True], ids=["serial", "overlapped"])
def overlap(request: pytest.FixtureRequest) -> bool:
    """Steps one after the other, or each launched before the last one's tokens are handled (the GPU's way)."""
    return bool(request.param)


@pytest.fixture(scope="module")
def prompts(model: LoadedModel) -> list[list[int]]:
    return [model.encode([{"role": "user", "content": q}], "messages", 64) for q in QUESTIONS]


@pytest.fixture
def engine(model: LoadedModel, overlap: bool) -> Iterator[ContinuousBatcher]:
    decoder = SlotDecoder(model.model, slots=4, context=512)
    worker = ContinuousBatcher("test", model, decoder, max_queue=32, overlap=overlap)
    yield worker
    worker.close()
    worker.join(10)


def test_batched_greedy_equals_single(model: LoadedModel, prompts: list[list[int]], engine: ContinuousBatcher) -> None:
    params = GenParams(max_new_tokens=24)
    expected = [reference(model, p, params) for p in prompts]
    # five jobs, four slots: one waits for a free slot
    assert answer_all(engine, model, prompts, params) == expected
    assert engine.running == 0


def test_joining_mid_batch_gives_the_same_answer(
    model: LoadedModel, prompts: list[list[int]], engine: ContinuousBatcher
) -> None:
    long, short = GenParams(max_new_tokens=60), GenParams(max_new_tokens=12)
    expected = reference(model, prompts[1], short)

    async def run() -> None:
        first = [make_job(model, prompts[0], long), make_job(model, prompts[2], long)]
        engine.submit(first)
        while len(first[0].tokens) < 10:  # the batch is decoding
            await asyncio.sleep(0.001)
        late = make_job(model, prompts[1], short)
        engine.submit([late])
        assert await finish(late) == "length"
        # It joined the running batch: done while the first rows still decode.
        assert len(first[0].tokens) < 60
        assert late.tokens == expected
        assert [await finish(j) for j in first] == ["length", "length"]

    asyncio.run(run())


def test_cancelling_frees_the_slot(model: LoadedModel, prompts: list[list[int]], overlap: bool) -> None:
    decoder = SlotDecoder(model.model, slots=1, context=1024)
    worker = ContinuousBatcher("one-slot", model, decoder, max_queue=8, overlap=overlap)

    async def run() -> None:
        hog = make_job(model, prompts[0], GenParams(max_new_tokens=900))
        waiting = make_job(model, prompts[1], GenParams(max_new_tokens=5))
        worker.submit([hog, waiting])
        while len(hog.tokens) < 3:
            await asyncio.sleep(0.001)
        assert worker.running == 1
        assert worker.queued == 1
        hog.cancelled = True  # the client went away
        assert await finish(hog) == "cancelled"
        assert await finish(waiting) == "length"
        assert len(hog.tokens) < 900
        assert waiting.tokens == reference(model, prompts[1], GenParams(max_new_tokens=5))
        # A deadline that passes mid-answer frees the slot too.
        expiring = make_job(model, prompts[2], GenParams(max_new_tokens=900))
        worker.submit([expiring])
        while len(expiring.tokens) < 3:
            await asyncio.sleep(0.001)
        expiring.deadline = time.monotonic()  # set here, not as a timeout: a fast GPU answers 900 tokens in 0.3 s
        assert await finish(expiring) == "cancelled"
        assert 0 < len(expiring.tokens) < 900
        assert worker.running == 0

    try:
        asyncio.run(run())
    finally:
        worker.close()
        worker.join(10)


def test_end_of_sequence_and_per_row_sampling(
    model: LoadedModel, prompts: list[list[int]], engine: ContinuousBatcher
) -> None:
    greedy = GenParams(max_new_tokens=16)
    expected = reference(model, prompts[3], greedy)
    sampled = GenParams(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.9)
    eos_ids = model.eos_ids
    model.eos_ids = frozenset({expected[5]})  # the sixth greedy token now ends the answer
    try:

        async def run() -> None:
            jobs = [
                make_job(model, prompts[3], greedy),
                make_job(model, prompts[0], sampled),
                make_job(model, prompts[4], sampled),
            ]
            engine.submit(jobs)
            reasons = [await finish(j) for j in jobs]
            assert reasons[0] == "stop"
            assert jobs[0].tokens == expected[: expected.index(expected[5])]  # the stop token is not emitted
            for job, reason in zip(jobs[1:], reasons[1:], strict=True):
                assert reason in {"stop", "length"}
                assert expected[5] not in job.tokens
                assert reason == "stop" or len(job.tokens) == 16

        asyncio.run(run())
    finally:
        model.eos_ids = eos_ids


def test_queue_bound_and_close(model: LoadedModel, prompts: list[list[int]], overlap: bool) -> None:
    from ftkit.serve.engines.base import QueueFull

    decoder = SlotDecoder(model.model, slots=1, context=512)
    worker = ContinuousBatcher("bounded", model, decoder, max_queue=1, overlap=overlap)

    async def run() -> None:
        jobs = [make_job(model, prompts[0], GenParams(max_new_tokens=400)) for _ in range(2)]
        worker.submit(jobs[:1])
        while not jobs[0].tokens:
            await asyncio.sleep(0.001)
        worker.submit(jobs[1:])  # waits for the slot
        with pytest.raises(QueueFull):
            worker.submit([make_job(model, prompts[1], GenParams(max_new_tokens=4))])
        worker.close()
        for job in jobs:
            kind, _ = await asyncio.wait_for(_last_event(job), timeout=30)
            assert kind == "error"

    try:
        asyncio.run(run())
    finally:
        worker.close()
        worker.join(10)


async def _last_event(job: Job) -> tuple[str, object]:
    while True:
        kind, value = await job.events.get()
        if kind != "text":
            return kind, value


@pytest.mark.gpu
def test_bfloat16_logits_match_the_transformers_forward(tiny_model_dir: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = LoadedModel(tiny_model_dir, "cuda")
    assert model.dtype == torch.bfloat16
    decoder = SlotDecoder(model.model, slots=8, context=512)
    prompts = [model.encode([{"role": "user", "content": q}], "messages", 64) for q in QUESTIONS[:3]]
    slots = [5, 0, 2]
    logits = decoder.prefill(slots, prompts).float()
    first = logits.argmax(-1)
    for row, prompt in enumerate(prompts):
        with torch.inference_mode():
            ref = model.model(input_ids=torch.tensor([prompt], device="cuda")).logits[0, -1].float()
        assert (logits[row] - ref).norm() / ref.norm() < 2e-2
    # One decode step of the three rows (slots 1, 3, 4 free) against the full forward pass of prompt + token.
    decoder.positions.zero_()
    for slot, prompt in zip(slots, prompts, strict=True):
        decoder.positions[slot] = len(prompt)
    decoder.tokens[torch.tensor(slots, device="cuda")] = first
    step = decoder.decode(6, max(len(p) for p in prompts) + 1).float()
    for row, (slot, prompt) in enumerate(zip(slots, prompts, strict=True)):
        with torch.inference_mode():
            ids = torch.tensor([[*prompt, int(first[row])]], device="cuda")
            ref = model.model(input_ids=ids).logits[0, -1].float()
        assert (step[slot] - ref).norm() / ref.norm() < 2e-2


def test_a_failed_step_fails_its_rows_and_the_engine_carries_on(
    model: LoadedModel, prompts: list[list[int]], engine: ContinuousBatcher
) -> None:
    real = engine.decoder.decode
    calls = {"n": 0}

    def flaky(rows: int, longest: int) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device failure")
        return real(rows, longest)

    engine.decoder.decode = flaky  # type: ignore[method-assign]

    async def run() -> None:
        doomed = make_job(model, prompts[0], GenParams(max_new_tokens=30))
        engine.submit([doomed])
        kind, value = await asyncio.wait_for(_last_event(doomed), timeout=30)
        assert (kind, value) == ("error", "generation failed: RuntimeError")
        assert engine.running == 0
        after = make_job(model, prompts[1], GenParams(max_new_tokens=8))
        engine.submit([after])
        assert await finish(after) == "length"
        assert after.tokens == reference(model, prompts[1], GenParams(max_new_tokens=8))

    asyncio.run(run())


def test_stop_string_ends_the_row_and_cuts_the_text(
    model: LoadedModel, prompts: list[list[int]], engine: ContinuousBatcher
) -> None:
    """A stop string ends the row (finish reason ``stop``, slot freed); the streamed text stops before it."""
    full = model.decode(reference(model, prompts[0], GenParams(max_new_tokens=24)))
    stop = full.strip()[4:7]  # a piece of the greedy answer, so the row must meet it
    assert stop
    assert stop in full
    params = GenParams(max_new_tokens=24, stop=(stop,))

    async def run() -> tuple[str, str, Job]:
        job = make_job(model, prompts[0], params)
        engine.submit([job])
        pieces: list[str] = []
        while True:
            kind, value = await asyncio.wait_for(job.events.get(), timeout=60)
            if kind == "done":
                return str(value), "".join(pieces), job
            assert kind == "text", (kind, value)
            pieces.append(str(value))

    reason, streamed, job = asyncio.run(run())
    assert reason == "stop"
    assert streamed == job.text.text == full[: full.index(stop)]
    assert stop not in streamed
    assert len(job.tokens) < 24
    assert engine.running == 0


def test_seeded_rows_do_not_depend_on_the_batch(
    model: LoadedModel, prompts: list[list[int]], engine: ContinuousBatcher
) -> None:
    """Equal seeds give equal samples, alone or beside other sampled rows; another seed gives another answer."""
    seeded = GenParams(max_new_tokens=24, do_sample=True, temperature=1.5, seed=1234)
    other = GenParams(max_new_tokens=24, do_sample=True, temperature=1.5, seed=99)
    noise = GenParams(max_new_tokens=24, do_sample=True, temperature=1.5)

    async def answers(params: Sequence[GenParams]) -> list[list[int]]:
        jobs = [make_job(model, prompts[2], p) for p in params]
        engine.submit(jobs)
        for job in jobs:
            await finish(job)
        return [job.tokens for job in jobs]

    alone = asyncio.run(answers([seeded]))[0]
    crowded = asyncio.run(answers([noise, seeded, noise, other]))
    assert crowded[1] == alone
    assert crowded[3] != alone
