"""Decode attention on a GPU: ftkit's Triton kernel (each row's own length) against masked SDPA (the longest row's).

One layer of the Phi-3-mini shape (32 heads of 96, no grouping) over a slot cache of ``--slots`` x ``--context``
positions, bfloat16. Rows have lengths drawn from ``--lengths`` (prompts of 150-250 tokens plus up to 128 answer
tokens by default). Each variant is captured as a CUDA graph of 32 calls (one per layer, as in a decode step) and
replayed; the figure is the time of one call and the bandwidth of the bytes of keys and values it must read.

    python benchmarks/bench_decode_attention.py [--rows 16,64,256] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="16,64,256")
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--lengths", default="160,380", help="lowest,highest attended length")
    parser.add_argument("--sweep", action="store_true", help="try every tuning, not only the default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from ftkit.serve.engines.continuous import kernels

    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    heads, dim = 32, 96
    low, high = (int(x) for x in args.lengths.split(","))
    k_cache = torch.randn(args.slots, heads, args.context, dim, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    rng = random.Random(0)
    results: list[dict[str, Any]] = []

    def graph_ms(fn: Any) -> float:
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(32):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            graph.replay()
        stop.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(stop)) / 320

    tunings = [kernels.TUNING]
    if args.sweep:
        tunings += [
            kernels.AttentionTuning(block_n=b, warps=w, stages=s, waves=v)
            for b, w, s, v in itertools.product((32, 64, 128), (4, 8), (1, 3), (1, 4, 8))
        ]
    for rows in (int(r) for r in args.rows.split(",")):
        lengths = [rng.randrange(low, high + 1) for _ in range(rows)]
        positions = torch.tensor([n - 1 for n in lengths], device="cuda")
        q = torch.randn(rows, heads, dim, device="cuda", dtype=torch.bfloat16)
        need = sum(lengths) * heads * dim * 2 * 2  # bytes of keys and values the rows attend
        width = -(-max(lengths) // 128) * 128
        mask = (torch.arange(width, device="cuda")[None] <= positions[:, None])[:, None, None]

        def sdpa(q: Any = q, mask: Any = mask, width: int = width, rows: int = rows) -> Any:
            return F.scaled_dot_product_attention(
                q[:, :, None], k_cache[:rows, :, :width], v_cache[:rows, :, :width], attn_mask=mask
            )

        reference = sdpa()[:, :, 0]
        ms = graph_ms(sdpa)
        row = {
            "rows": rows,
            "variant": f"sdpa masked to {width}",
            "ms": round(ms, 4),
            "tb_s": round(need / ms / 1e9, 2),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
        best: tuple[float, str] | None = None
        for tuning in tunings:
            fn = functools.partial(
                kernels.decode_attention, q, k_cache, v_cache, positions, 1 / math.sqrt(dim), tuning=tuning
            )
            try:
                err = float((fn().float() - reference.float()).abs().max())
                ms = graph_ms(fn)
            except Exception as exc:  # a tuning the compiler refuses (shared memory): reported, skipped
                print(json.dumps({"rows": rows, "variant": repr(tuning), "error": str(exc)[:200]}), flush=True)
                continue
            row = {"rows": rows, "variant": repr(tuning), "ms": round(ms, 4), "tb_s": round(need / ms / 1e9, 2)}
            row["max_abs_err"] = round(err, 4)
            results.append(row)
            if best is None or ms < best[0]:
                best = (ms, repr(tuning))
            print(json.dumps(row), flush=True)
        if best:
            print(json.dumps({"rows": rows, "best": best[1], "ms": round(best[0], 4)}), flush=True)
    meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
