"""The paged KV cache: the block pool, the reference paged attention, the decoder through scattered block tables,
and the continuous engine's admission by blocks, refusal of what can never fit, and preemption.

Everything runs on the CPU in float32 (CI); the decoder and engine tests run again on CUDA (``gpu``), where the
decode step is the fused Triton one reading the same tables.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from ftkit.serve.engines.continuous.blocks import BlockPool, blocks_for

torch = pytest.importorskip("torch")

from ftkit.serve.contract.requests import GenParams  # noqa: E402
from ftkit.serve.engines.base import Unsupported  # noqa: E402
from ftkit.serve.engines.continuous import kernels  # noqa: E402
from ftkit.serve.engines.continuous.engine import ContinuousBatcher  # noqa: E402
from ftkit.serve.engines.continuous.slots import SlotDecoder  # noqa: E402
from ftkit.serve.engines.generation import LoadedModel  # noqa: E402

from .conftest import answer_all, finish, make_job, reference  # noqa: E402

QUESTIONS = ("hello there", "What is 12 plus 30?", "a b c d e f g h i j k l m n o p", "x", "Tell me about rivers.")


def test_the_pool_hands_out_and_takes_back_blocks() -> None:
    pool = BlockPool(6, 4)
    assert (pool.free, pool.used, pool.tokens, pool.trash) == (6, 0, 24, 6)
    assert [pool.needed(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert blocks_for(9, 4) == 3
    first = pool.take(4)
    assert first == [0, 1, 2, 3]
    assert pool.take(3) is None  # all or nothing
    assert pool.free == 2
    pool.give_back(first[1:3])
    assert pool.take(3) == [1, 2, 4]  # the lowest free blocks first
    with pytest.raises(ValueError, match=r"blocks \[1\] are not held"):
        pool.give_back([1, 1])  # twice in one go
    with pytest.raises(ValueError, match=r"blocks \[5\] are not held"):
        pool.give_back([5])  # free, not held
    assert pool.free == 1
    with pytest.raises(ValueError, match="needs blocks"):
        BlockPool(0, 4)


def test_the_reference_paged_attention_equals_attention_over_the_contiguous_sequence() -> None:
    gen = torch.Generator().manual_seed(3)
    rows, heads, kv_heads, dim, size, width = 3, 8, 2, 16, 4, 6
    positions = torch.tensor([0, 9, 23])
    sequences = torch.randn(2, rows, kv_heads, width * size, dim, generator=gen)
    blocks = rows * width + 1
    tables = torch.randperm(blocks, generator=gen)[: rows * width].view(rows, width).to(torch.int32)
    k_cache, v_cache = (torch.randn(blocks, kv_heads, size, dim, generator=gen) for _ in range(2))
    for cache, seq in zip((k_cache, v_cache), sequences, strict=True):
        for i in range(rows):
            for j in range(width):
                cache[tables[i, j]] = seq[i, :, j * size : (j + 1) * size]
    for i in range(rows):  # gathering the blocks in table order gives the sequence back
        assert torch.equal(kernels.gather_blocks(k_cache, tables[i : i + 1], 11)[0], sequences[0, i, :, :11])
    q = torch.randn(rows, heads, dim, generator=gen)
    out = kernels.paged_attention_reference(q, k_cache, v_cache, positions, tables, 1 / math.sqrt(dim))
    for i in range(rows):
        seen = int(positions[i]) + 1
        want = torch.nn.functional.scaled_dot_product_attention(
            q[i][None, :, None],
            sequences[0, i, :, :seen][None],
            sequences[1, i, :, :seen][None],
            enable_gqa=True,
        )[0, :, 0]
        torch.testing.assert_close(out[i], want)


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> LoadedModel:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return LoadedModel(tiny_model_dir, request.param, torch.float32)


@pytest.fixture(scope="module")
def prompts(model: LoadedModel) -> list[list[int]]:
    return [model.encode([{"role": "user", "content": q}], "messages", 64) for q in QUESTIONS]


def test_scattered_blocks_decode_as_a_contiguous_cache_does(model: LoadedModel, prompts: list[list[int]]) -> None:
    """Paged (blocks scattered over a pool, shared with nobody) and unpaged (each slot's own run) are one model."""
    # On CUDA both replay CUDA graphs: the tables are read from fixed device tensors, so new entries reach a graph.
    unpaged = SlotDecoder(model.model, slots=3, context=96, block_size=8)
    paged = SlotDecoder(model.model, slots=3, context=96, blocks=40, block_size=8)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(5)).tolist()
    for slot in range(3):  # 12 blocks hold the whole context of each slot: 36 of the 40, in random order
        paged.set_blocks([(slot, i, order[slot * 12 + i]) for i in range(12)])
    chosen = prompts[:3]
    first = [unpaged.prefill([0, 1, 2], chosen), paged.prefill([0, 1, 2], chosen)]
    torch.testing.assert_close(first[0], first[1])
    tokens = first[0].argmax(-1)
    lengths = [len(p) for p in chosen]
    for _ in range(12):  # twelve greedy steps, crossing block boundaries
        steps = []
        for decoder in (unpaged, paged):
            decoder.tokens[:3] = tokens
            decoder.positions[:3] = torch.tensor(lengths)
            steps.append(decoder.decode(3, max(lengths) + 1).clone())
        torch.testing.assert_close(steps[0], steps[1])
        tokens = steps[0].argmax(-1)
        lengths = [n + 1 for n in lengths]


@pytest.mark.parametrize(
    ("overlap", "packed"), [(False, False), (True, False), (True, True)], ids=["serial", "overlapped", "packed"]
)
def test_running_out_of_blocks_preempts_and_never_corrupts(
    model: LoadedModel, prompts: list[list[int]], overlap: bool, packed: bool
) -> None:
    """A pool far smaller than the rows' needs: rows are preempted and resumed, every answer is still exact."""
    params = GenParams(max_new_tokens=40)
    longest = max(len(p) for p in prompts) + 40 + 1
    blocks = blocks_for(longest, 8) + 3  # one whole request and a little: five at once cannot all fit
    decoder = SlotDecoder(model.model, slots=5, context=256, blocks=blocks, block_size=8, packed=packed)
    worker = ContinuousBatcher("tight", model, decoder, max_queue=16, overlap=overlap)
    expected = [reference(model, p, params) for p in prompts]
    try:
        assert answer_all(worker, model, prompts, params) == expected
        assert worker.preempted > 0  # the pool did run out
        assert worker.running == 0
        assert worker.pool.free == worker.pool.blocks  # every block came back
        assert worker.describe()["kv_blocks"] == blocks
    finally:
        worker.close()
        worker.join(10)


def test_a_request_the_pool_can_never_hold_is_refused_with_the_numbers(
    model: LoadedModel, prompts: list[list[int]]
) -> None:
    decoder = SlotDecoder(model.model, slots=2, context=512, blocks=4, block_size=8)
    worker = ContinuousBatcher("small", model, decoder, max_queue=4)

    async def run() -> None:
        fits = make_job(model, prompts[3], GenParams(max_new_tokens=4))
        too_long = make_job(model, prompts[3], GenParams(max_new_tokens=64))
        with pytest.raises(
            Unsupported, match=r"need \d+ KV blocks of 8 tokens.*holds 4 blocks \(32 tokens\)"
        ) as caught:
            worker.submit([fits, too_long])
        assert caught.value.param == "messages"
        assert worker.queued == 0  # all or none
        worker.submit([fits])
        assert await finish(fits) == "length"
        assert fits.tokens == reference(model, prompts[3], GenParams(max_new_tokens=4))

    try:
        if len(prompts[3]) + 4 + 1 > 32:
            pytest.skip("the tiny model's template makes even the shortest prompt too long for this pool")
        asyncio.run(run())
    finally:
        worker.close()
        worker.join(10)


@pytest.mark.gpu
def test_bfloat16_paged_logits_match_the_transformers_forward(tiny_model_dir: Path) -> None:
    """In bfloat16 the paged decoder (scattered blocks, fused kernels, CUDA graphs) stays within 2% of the
    transformers forward pass over the whole sequence, step after step across block boundaries."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = LoadedModel(tiny_model_dir, "cuda")
    assert model.dtype == torch.bfloat16
    decoder = SlotDecoder(model.model, slots=4, context=128, blocks=64, block_size=16)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(7)).tolist()
    for slot in range(4):
        decoder.set_blocks([(slot, i, order[slot * 8 + i]) for i in range(8)])
    prompts = [model.encode([{"role": "user", "content": q}], "messages", 64) for q in QUESTIONS[:3]]
    slots = [2, 0, 3]
    sequences = [list(p) for p in prompts]

    def check(logits: torch.Tensor, rows: list[int]) -> None:
        for row, seq in zip(rows, sequences, strict=True):
            with torch.inference_mode():
                ref = model.model(input_ids=torch.tensor([seq], device="cuda")).logits[0, -1].float()
            assert (logits[row].float() - ref).norm() / ref.norm() < 2e-2

    logits = decoder.prefill(slots, prompts)
    check(logits, [0, 1, 2])
    for _ in range(20):
        chosen = logits.float().argmax(-1)
        decoder.positions.zero_()
        for row, slot in enumerate(slots):
            decoder.positions[slot] = len(sequences[row])
            sequences[row].append(int(chosen[row]))
        decoder.tokens[torch.tensor(slots, device="cuda")] = chosen
        step = decoder.decode(4, max(len(s) for s in sequences))
        logits = step[torch.tensor(slots, device="cuda")]
        check(step, slots)


def _tiny_llama_gqa(device: str) -> torch.nn.Module:
    """A tiny random Llama with grouped-query attention (8 query heads of 16 dimensions, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(11)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).to(device).eval()


@pytest.mark.parametrize("kind", ["phi3", "llama-gqa"])
def test_packed_prefill_equals_the_padded_one(model: LoadedModel, prompts: list[list[int]], kind: str) -> None:
    """Prompts packed end to end (no padding) give the padded prefill's logits and leave the same KV cache: the
    decode steps after them agree too. Prompts of very different lengths, in scattered blocks."""
    device = str(model.device)
    net = model.model if kind == "phi3" else _tiny_llama_gqa(device)
    chosen = [prompts[2], prompts[3], [*prompts[4], *prompts[0], *prompts[2]]]  # 1 to ~100 tokens
    if kind != "phi3":  # the Llama's own vocabulary
        chosen = [[t % 300 for t in p] for p in chosen]
    decoders = [
        SlotDecoder(net, slots=4, context=256, blocks=80, block_size=8, cuda_graphs=False, packed=packed)
        for packed in (False, True)
    ]
    assert [d.packed for d in decoders] == [False, True]
    order = torch.randperm(80, generator=torch.Generator().manual_seed(9)).tolist()
    slots = [3, 0, 2]
    for decoder in decoders:
        decoder.set_blocks([(slot, i, order[slot * 20 + i]) for slot in slots for i in range(20)])
    first = [d.prefill(slots, chosen) for d in decoders]
    torch.testing.assert_close(first[0], first[1])
    with torch.inference_mode():  # and both are the model's own forward pass over each prompt
        for row, prompt in enumerate(chosen):
            ref = net(input_ids=torch.tensor([prompt], device=device)).logits[0, -1]
            torch.testing.assert_close(first[1][row], ref, rtol=1e-4, atol=1e-4)
    tokens = first[0].argmax(-1)
    lengths = [len(p) for p in chosen]
    index = torch.tensor(slots, device=device)
    for _ in range(10):  # decode steps read the prefilled cache, crossing block boundaries
        steps = []
        for decoder in decoders:
            decoder.positions.zero_()
            decoder.tokens[index] = tokens
            decoder.positions[index] = torch.tensor(lengths, device=device)
            steps.append(decoder.decode(4, max(lengths) + 1)[index].clone())
        torch.testing.assert_close(steps[0], steps[1])
        tokens = steps[0].argmax(-1)
        lengths = [n + 1 for n in lengths]


def test_a_packing_engine_budgets_real_tokens_and_answers_exactly(model: LoadedModel, prompts: list[list[int]]) -> None:
    """With packed prefills the engine admits by the prompts' own tokens (not padded to the longest), and every
    answer is the request's answer alone."""
    params = GenParams(max_new_tokens=24)
    decoder = SlotDecoder(model.model, slots=5, context=256, block_size=8, cuda_graphs=False, packed=True)
    # The longest and the shortest prompt first, with a budget of exactly their tokens: padded to the longest
    # they would be twice the budget, so only packing admits them together (and nothing else with them).
    ordered = sorted(prompts, key=len)
    ordered = [ordered[-1], ordered[0], *ordered[1:-1]]
    budget = len(ordered[0]) + len(ordered[1])
    worker = ContinuousBatcher("packed", model, decoder, max_queue=16, prefill_tokens=budget)
    calls: list[list[int]] = []
    prefill = decoder.prefill

    def spy(slots: Sequence[int], batch: Sequence[Sequence[int]]) -> torch.Tensor:
        calls.append([len(p) for p in batch])
        return prefill(slots, batch)

    decoder.prefill = spy  # type: ignore[method-assign]
    expected = [reference(model, p, params) for p in ordered]
    try:
        assert answer_all(worker, model, ordered, params) == expected
        assert calls[0] == [len(ordered[0]), len(ordered[1])], calls
        assert all(sum(c) <= budget for c in calls), calls
        assert worker.pool.free == worker.pool.blocks
    finally:
        worker.close()
        worker.join(10)


@pytest.mark.gpu
def test_bfloat16_packed_flash_prefill_matches_the_transformers_forward(tiny_model_dir: Path) -> None:
    """On CUDA in bfloat16 the packed prefill is flash attention over the prompts' boundaries (the default there):
    its logits stay within 2% of the transformers forward pass over each prompt, on Phi-3 and on a GQA Llama."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from ftkit import flash_varlen

    model = LoadedModel(tiny_model_dir, "cuda")
    assert flash_varlen.flash_runs(model.device, torch.bfloat16)
    prompts = [model.encode([{"role": "user", "content": q}], "messages", 64) for q in QUESTIONS]
    for net in (model.model, _tiny_llama_gqa("cuda").to(torch.bfloat16)):
        chosen = prompts if net is model.model else [[t % 300 for t in p] for p in prompts]
        decoder = SlotDecoder(net, slots=8, context=256, blocks=200, block_size=16, cuda_graphs=False)
        assert decoder.packed
        logits = decoder.prefill([6, 1, 0, 4, 2], chosen)
        for row, prompt in enumerate(chosen):
            with torch.inference_mode():
                ref = net(input_ids=torch.tensor([prompt], device="cuda")).logits[0, -1].float()
            assert (logits[row].float() - ref).norm() / ref.norm() < 2e-2


def test_heads_too_narrow_for_the_fused_kernels_take_the_plain_step() -> None:
    """Triton's dot products need 16 dimensions: a model with 8-dimensional heads decodes on the unfused step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftkit.serve.engines.continuous.slots import _fusable

    def llama(hidden: int) -> torch.nn.Module:
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=8,
            num_key_value_heads=2,
        )
        return LlamaForCausalLM(config)

    assert not _fusable(llama(64))  # 8 per head
    assert _fusable(llama(128))
