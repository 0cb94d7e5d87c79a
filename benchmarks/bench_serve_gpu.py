"""GPU mode of ``bench_serve.py``: the local endpoint on one GPU, Phi-3-mini shape, streamed through ftkit's server.

The model has Phi-3-mini's shape (3.8B parameters, 32 layers, hidden 3072, vocabulary 32064; ``--shape
llama3-8b``: Llama-3-8B's, 8 KV heads of 32, vocabulary 128256, context 8192) with random bfloat16 weights, built
from a config (nothing is downloaded), and a word-level tokenizer (every generated id is one word, so every token
is one streamed chunk). Prompts are 150-250 random words (``--workload short``) or chat-shaped (``--workload
chat``: log-normal lengths, median 700 words, capped at 3,000), answers ``--max-tokens`` tokens, greedy. Every
stream draws its prompts from its own seeded generator, so ``transformers-inproc`` runs on the very prompts the
served streams send first. Each path is a real endpoint (its own server process) and is loaded by
the official ``openai`` async client, spread over several client processes so that the client's own parsing is
not what limits the rate:

* ``static``: today's batcher (left-padded batches of ``--static-batch``) on the GPU in bfloat16;
* ``continuous``: ftkit's continuous batcher (slot KV cache, CUDA-graph decode steps, ``--slots`` slots);
* ``transformers``: transformers' own continuous batching (``ContinuousBatchingManager``, paged attention)
  behind the same server (``engine="transformers"``), the same clients and prompts;
* ``transformers-inproc``: the same batching through ``model.generate_batch`` in this process, no HTTP (what
  transformers reaches without a server in front of it).

For each path and concurrency it reports output tokens/s over the run (prefill included), time to first token
p50/p95 and inter-token latency p95 (between consecutive streamed chunks).

    python benchmarks/bench_serve.py --gpu [--seconds 20] [--max-tokens 128] [--levels 16,64,256] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing
import os
import platform
import random
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

WORDS = 32000
SPECIALS = ("<unk>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_model(out: Path, layers: int, *, tiny: bool = False, shape: str = "phi3") -> Path:
    """Save a random bfloat16 model of the shape and a word-level tokenizer.

    ``tiny`` (a dry run of the benchmark on a machine without a GPU): hidden size 128, float32, on the CPU.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(WORDS)}
    for n, special in enumerate(SPECIALS):
        vocab[special] = WORDS + n
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>", model_max_length=4096
    )
    hf_tok.add_special_tokens({"additional_special_tokens": list(SPECIALS[2:])})
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    heads = 4 if tiny else 32
    common = {
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "pad_token_id": WORDS + 1,
        "eos_token_id": WORDS + 4,
        "bos_token_id": WORDS + 1,
        "tie_word_embeddings": False,
    }
    config: Any
    if shape == "llama3-8b":
        config = LlamaConfig(
            hidden_size=128 if tiny else 4096,
            intermediate_size=256 if tiny else 14336,
            num_key_value_heads=2 if tiny else 8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            **common,
        )
        cls: Any = LlamaForCausalLM
    else:
        config = Phi3Config(
            hidden_size=128 if tiny else 3072,
            intermediate_size=256 if tiny else 8192,
            num_key_value_heads=heads,
            vocab_size=32064,
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
            sliding_window=None,
            **common,
        )
        cls = Phi3ForCausalLM
    torch.manual_seed(0)
    with torch.device("cpu" if tiny else "cuda"):
        model = cls(config).to(torch.float32 if tiny else torch.bfloat16)
    model.generation_config.eos_token_id = WORDS + 4
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


WORKLOAD = "short"  # set by main: "short" (150-250 words) or "chat" (log-normal, median 700, at most 3000)


def prompt_text(rng: random.Random) -> str:
    if WORKLOAD == "chat":  # ultrachat-like: a median near 700 tokens and a long tail to the context
        words = min(3000, max(8, int(rng.lognormvariate(math.log(700), 0.75))))
    else:
        words = rng.randrange(150, 250)
    return " ".join(f"w{rng.randrange(10, WORDS)}" for _ in range(words))


def stream_rng(level: int, stream: int) -> random.Random:
    """The prompts of one stream of a level (the served clients and transformers-inproc draw the same)."""
    return random.Random(level * 100_003 + stream)


async def _streams(
    base_url: str, key: str, streams: int, seconds: float, max_tokens: int, level: int, offset: int, start_at: float
):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0
    errors: list[str] = []
    ends: list[float] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.time() + seconds

    async def one(stream_id: int) -> None:
        nonlocal tokens
        rng = stream_rng(level, offset + stream_id)
        first = True
        while first or time.time() < deadline:
            first = False
            sent = time.perf_counter()
            last: float | None = None
            try:
                stream = await client.chat.completions.create(
                    model="demo",
                    messages=[{"role": "user", "content": prompt_text(rng)}],
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        tokens += chunk.usage.completion_tokens
                    if not chunk.choices or not chunk.choices[0].delta.content:
                        continue
                    now = time.perf_counter()
                    if last is None:
                        ttft.append(now - sent)
                    else:
                        itl.append(now - last)
                    last = now
            except Exception as exc:  # counted and reported; the run goes on
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            ends.append(time.time())

    started = time.time()
    await asyncio.gather(*(one(i) for i in range(streams)))
    await client.close()
    return {"ttft": ttft, "itl": itl, "tokens": tokens, "errors": errors, "start": started, "end": max(ends)}


def _client_process(args: tuple[str, str, int, float, int, int, int, float, str]) -> dict[str, Any]:
    global WORKLOAD
    WORKLOAD = args[-1]  # a spawned process starts from the module's default
    return asyncio.run(_streams(*args[:-1]))


def load(base_url: str, key: str, streams: int, seconds: float, max_tokens: int, *, procs: int) -> dict[str, Any]:
    """Run ``streams`` concurrent streaming clients over ``procs`` processes; merge their measurements."""
    procs = max(1, min(procs, streams))
    share = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    start_at = time.time() + 3.0  # every process starts at once, after its imports
    firsts = [sum(share[:i]) for i in range(procs)]
    jobs = [
        (base_url, key, n, seconds, max_tokens, streams, first, start_at, WORKLOAD)
        for n, first in zip(share, firsts, strict=True)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.map(_client_process, jobs)
    ttft = sorted(x for p in parts for x in p["ttft"])
    itl = sorted(x for p in parts for x in p["itl"])
    tokens = sum(p["tokens"] for p in parts)
    errors = [e for p in parts for e in p["errors"]]
    elapsed = max(p["end"] for p in parts) - min(p["start"] for p in parts)

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else float("nan")

    return {
        "streams": streams,
        "requests": len(ttft),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:3],
        "seconds": round(elapsed, 2),
        "out_tok_s": round(tokens / elapsed) if elapsed > 0 else 0,
        "ttft_p50_ms": pct(ttft, 0.5),
        "ttft_p95_ms": pct(ttft, 0.95),
        "itl_p50_ms": pct(itl, 0.5),
        "itl_p95_ms": pct(itl, 0.95),
    }


def serve_path(home: Path, model_dir: Path, path: str, args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    from ftkit.backends.base import DeploymentSpec, EndpointSpec, RegisteredModel
    from ftkit.backends.local.endpoints import LocalEndpoints
    from ftkit.deployment_settings import DeploymentSettings, ServerSettings

    static = path == "static"
    settings = ServerSettings(
        engine=path,
        max_batch_size=args.static_batch if static else args.slots,
        max_context=args.context,
        max_new_tokens_cap=max(1024, args.max_tokens),
        prefill_tokens=args.prefill_tokens,
    )
    endpoints = LocalEndpoints(home, settings, load_timeout_s=900)
    name = f"bench-{path}"
    endpoints.create_endpoint(EndpointSpec(name=name))
    try:
        model = RegisteredModel(name="bench-shape", version="1", id="models:/bench-shape/1", path=model_dir)
        started = time.perf_counter()
        endpoints.create_deployment(
            DeploymentSpec(
                name="demo",
                endpoint=name,
                model=model,
                settings=DeploymentSettings(max_queue=2048, request_timeout_ms=600_000),
            )
        )
        load_s = time.perf_counter() - started
        info = endpoints.set_traffic(name, {"demo": 100})
        assert info.openai_uri is not None
        base = info.openai_uri.removesuffix("/chat/completions")
        key = endpoints.get_keys(name).primary
        placement = json.loads(endpoints._files(name).config_path.read_text())["deployments"]["demo"].get("placement")
        print(f"{path}: loaded in {load_s:.1f}s, placement {placement}", flush=True)
        warm = time.perf_counter()
        # Warm-up: one request per stream of the largest level (the continuous engine captures its CUDA graphs
        # here); the static batcher needs only its first batch.
        load(base, key, min(args.levels) if static else max(args.levels), 0.0, args.max_tokens, procs=args.procs)
        print(f"{path}: warmed up in {time.perf_counter() - warm:.1f}s", flush=True)
        for streams in args.levels:
            row = {"path": path, **load(base, key, streams, args.seconds, args.max_tokens, procs=args.procs)}
            row["placement"] = placement
            print(json.dumps(row), flush=True)
            out.append(row)
    finally:
        endpoints.delete_endpoint(name)


def engine_floor(model_dir: Path, args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    """Time ftkit's decode step and a prefill alone (no HTTP, no scheduler): the floor under the served figures."""
    import torch

    from ftkit.serve.engines.continuous.slots import SlotDecoder
    from ftkit.serve.engines.generation import LoadedModel

    model = LoadedModel(model_dir, "cuda")

    def timed(fn: Any, repeat: int) -> float:
        with torch.inference_mode():
            return _timed(fn, repeat)

    def _timed(fn: Any, repeat: int) -> float:
        fn()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(stop)) / repeat

    # The fused step (the default on a GPU) and transformers' modules with masked SDPA, one after the other.
    for fused in (True, False):
        decoder = SlotDecoder(model.model, slots=args.slots, context=args.context or 512, fused=fused)
        kind = "fused" if decoder.fused else "modules"
        for rows in args.levels:
            rows = min(rows, args.slots)
            decoder.positions.fill_(300)
            decoder.tokens.random_(10, WORDS)
            graph_ms = timed(functools.partial(decoder.decode, rows, 301), 20)
            eager_ms = timed(functools.partial(decoder._step, rows, 0 if decoder.fused else 384), 5)
            row = {"path": "engine-floor", "step": kind, "rows": rows, "graph_step_ms": round(graph_ms, 2)}
            row.update(eager_step_ms=round(eager_ms, 2), graph_tok_s=round(rows / graph_ms * 1000))
            print(json.dumps(row), flush=True)
            out.append(row)
        rng = random.Random(0)
        for n in (2, 8, 32):
            prompts = [[rng.randrange(10, WORDS) for _ in range(200)] for _ in range(n)]
            prefill_ms = timed(functools.partial(decoder.prefill, list(range(n)), prompts), 5)
            row = {"path": "engine-floor", "step": kind, f"prefill_{n}x200_ms": round(prefill_ms, 2)}
            print(json.dumps(row), flush=True)
            out.append(row)
        del decoder
        torch.cuda.empty_cache()


def transformers_inproc(model_dir: Path, args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    """transformers' continuous batching (``generate_batch``) on the same prompts, in-process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda").eval()
    gc = GenerationConfig(
        max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens, do_sample=False, eos_token_id=None
    )
    gc.pad_token_id = tok.pad_token_id
    for n in args.cb_levels:
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": prompt_text(stream_rng(n, i))}], add_generation_prompt=True
            )
            for i in range(n)
        ]
        prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = None
        # transformers 5.17 (the device's) wants "paged|sdpa"; later versions refuse it and take plain "sdpa".
        for attn in ("paged|sdpa", "sdpa"):
            model.config._attn_implementation = attn
            try:
                with torch.no_grad():
                    result = model.generate_batch(inputs=prompts, generation_config=gc, progress_bar=False)
                break
            except ValueError as exc:
                if "not supported for continuous batching" not in str(exc):
                    raise
        assert result is not None
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        produced = sum(len(r.generated_tokens) for r in result.values())
        row = {
            "path": "transformers-inproc (no HTTP, includes its warm-up)",
            "prompt_tokens": sum(len(p) for p in prompts),
            "streams": n,
            "requests": n,
            "errors": 0,
            "seconds": round(elapsed, 2),
            "out_tok_s": round(produced / elapsed),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        }
        print(json.dumps(row), flush=True)
        out.append(row)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_serve.py --gpu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per level (requests then finish)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--levels", default="16,64,256", help="concurrent streams")
    parser.add_argument(
        "--paths", default="continuous,static,transformers", help="paths, each optionally @short or @chat"
    )
    parser.add_argument("--cb-levels", default="256", help="transformers-inproc: requests per run")
    parser.add_argument("--slots", type=int, default=256, help="continuous engine: slots")
    parser.add_argument("--context", type=int, default=0, help="max_context (0: the model's, the default)")
    parser.add_argument(
        "--prefill-tokens", type=int, default=8192, help="continuous engine: prompt tokens per step (the default)"
    )
    parser.add_argument("--workload", choices=("short", "chat"), default="short", help="prompt lengths")
    parser.add_argument("--shape", choices=("phi3", "llama3-8b"), default="phi3", help="model shape")
    parser.add_argument("--short-max-tokens", type=int, default=128, help="answer length of a path@short")
    parser.add_argument("--short-levels", default="256", help="streams of a path@short (beside another workload)")
    parser.add_argument("--static-batch", type=int, default=64, help="static batcher: batch size")
    parser.add_argument("--procs", type=int, default=8, help="client processes")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="a dry run: tiny model, CPU allowed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.cb_levels = [int(x) for x in args.cb_levels.split(",")]
    args.short_levels = [int(x) for x in args.short_levels.split(",")]
    global WORKLOAD
    WORKLOAD = args.workload

    import torch
    import transformers

    if not torch.cuda.is_available() and not args.tiny:
        print("GPU mode needs a CUDA GPU (--tiny runs a dry run on the CPU)")
        return 2
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ftkit-bench-gpu-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        model_dir = build_model(root / "model", args.layers, tiny=args.tiny, shape=args.shape)
        print(f"built and saved the model in {time.perf_counter() - started:.1f}s", flush=True)
        from transformers import AutoTokenizer

        from ftkit.serve.contract.prompts import lock_free_decoder

        # The engine detokenizes every row at every step: say which path it takes (transformers' or the backend's).
        lock_free = lock_free_decoder(AutoTokenizer.from_pretrained(model_dir)) is not None
        print(f"lock-free detokenizer: {'yes' if lock_free else 'no'}", flush=True)
        for spec in args.paths.split(","):
            # "continuous@short": a path with its own workload, so one call can measure both.
            path, _, workload = spec.partition("@")
            WORKLOAD = workload or args.workload
            run = args
            if WORKLOAD == "short" and args.workload != "short":
                # The short-prompt regression check beside a chat run: its own answer length and levels.
                run = argparse.Namespace(**{**vars(args), "max_tokens": args.short_max_tokens})
                run.levels = run.cb_levels = args.short_levels
            first_row = len(rows)
            try:
                if path == "transformers-inproc":
                    transformers_inproc(model_dir, run, rows)
                elif path == "engine-floor":
                    engine_floor(model_dir, run, rows)
                    torch.cuda.empty_cache()  # its model and cache are gone with the call
                else:
                    serve_path(root / "home", model_dir, path, run, rows)
            except Exception:
                failures.append(spec)
                traceback.print_exc()
            for row in rows[first_row:]:
                row["workload"] = WORKLOAD
                row["max_tokens"] = run.max_tokens
            if args.json:
                args.json.write_text(json.dumps({"rows": rows}, indent=2))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "tiny dry run" if args.tiny else f"{args.shape} shape, {args.layers} layers, random bf16 weights",
        "workload": args.workload,
        "max_context": args.context or "the model's",
        "max_tokens": args.max_tokens,
        "seconds_per_level": args.seconds,
        "client_processes": args.procs,
    }
    print(
        f"{'path':<16} {'streams':>7} {'reqs':>5} {'err':>4} {'out tok/s':>9} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'ITL p95':>8}"
    )

    def label(r: dict[str, Any]) -> str:
        return f"{r['path'][:10]}@{r.get('workload', '')}"

    for r in rows:
        if "streams" not in r:
            continue
        print(
            f"{label(r):<16} {r['streams']:>7} {r['requests']:>5} {r['errors']:>4} {r['out_tok_s']:>9} "
            f"{r.get('ttft_p50_ms', '-'):>9} {r.get('ttft_p95_ms', '-'):>9} {r.get('itl_p95_ms', '-'):>8}"
        )
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "failures": failures}, indent=2))
    return 1 if failures or any(r.get("errors") for r in rows) else 0
