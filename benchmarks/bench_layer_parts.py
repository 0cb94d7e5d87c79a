"""Each part of a decoder layer's training step alone, on one GPU: the alternatives ftkit can pick between.

Where ``bench_train_gpu.py`` measures whole runs (whose windows vary by a few percent between calls), this times
one part at a time, forward and backward, on one packed micro-batch of Phi-3-mini's layer shape (hidden 3072, 32
heads of 96, MLP 8192, LoRA r=8, ~14k tokens of ultrachat-like examples, bf16), with CUDA events: the median of
5 groups of 10 calls after a warm-up. Each alternative is also compared with the first of its group (largest
relative difference of output and input gradient), so a faster one that computes something else shows.

- ``lora``: each LoRA'd projection as ftkit's fused layer computes it, adapter product after the base GEMM
  (``adapter-after``) or first, the base GEMM adding it in its epilogue (``in-epilogue``), and as peft computes it;
- ``swiglu``: Phi-3's MLP activation on the fused gate/up output: liger-kernel's SwiGLU on the two chunks, and
  ftkit's ``gate_up_swiglu`` kernel;
- ``rope``: splitting the fused qkv output and rotating q and k: liger-kernel's RoPE after a split, and ftkit's
  ``qkv_rope`` kernel;
- ``attention``: variable-length causal attention: PyTorch's flash kernel (``varlen_attn``, what ftkit uses) and
  cuDNN's ragged attention (``aten._cudnn_attention_forward``/``backward``, which ``varlen_attn`` does not use
  yet), where this torch and cuDNN run it.

    python benchmarks/bench_layer_parts.py [--tokens 14051] [--parts lora,swiglu,rope,attention] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_gpu import lengths  # the same example lengths as the training benchmark

HIDDEN, HEADS, HEAD_DIM, MLP, RANK, SCALE = 3072, 32, 96, 8192, 8, 16.0  # Phi-3-mini; alpha 128 / r 8
PROJECTIONS = {"qkv_proj": (HIDDEN, 3 * HIDDEN), "o_proj": (HIDDEN, HIDDEN), "gate_up_proj": (HIDDEN, 2 * MLP),
               "down_proj": (MLP, HIDDEN)}  # fmt: skip


def bounds(tokens: int) -> list[int]:
    """Example boundaries of one packed micro-batch of about ``tokens`` tokens."""
    cuts = [0]
    for n in itertools.cycle(lengths(400)):
        if cuts[-1] + n > tokens:
            break
        cuts.append(cuts[-1] + n)
    return cuts


def timed(torch: Any, step: Callable[[], Any], groups: int = 5, calls: int = 10) -> float:
    """Milliseconds a call of ``step``: the median of ``groups`` groups of ``calls`` calls, after two warm-ups."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    results = []
    for _ in range(groups):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            step()
        end.record()
        torch.cuda.synchronize()
        results.append(start.elapsed_time(end) / calls)
    return sorted(results)[groups // 2]


def rel(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def fwd_bwd(torch: Any, function: Callable[..., Any], inputs: list[Any], grad: Any) -> Callable[[], Any]:
    """A step: ``function(*inputs)`` and its backward against ``grad`` (the inputs' gradients cleared first)."""

    def step() -> Any:
        for x in inputs:
            x.grad = None
        out = function(*inputs)
        first = out[0] if isinstance(out, tuple) else out
        grads = grad if isinstance(grad, tuple) else (grad,)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, grads)
        return first

    return step


def compare(torch: Any, label: str, rows: list[dict[str, Any]], steps: dict[str, Callable[[], Any]],
            inputs: list[Any]) -> None:  # fmt: skip
    """Time each alternative; record its difference from the first (output and first input's gradient)."""
    reference = None
    for name, step in steps.items():
        row: dict[str, Any] = {"part": label, "variant": name}
        try:
            out = step()
            got = (out.detach().clone(), inputs[0].grad.detach().clone())
            if reference is None:
                reference = got
            else:
                row["rel_out"], row["rel_grad"] = rel(got[0], reference[0]), rel(got[1], reference[1])
            row["ms"] = timed(torch, step)
        except Exception as error:  # an alternative this torch or GPU cannot run is a row saying so
            row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        print(json.dumps(row), flush=True)
        rows.append(row)


def lora_part(torch: Any, tokens: int, rows: list[dict[str, Any]]) -> None:
    from ftkit.backends.local.training import fused_lora

    for name, (fan_in, fan_out) in PROJECTIONS.items():
        x = torch.randn(tokens, fan_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(fan_out, fan_in, device="cuda", dtype=torch.bfloat16) / math.sqrt(fan_in)
        a = (torch.randn(RANK, fan_in, device="cuda", dtype=torch.bfloat16) / math.sqrt(fan_in)).requires_grad_()
        b = (torch.randn(fan_out, RANK, device="cuda", dtype=torch.bfloat16) * 0.1).requires_grad_()
        grad = torch.randn(tokens, fan_out, device="cuda", dtype=torch.bfloat16)

        def peft_like(x: Any, a: Any, b: Any, w: Any = w) -> Any:
            return torch.nn.functional.linear(x, w) + torch.nn.functional.linear(x, a).matmul(b.t()) * SCALE

        def fused(in_epilogue: bool, w: Any = w) -> Callable[..., Any]:
            function = fused_lora.lora_linear_function(in_epilogue)
            return lambda *t: function.apply(t[0], w, None, t[1], t[2], SCALE)  # (x, a, b)

        steps = {
            "adapter-after": fwd_bwd(torch, fused(False), [x, a, b], grad),
            "in-epilogue": fwd_bwd(torch, fused(True), [x, a, b], grad),
            "peft": fwd_bwd(torch, peft_like, [x, a, b], grad),
        }
        compare(torch, f"lora {name}", rows, steps, [x, a, b])


def swiglu_part(torch: Any, tokens: int, rows: list[dict[str, Any]]) -> None:
    from ftkit.backends.local.training import gate_up_swiglu

    source = torch.randn(tokens, 2 * MLP, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, MLP, device="cuda", dtype=torch.bfloat16)
    steps: dict[str, Callable[[], Any]] = {}
    try:
        from liger_kernel.transformers.swiglu import _swiglu_dispatch

        def liger(x: Any) -> Any:
            gate, up = (x * 1).chunk(2, dim=-1)  # `* 1`: a projection's output, not a leaf
            return _swiglu_dispatch(gate, up)

        steps["liger (chunks)"] = fwd_bwd(torch, liger, [source], grad)
    except ImportError:
        steps["torch (chunks)"] = fwd_bwd(torch, lambda x: gate_up_swiglu.reference(x * 1), [source], grad)
    steps["ftkit gate_up_swiglu"] = fwd_bwd(torch, lambda x: gate_up_swiglu.swiglu(x * 1), [source], grad)
    compare(torch, "swiglu", rows, steps, [source])


def rope_part(torch: Any, tokens: int, rows: list[dict[str, Any]]) -> None:
    from transformers.models.phi3 import modeling_phi3

    from ftkit.backends.local.training import qkv_rope

    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb as rotate
    except ImportError:
        rotate = modeling_phi3.apply_rotary_pos_emb
    qkv = torch.randn(tokens, 3 * HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    angles = torch.arange(tokens, device="cuda")[:, None] % 2048 * torch.rand(HEAD_DIM // 2, device="cuda")
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    grads = tuple(torch.randn(tokens, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def split_then_rotate(x: Any) -> Any:
        q, k, v = (x * 1).split((HIDDEN, HIDDEN, HIDDEN), dim=-1)
        shape = (1, tokens, HEADS, HEAD_DIM)
        q, k = rotate(q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), cos[None], sin[None])
        return q[0].transpose(0, 1), k[0].transpose(0, 1), v.view(tokens, HEADS, HEAD_DIM)

    steps = {
        "split + RoPE": fwd_bwd(torch, split_then_rotate, [qkv], grads),
        "ftkit qkv_rope": fwd_bwd(torch, lambda x: qkv_rope.split_rope(x * 1, cos, sin, HEADS, HEADS, HEAD_DIM),
                                  [qkv], grads),
    }  # fmt: skip
    compare(torch, "rope", rows, steps, [qkv])


def attention_part(torch: Any, tokens: int, rows: list[dict[str, Any]]) -> None:
    from ftkit.flash_varlen import varlen_attention

    cuts = bounds(tokens)
    total = cuts[-1]
    cu = torch.tensor(cuts, dtype=torch.int32, device="cuda")
    longest = max(b - a for a, b in itertools.pairwise(cuts))
    scale = 1 / math.sqrt(HEAD_DIM)
    q, k, v = (
        torch.randn(total, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    grad = torch.randn(total, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)

    class Cudnn(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any) -> Any:
            out, lse, _, _, _, _, seed, offset, _ = torch.ops.aten._cudnn_attention_forward(
                q, k, v, None, cu, cu, longest, longest, True, 0.0, True, False, scale=scale
            )
            ctx.save_for_backward(q, k, v, out, lse, seed, offset)
            return out

        @staticmethod
        def backward(ctx: Any, dout: Any) -> Any:
            q, k, v, out, lse, seed, offset = ctx.saved_tensors
            return torch.ops.aten._cudnn_attention_backward(
                dout.contiguous(), q, k, v, out, lse, seed, offset, None, cu, cu, longest, longest, 0.0, True,
                scale=scale,
            )  # fmt: skip

    print(f"attention: {len(cuts) - 1} examples, {total} tokens, longest {longest}; "
          f"cudnn schema: {torch.ops.aten._cudnn_attention_forward.default._schema}", flush=True)  # fmt: skip
    steps = {
        "flash varlen_attn": fwd_bwd(torch, lambda q, k, v: varlen_attention(q, k, v, tuple(cuts), cu, longest, scale),
                                     [q, k, v], grad),
        "cuDNN ragged": fwd_bwd(torch, Cudnn.apply, [q, k, v], grad),
    }  # fmt: skip
    compare(torch, "attention", rows, steps, [q, k, v])


PARTS = {"lora": lora_part, "swiglu": swiglu_part, "rope": rope_part, "attention": attention_part}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=14051, help="tokens of the micro-batch (the planner's, H100)")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"Python {platform.python_version()}", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for part in args.parts.split(","):
        torch.manual_seed(0)
        PARTS[part](torch, args.tokens, rows)
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
