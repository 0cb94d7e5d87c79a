"""A decoder-only model over a paged KV cache: prefill some rows, decode all of them in one step.

The continuous batcher (:mod:`.engine`) gives each running request a *slot*: a row of the decode batch, with a
*block table* that says where its positions live in a pool of fixed-size KV blocks allocated once,
``[blocks + 1, kv_heads, block_size, head_dim]`` per layer (:mod:`.blocks`; the last block is the trash block
that idle rows and padding write into). Prefill writes a prompt's keys and values through its table; each decode
step feeds one token per slot and writes one position per slot, so requests of different lengths, started at
different times, decode together, and the memory they hold follows their real lengths. Nothing is allocated per
token and the tables are fixed device tensors, which is what lets a decode step be captured as a CUDA graph and
replayed (one graph per bucket of batch rows, and of attended context on the unfused path: see
:meth:`SlotDecoder.decode`).

Without a pool size the decoder has ``slots x ceil(context / block_size)`` blocks and each slot owns its own
run of them (the tables start so): every slot can hold a whole context, as a fixed slot cache would.

Only the attention is computed here; embeddings, projections and the LM head are the loaded transformers
model's own modules, so the weights (and a LoRA merged into them) are exactly those ``generate`` would use. The
pattern fits the pre-norm Llama family that transformers implements alike: ``llama``, ``mistral``, ``phi3``,
``qwen2`` and ``qwen3`` (:func:`supports`); other models are served by the static batcher.

On CUDA (with Triton) the decode step is *fused* (:mod:`.kernels`): each layer's norms (with the residual add
folded in), the rotary embedding with the cache write, the SiLU gate and the attention are one kernel each, and
the attention reads each row's own positions only, through its block table, so one captured graph per batch-size
bucket serves every length. Elsewhere, and for a model whose norms or activation the kernels do not cover, the
step is the plain composition of transformers' modules with masked ``scaled_dot_product_attention`` over the
row's blocks gathered in order (:func:`.kernels.gather_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ....flash_varlen import flash_runs
from . import kernels, packing
from .blocks import blocks_for

__all__ = ["SUPPORTED_MODEL_TYPES", "SlotDecoder", "kv_bytes_per_token", "supports", "supports_config"]

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "phi3", "qwen2", "qwen3"})
"""``config.model_type`` values whose decoder layers follow the pattern computed here."""


def supports(model: Any) -> str | None:
    """Return why ``model`` cannot run on slots, or ``None`` when it can."""
    return supports_config(model.config)


def supports_config(config: Any) -> str | None:
    """Return why a model of this transformers config cannot run on slots, or ``None`` when it can."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model type {kind!r} is not one of {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", window is not None) and window and window < config.max_position_embeddings:
        return f"sliding-window attention ({window} tokens) is not implemented on slots"
    rope = getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in {"dynamic", "longrope"}:
        # These change the rotary frequencies with the sequence length; the slot cache precomputes them once.
        return f"rope scaling {rope.get('rope_type', rope.get('type'))!r} depends on the length"
    return None


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in every layer."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * size


BLOCK_SIZE = 32
"""Positions per KV block by default: small enough that a request wastes little of its last block."""

_GRAPHED_PREFILL_ROWS = 16
"""Prefills of at most this many prompts replay CUDA graphs (see :meth:`SlotDecoder.prefill`)."""

_GRAPHED_PREFILL_POSITIONS = 2048
"""Where prompts can be packed, a graph serves a prefill only up to this many padded positions (see prefill)."""


def _bucket(n: int, smallest: int, cap: int) -> int:
    """The smallest power-of-two multiple of ``smallest`` that holds ``n``, at most ``cap``."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, cap)


class SlotDecoder:
    """A loaded causal LM with a paged KV cache, decoding up to ``slots`` rows together.

    Args:
        model: A transformers causal LM of a supported type (:func:`supports`), on its device, in eval mode.
        slots: Rows of the decode batch (most requests decoding at once).
        context: Most positions of one request (prompt plus answer).
        blocks: KV blocks in the pool (default: a whole context for every slot, each slot owning its own).
        block_size: Positions per block (a power of two).
        cuda_graphs: Capture decode steps as CUDA graphs (CUDA only).
        fused: Use the fused kernels where they can run (:func:`.kernels.available`) and cover the model.
        packed: Prefill several prompts packed into one row (:mod:`.packing`) rather than padded to the longest
            (default: where flash attention over packed prompts runs, i.e. CUDA in half precision).
    """

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        context: int,
        blocks: int | None = None,
        block_size: int = BLOCK_SIZE,
        cuda_graphs: bool = True,
        fused: bool = True,
        packed: bool | None = None,
    ) -> None:
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, not {block_size}")
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"the model cannot run on the slot cache: {reason}")
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.lm_head = model.lm_head
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.slots = slots
        self.context = context
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.block_size = block_size
        self.table_width = blocks_for(context, block_size)  # blocks of one whole context
        owned = slots * self.table_width
        self.blocks = owned if blocks is None else max(1, blocks)
        self.trash = self.blocks  # the block past the pool's last: idle rows and padding write there
        shape = (self.blocks + 1, self.kv_heads, block_size, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        positions = torch.arange(context, device=self.device)[None]
        probe = torch.zeros((), dtype=self.dtype, device=self.device)
        cos, sin = inner.rotary_emb(probe, positions)
        self.cos = cos[0].to(self.dtype).contiguous()  # [context, rotary_dim]
        self.sin = sin[0].to(self.dtype).contiguous()
        # Decode inputs live in fixed buffers so that a captured graph reads this step's values.
        self.tokens = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)
        # Block tables: the host's copy (read by prefill) and the device's (read by the decode step's kernels).
        self._host_tables = torch.full((slots, self.table_width), self.trash, dtype=torch.int32)
        if self.blocks >= owned:  # each slot owns its run of blocks until someone assigns others
            self._host_tables.copy_(torch.arange(owned, dtype=torch.int32).view(slots, self.table_width))
        self.tables = self._host_tables.to(self.device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._prefill_graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # A graphed prefill reads its prompts, the cache blocks and offsets of their positions, and their last
        # positions from these (see prefill).
        self._pf_ids = torch.zeros((_GRAPHED_PREFILL_ROWS, context), dtype=torch.long, device=self.device)
        self._pf_blocks = torch.full((_GRAPHED_PREFILL_ROWS, context), self.trash, dtype=torch.long, device=self.device)
        self._pf_offsets = torch.zeros((_GRAPHED_PREFILL_ROWS, context), dtype=torch.long, device=self.device)
        self._pf_last = torch.zeros(_GRAPHED_PREFILL_ROWS, dtype=torch.long, device=self.device)
        self._pool: Any = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self.fused = fused and kernels.available(self.device) and _fusable(model)
        self.packed = flash_runs(self.device, self.dtype) if packed is None else packed
        # Graph buckets are coarse (few graphs to capture); eager steps can follow the batch closely.
        self._row_step = 8 if self.cuda_graphs else 1
        self._ctx_step = 128 if self.cuda_graphs else 64

    @property
    def cache_bytes(self) -> int:
        """Bytes the KV cache holds."""
        return sum(t.numel() * t.element_size() for t in (*self.k_cache, *self.v_cache))

    # -- block tables ------------------------------------------------------------------------------------------

    def set_blocks(self, updates: Sequence[tuple[int, int, int]]) -> None:
        """Point table entries at blocks: ``(slot, index in its table, block)`` each.

        The device's copy changes in stream order: a step already launched still reads the old entries.
        """
        if not updates:
            return
        cells = torch.tensor(list(updates), dtype=torch.long)
        self._host_tables[cells[:, 0], cells[:, 1]] = cells[:, 2].to(torch.int32)
        on_device = self.upload(cells)
        self.tables[on_device[:, 0], on_device[:, 1]] = on_device[:, 2].to(torch.int32)

    def clear(self, slots: Sequence[int]) -> None:
        """Point these slots' tables at the trash block (they hold no request: their writes must land nowhere)."""
        if not slots:
            return
        index = torch.tensor(list(slots), dtype=torch.long)
        self._host_tables[index] = self.trash
        self.tables[self.upload(index)] = self.trash
        self.positions[self.upload(index[index < self.positions.shape[0]])] = 0  # graph padding rows read nothing

    def upload(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` on the device without waiting for the GPU (a step may be in flight while tables change).

        A copy from pageable memory would wait for the stream; from pinned memory it is queued, and torch's pinned
        allocator keeps the buffer until the copy is done.
        """
        if self.device.type != "cuda":
            return values.to(self.device)
        return values.pin_memory().to(self.device, non_blocking=True)

    def table(self, slot: int) -> list[int]:
        """A slot's block table as the host sees it."""
        return [int(b) for b in self._host_tables[slot].tolist()]

    # -- the pieces of a layer ---------------------------------------------------------------------------------

    def _qkv(self, attn: Any, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``h`` (``[..., hidden]``) to query, key and value heads (``[..., heads, head_dim]``)."""
        lead = h.shape[:-1]
        if hasattr(attn, "qkv_proj"):
            qkv = attn.qkv_proj(h)
            nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
            q, k, v = qkv[..., :nq], qkv[..., nq : nq + nkv], qkv[..., nq + nkv :]
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        q = q.reshape(*lead, self.heads, self.head_dim)
        k = k.reshape(*lead, self.kv_heads, self.head_dim)
        v = v.reshape(*lead, self.kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):  # qwen3 normalises each head before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of ``x`` (``[..., heads, head_dim]``); ``cos``/``sin`` are ``[..., rotary_dim]``."""
        rot = cos.shape[-1]
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
        out = x_rot * cos + rotated * sin
        return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out

    def _finish_layer(self, layer: Any, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        x = x + layer.self_attn.o_proj(attn_out)
        out: torch.Tensor = x + layer.mlp(layer.post_attention_layernorm(x))
        return out

    # -- the fused pieces (CUDA) -------------------------------------------------------------------------

    @staticmethod
    def _norm(module: Any, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return kernels.rms_norm(x, module.weight, _eps(module), residual)

    @staticmethod
    def _mlp(mlp: Any, h: torch.Tensor) -> torch.Tensor:
        if hasattr(mlp, "gate_up_proj"):
            gate, up = mlp.gate_up_proj(h).chunk(2, dim=-1)
        else:
            gate, up = mlp.gate_proj(h), mlp.up_proj(h)
        return mlp.down_proj(kernels.silu_mul(gate, up))  # type: ignore[no-any-return]

    def _fused_step(self, rows: int) -> torch.Tensor:
        """The fused decode step of the first ``rows`` slots (each attends its own positions only)."""
        tokens, positions, tables = self.tokens[:rows], self.positions[:rows], self.tables[:rows]
        x = self.embed(tokens)  # the residual stream, updated in place by the norms that follow an add
        h = self._norm(self.layers[0].input_layernorm, x)
        for n, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, h)
            q = kernels.rope_and_store(q, k, v, self.cos, self.sin, positions, self.k_cache[n], self.v_cache[n], tables)
            out = kernels.decode_attention(q, self.k_cache[n], self.v_cache[n], positions, tables, attn.scaling)
            h = self._norm(layer.post_attention_layernorm, attn.o_proj(out.reshape(rows, -1)), x)
            after = self.layers[n + 1].input_layernorm if n + 1 < len(self.layers) else self.norm
            h = self._norm(after, self._mlp(layer.mlp, h), x)
        return self.lm_head(h)  # type: ignore[no-any-return]

    # -- prefill -----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run prompts into their slots' blocks; return the logits of each prompt's last position (``[rows, vocab]``).

        Each slot's table must already hold blocks for its prompt (:meth:`set_blocks`).

        With CUDA graphs, a prefill of a few short prompts (at most 16, the steady state of a busy endpoint, where
        requests arrive a few at a time) replays a graph captured for its bucket of rows and width: eager, its
        thousand small launches cost more host time than its GPU work. Its prompts are right-padded to the bucket:
        with causal attention no real position sees the padding, and the padding's keys are written into the trash
        block, which nobody reads. Larger prefills run eager, where the GPU work dwarfs the launches, packed end to
        end where :attr:`packed` (no padding: at chat lengths most of a padded batch is padding, :mod:`.packing`),
        else padded to the longest prompt.
        """
        rows = len(prompts)
        width = max(len(p) for p in prompts)
        graphed = self.cuda_graphs and rows <= _GRAPHED_PREFILL_ROWS
        if graphed and self.packed:
            graphed = _bucket(rows, 1, _GRAPHED_PREFILL_ROWS) * self._bucket_width(width) <= _GRAPHED_PREFILL_POSITIONS
        if self.packed and not graphed:
            table = self._host_tables[torch.tensor(list(slots), dtype=torch.long)]
            layout = packing.pack(prompts, table, self.block_size, self.upload)
            return self._prefill_forward(
                layout.ids,
                layout.blocks,
                layout.offsets,
                (layout.last,),
                self.cos[layout.positions],
                self.sin[layout.positions],
                lambda q, k, v, scale: packing.attend(q, k, v, layout, scale),
            )
        ids = torch.zeros((rows, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
        last = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)
        blocks, offsets = self._placement(slots, [len(p) for p in prompts], width)
        if graphed:
            return self._graphed_prefill(ids, blocks, offsets, last)
        device = self.device
        return self._padded_prefill(ids.to(device), blocks.to(device), offsets.to(device), last.to(device))

    def _bucket_width(self, width: int) -> int:
        """The width a graphed prefill of prompts up to ``width`` long is captured for."""
        return min(self.context, _bucket(width, 64, 1 << 30) if width > 512 else -(-width // 64) * 64)

    def _placement(self, slots: Sequence[int], lengths: Sequence[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache block and offset of each prompt position (``[rows, width]`` each); padding goes to the trash."""
        span = torch.arange(width)
        offsets = (span % self.block_size).expand(len(slots), width).contiguous()
        column = (span // self.block_size).clamp(max=self.table_width - 1)
        blocks = self._host_tables[torch.tensor(list(slots), dtype=torch.long)][:, column].long()
        real = span[None] < torch.tensor(list(lengths))[:, None]
        return torch.where(real, blocks, self.trash), offsets

    def _graphed_prefill(
        self, ids: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        rows, width = ids.shape
        bucket_rows = _bucket(rows, 1, _GRAPHED_PREFILL_ROWS)
        bucket_width = self._bucket_width(width)
        self._pf_ids[:bucket_rows, :bucket_width].zero_()
        self._pf_ids[:rows, :width].copy_(ids)
        self._pf_blocks[:bucket_rows, :bucket_width].fill_(self.trash)  # padding rows and columns: the trash
        self._pf_blocks[:rows, :width].copy_(blocks)
        self._pf_offsets[:rows, :width].copy_(offsets)
        self._pf_last[:bucket_rows].zero_()
        self._pf_last[:rows].copy_(last)
        key = (bucket_rows, bucket_width)
        entry = self._prefill_graphs.get(key)
        if entry is None:
            entry = self._capture(
                lambda: self._padded_prefill(
                    self._pf_ids[:bucket_rows, :bucket_width],
                    self._pf_blocks[:bucket_rows, :bucket_width],
                    self._pf_offsets[:bucket_rows, :bucket_width],
                    self._pf_last[:bucket_rows],
                )
            )
            self._prefill_graphs[key] = entry
        graph, logits = entry
        graph.replay()
        return logits[:rows]

    def _padded_prefill(
        self, ids: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """A prefill of prompts right-padded to one width: ``ids`` ``[rows, width]``; logits at ``last``."""
        rows, width = ids.shape
        gqa = self.kv_heads != self.heads

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
            return out.transpose(1, 2).reshape(rows, width, -1)

        pick = (torch.arange(rows, device=self.device), last)
        cos, sin = self.cos[:width][None], self.sin[:width][None]
        return self._prefill_forward(ids, blocks, offsets, pick, cos, sin, attend)

    def _prefill_forward(
        self,
        ids: torch.Tensor,
        blocks: torch.Tensor,
        offsets: torch.Tensor,
        pick: tuple[torch.Tensor, ...],
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor],
    ) -> torch.Tensor:
        """The prefill itself, padded (``ids`` ``[rows, width]``) or packed (``[tokens]``); logits at ``x[pick]``.

        Each position's keys and values are written to cache block ``blocks`` at offset ``offsets``; ``cos`` and
        ``sin`` are its rotary angles; ``attend(q, k, v, scale)`` is the causal attention of the layout.
        """
        x = self.embed(ids)
        for n, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = self._norm(layer.input_layernorm, x) if self.fused else layer.input_layernorm(x)
            q, k, v = self._qkv(attn, h)  # [..., heads, dim]
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.k_cache[n][blocks, :, offsets] = k  # cells of [kv_heads, dim] each
            self.v_cache[n][blocks, :, offsets] = v
            out = attend(q, k, v, attn.scaling)
            if self.fused:
                x = x + attn.o_proj(out)
                x = x + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, x))
            else:
                x = self._finish_layer(layer, x, out)
        return self.lm_head(self.norm(x[pick]))  # type: ignore[no-any-return]

    # -- decode ------------------------------------------------------------------------------------------------

    def _decode_step(self, rows: int, width: int) -> torch.Tensor:
        """One token for each of the first ``rows`` slots, attending to their first ``width`` positions."""
        tokens, positions, tables = self.tokens[:rows], self.positions[:rows], self.tables[:rows]
        index = torch.arange(rows, device=self.device)
        blocks = tables[index, positions // self.block_size].long()
        offsets = positions % self.block_size
        cos, sin = self.cos[positions], self.sin[positions]  # [rows, rotary_dim]
        # Each row sees its positions up to and including the one written now.
        mask = (torch.arange(width, device=self.device)[None] <= positions[:, None])[:, None, None]
        x = self.embed(tokens)
        for n, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(x))  # [rows, heads, dim]
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.k_cache[n][blocks, :, offsets] = k
            self.v_cache[n][blocks, :, offsets] = v
            out = F.scaled_dot_product_attention(
                q[:, :, None],
                kernels.gather_blocks(self.k_cache[n], tables, width),
                kernels.gather_blocks(self.v_cache[n], tables, width),
                attn_mask=mask,
                scale=attn.scaling,
                enable_gqa=self.kv_heads != self.heads,
            )
            x = self._finish_layer(layer, x, out.reshape(rows, -1))
        return self.lm_head(self.norm(x))  # type: ignore[no-any-return]

    @torch.inference_mode()
    def decode(self, rows: int, longest: int) -> torch.Tensor:
        """Decode one step for slots ``0..rows-1`` from :attr:`tokens` at :attr:`positions`.

        Args:
            rows: One more than the highest slot in use (free slots below it compute a harmless row).
            longest: One more than the highest position written this step.

        Returns:
            Logits, ``[rows, vocab]`` (a view into a graph's output buffer when graphs are on: read it before the
            next step).
        """
        bucket_rows = _bucket(rows, self._row_step, self.slots)
        # Unfused attention reads every row's keys up to ``width``: linear steps keep that close to the longest
        # row. The fused attention reads each row's own length, so one graph per row bucket serves every length.
        width = 0 if self.fused else min(self.context, -(-longest // self._ctx_step) * self._ctx_step)
        if not self.cuda_graphs:
            return self._step(bucket_rows, width)[:rows]
        key = (bucket_rows, width)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(lambda: self._step(bucket_rows, width))
            self._graphs[key] = entry
        graph, logits = entry
        graph.replay()
        return logits[:rows]

    def _capture(self, run: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up runs on a side stream (as torch requires before capture) compute this very step: they write the
        # same keys and values the replay will, so running it more than once changes nothing.
        stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another deployment loading in the server's thread pool must not break this capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = run()
        return graph, logits

    def _step(self, rows: int, width: int) -> torch.Tensor:
        return self._fused_step(rows) if self.fused else self._decode_step(rows, width)


def _eps(norm: Any) -> float:
    eps = getattr(norm, "variance_epsilon", None)
    return float(eps if eps is not None else norm.eps)


def _fusable(model: Any) -> bool:
    """Whether the fused kernels compute this model's layers.

    They need RMSNorms with a plain weight, SiLU gates, and heads of at least 16 dimensions (the attention kernel's
    dot products reduce over the head, and Triton's need 16 or more).
    """
    config = model.config
    if getattr(config, "hidden_act", None) not in {"silu", "swish"}:
        return False
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim < 16:
        return False
    layer = model.model.layers[0]
    norms = (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm)
    plain = all(
        type(n).__name__.endswith("RMSNorm")
        and isinstance(getattr(n, "weight", None), torch.Tensor)
        and (getattr(n, "variance_epsilon", None) is not None or getattr(n, "eps", None) is not None)
        for n in norms
    )
    mlp = layer.mlp
    gated = hasattr(mlp, "down_proj") and (hasattr(mlp, "gate_up_proj") or hasattr(mlp, "gate_proj"))
    return plain and gated
