"""Scaling of ftkit's training loop over the GPUs of one host: 1, 2, 4 (or 8) torchrun ranks, the same call.

The model, data and settings are ``bench_train_gpu.py``'s (Phi-3-mini's shape, random bf16 weights, LoRA r=8 on
qkv/o/gate_up/down, ultrachat-like lengths); each rank trains ``--batch`` conversations a step (weak scaling:
the global batch grows with the ranks, as ``per_device_train_batch_size`` does). The 1-GPU row is the plain
one-process :func:`~ftkit.backends.local.training.train`; the others run it on N ranks through
:class:`~ftkit.backends.local.distributed.TorchRanks` with the chosen sharding, started by ``torch.distributed.run``
with NVLink multicast off (``launcher.NO_MULTICAST``). Scaling efficiency = tokens/s per GPU on N over
tokens/s on 1.

    python benchmarks/bench_train_multigpu.py --nproc 1,2,4 [--sharding ddp|zero2|zero3] [--steps 24]
    python benchmarks/bench_train_multigpu.py --small --nproc 1,2 --steps 4   # CPU smoke test, gloo
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_train_gpu", _HERE / "bench_train_gpu.py")
if _spec is None or _spec.loader is None:
    raise ImportError(f"cannot load {_HERE / 'bench_train_gpu.py'}")
single = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(single)


def child(args: argparse.Namespace) -> int:
    """One rank (or the one process): train, and on rank 0 print the result."""
    import torch

    from ftkit.backends.local.training import TrainConfig, train
    from ftkit.backends.local.training.ranks import Ranks, TorchRanks

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ranks: Ranks = Ranks()
    if world > 1:
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        ranks = TorchRanks(args.sharding, device)
    config = TrainConfig(
        model_dir=args.model,
        train_file=args.data,
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps + 1,
        per_device_train_batch_size=args.batch,
        max_seq_length=4096,
        learning_rate=1e-4,
        lora_r=8,
        lora_alpha=128,
        lora_dropout=0.0,
        lora_target_modules=single.LORA_TARGETS,
        logging_steps=4,
        evaluation_strategy="disable",
        save_steps=10**6,
        token_cache_dir=args.cache,
        device=device,
    )
    sink = single.Windows()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = train(config, metrics=sink, stop_after_steps=args.steps, progress="none", ranks=ranks)
    if ranks.main:
        steady = sink.tokens_per_second[1:] or sink.tokens_per_second
        tps = statistics.median(steady) if steady else result.tokens / result.runtime_s
        out = {
            "nproc": world,
            "sharding": args.sharding if world > 1 else "one process",
            "tokens_per_second": tps,
            "tokens_per_second_per_gpu": tps / world,
            "mfu": 4 * single.n_params(Path(args.model)) * tps / world / (single.PEAK_TFLOPS * 1e12),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "loss": [round(x, 4) for x in sink.loss],
        }
        print("RESULT " + json.dumps(out), flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def spawn(n: int, args: argparse.Namespace, model: Path, data: Path, cache: Path) -> dict[str, Any]:
    from ftkit.backends.local.launcher import NO_MULTICAST

    script = [__file__, "--child", "--model", str(model), "--data", str(data), "--cache", str(cache)]
    script += ["--steps", str(args.steps), "--batch", str(args.batch), "--sharding", args.sharding]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"] if n > 1 else []
    began = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *launcher, *script],
            env={**os.environ, **NO_MULTICAST},
            capture_output=True,
            text=True,
            timeout=args.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"nproc": n, "error": f"timed out after {args.timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        print(f"--- {n} processes failed ---\n{tail}", file=sys.stderr)
        return {"nproc": n, "error": tail[-400:]}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--nproc", default="1,2,4", help="process counts to run, comma-separated (1 first)")
    parser.add_argument("--sharding", default="ddp", choices=("ddp", "zero2", "zero3"))
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=16, help="conversations per rank and step")
    parser.add_argument("--timeout", type=float, default=480)
    parser.add_argument("--root", type=Path, help="keep models and data here (default: a temporary directory)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--small", action="store_true", help="a small model of Phi-3's kind: a CPU smoke test")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    import torch

    root = args.root or Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in single.conversations(args.rows)), encoding="utf-8")
    model = single.build(root, args.layers, args.small)
    results = [spawn(int(n), args, model, data, root / "tokens") for n in args.nproc.split(",") if n]
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "sharding": args.sharding,
        "batch_per_rank": args.batch,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    base = next((r for r in results if r.get("nproc") == 1 and "error" not in r), None)
    print(f"{report['device']} x{report['gpus']}, torch {torch.__version__}, {args.sharding}, {args.batch}/rank/step")
    print(f"{'processes':>9} {'tokens/s':>10} {'per GPU':>9} {'efficiency':>10} {'MFU':>6} {'peak GiB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['nproc']:>9} failed: {r['error'][-120:]!r}")
            continue
        eff = r["tokens_per_second_per_gpu"] / base["tokens_per_second"] if base else float("nan")
        peak = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else f"{'-':>9}"
        print(
            f"{r['nproc']:>9} {r['tokens_per_second']:10.0f} {r['tokens_per_second_per_gpu']:9.0f} "
            f"{eff:10.1%} {r['mfu']:6.1%} {peak}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
