"""Load test of the local endpoint server: CPU mode (default) and GPU mode (``--gpu``).

CPU mode: batched vs one-request-at-a-time generation, same run, same model.

Starts two real endpoints on a tiny random Phi-3 model (loopback only): one with dynamic batching
(``max_batch_size=16``) and one that generates one request at a time (``max_batch_size=1``). For 1, 4 and 16
concurrent clients it sends greedy ``/v1/chat/completions`` requests (``max_tokens`` fixed) for a bounded time
and number of requests, and reports requests/s, output tokens/s and p50/p95 latency. It fails (exit 1) on any
error answer or if batched serving is not at least ``--min-speedup`` times faster at 16 clients.

    python benchmarks/bench_serve.py [--seconds 6] [--max-requests 1000] [--max-tokens 64] [--json out.json]

GPU mode (``--gpu``, see :mod:`bench_serve_gpu`): the Phi-3-mini shape with random bfloat16 weights, streamed
through ftkit's own server with the official ``openai`` async client at 16, 64 and 256 concurrent streams:
today's static batcher moved to the GPU, ftkit's continuous batcher, and transformers' own continuous
batching (``generate_batch``, in-process) for reference.

    python benchmarks/bench_serve.py --gpu [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ftkit.backends.base import DeploymentSpec, EndpointSpec, RegisteredModel
from ftkit.backends.local.endpoints import LocalEndpoints
from ftkit.backends.local.tiny import make_tiny_model
from ftkit.deployment_settings import DeploymentSettings, ServerSettings

CONCURRENCY = (1, 4, 16)


async def load(url: str, key: str, clients: int, seconds: float, max_requests: int, max_tokens: int) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": "What is 12 plus 30?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    sent = 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, sent
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            start = time.perf_counter()
            try:
                resp = await http.post(url, json=body)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - start)
            if resp.status_code != 200:
                errors.append(str(resp.status_code))
                continue
            tokens += resp.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=120) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
        "p50_ms": round(pct(0.50), 1),
        "p95_ms": round(pct(0.95), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else float("nan"),
    }


def serve_and_measure(home: Path, model: RegisteredModel, batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    endpoints = LocalEndpoints(home, ServerSettings(max_batch_size=batch))
    name = f"bench-b{batch}"
    endpoints.create_endpoint(EndpointSpec(name=name))
    try:
        endpoints.create_deployment(
            DeploymentSpec(
                name="demo",
                endpoint=name,
                model=model,
                settings=DeploymentSettings(max_queue=256, request_timeout_ms=120_000),
            )
        )
        info = endpoints.set_traffic(name, {"demo": 100})
        assert info.openai_uri is not None
        key = endpoints.get_keys(name).primary
        # Warm up (first calls pay for lazy initialisation in torch and the tokenizer).
        asyncio.run(load(info.openai_uri, key, 2, 1.0, 8, args.max_tokens))
        return [
            {
                "mode": "batched" if batch > 1 else "one-at-a-time",
                "max_batch_size": batch,
                **asyncio.run(load(info.openai_uri, key, c, args.seconds, args.max_requests, args.max_tokens)),
            }
            for c in CONCURRENCY
        ]
    finally:
        endpoints.delete_endpoint(name)


def main() -> int:
    if "--gpu" in sys.argv[1:]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_serve_gpu import main as gpu_main

        return gpu_main([a for a in sys.argv[1:] if a != "--gpu"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="time per concurrency level")
    parser.add_argument("--max-requests", type=int, default=1000, help="request cap per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--hidden-size", type=int, default=64, help="the tiny model's hidden size")
    parser.add_argument("--layers", type=int, default=4, help="the tiny model's layers")
    parser.add_argument("--min-speedup", type=float, default=4.0, help="required batched/one-at-a-time rps at 16")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch
    import transformers

    with tempfile.TemporaryDirectory(prefix="ftkit-bench-serve-") as tmp:
        root = Path(tmp)
        path = make_tiny_model(root / "model", hidden_size=args.hidden_size, num_layers=args.layers)
        model = RegisteredModel(name="tiny", version="1", id="models:/tiny/1", path=path)
        rows = serve_and_measure(root / "home", model, 16, args) + serve_and_measure(root / "home", model, 1, args)

    print(
        f"{'mode':<14} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'tok/s':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:<14} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>7} "
            f"{r['tokens_per_s']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8}"
        )
    at16 = {r["mode"]: r["rps"] for r in rows if r["clients"] == 16}
    speedup = at16["batched"] / at16["one-at-a-time"] if at16["one-at-a-time"] else float("inf")
    errors = sum(r["errors"] for r in rows)
    print(f"speedup at 16 clients: {speedup:.1f}x (required {args.min_speedup}x); errors: {errors}")
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": f"tiny Phi-3, hidden {args.hidden_size}, {args.layers} layers",
        "max_tokens": args.max_tokens,
        "seconds_per_level": args.seconds,
    }
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "speedup_at_16": speedup}, indent=2))
    return 0 if errors == 0 and speedup >= args.min_speedup else 1


if __name__ == "__main__":
    sys.exit(main())
