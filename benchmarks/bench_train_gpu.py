"""LoRA training throughput on one GPU: the stock Trainer + PEFT path, ftkit bf16 LoRA and ftkit 4-bit QLoRA.

Two shapes, random bf16 weights (throughput needs the shapes, not trained weights): Phi-3-mini-4k-instruct
(3.82B parameters, 32 query and KV heads) and Llama-3-8B (8.03B, 32 layers, hidden 4096, 8 KV heads, MLP 14336,
vocabulary 128256: grouped-query attention, as most models fine-tuned now). LoRA r=8, alpha=128, dropout 0 on
every attention and MLP projection. Conversations have ultrachat-like lengths (log-normal, median ~1.1k tokens,
capped at 4096, as ``shared/bench/hf_lora_baseline.py``) and the loss is on assistant tokens only (~3/4 of them).
MFU counts 4N FLOPs per real token (frozen base: forward 2N, input gradients 2N; attention not counted) over
989 TFLOP/s (H100/H200 dense bf16), 4-bit runs too (their de-quantization is overhead, not useful work).

Each path runs in its own process (clean peak memory; liger-kernel patches transformers' classes process-wide):

- ``stock``: transformers ``Trainer`` + PEFT defaults (float32 adapters, SDPA), batch 1, no checkpointing;
- ``fast``: :func:`ftkit.backends.local.training.train` as ``ftkit run`` calls it on a GPU (every default);
- ``22gib``: the same with ``gpu_memory_gib: 22`` (a 24 GB card) and ``max_seq_length: 4096``;
- ``qlora``: ``fast`` with ``quantize: 4bit`` (bitsandbytes NF4, double quantization, bf16 compute);
- ``qlora-22gib``: ``qlora`` planned for 22 GiB;
- ``--ablate``: on a shallower model of the same layer shape, each optimisation switched on in turn
  (``--ablate-from N`` runs row N and those after it only, the earlier rows' switches applied);
- ``--profile``: where a few steps of ``fast`` spend their time (``profile_summary.py``: kernels by kind, the
  GPU's idle gaps, the host's waits) and the torch profiler's table;
- ``--try LABEL=JSON``: ``fast`` with ``budget.TUNING`` changes, beside the variants (A/B in one call).

    python benchmarks/bench_train_gpu.py [--shapes phi3,llama3-8b] [--only stock,fast,qlora] [--steps 24]
        [--ablate [--ablate-from N]] [--profile] [--try LABEL=JSON ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PEAK_TFLOPS = 989.0
PROFILED_STEPS = 3  # --profile: steps the profiler records (after 3 skipped and 1 warm-up)
LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# Phi-3-mini-4k-instruct
SHAPE = {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32, "vocab_size": 32064}
# Llama-3-8B (Llama-3.1-8B has the same shape): grouped-query attention, 4 query heads per KV head.
LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
}
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGETS = {"phi3": LORA_TARGETS, "llama3-8b": LLAMA_TARGETS}
WORDS = [f"w{i}" for i in range(600)]

# What each row of the ablation table switches on, cumulatively (budget.TUNING keys).
ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "ftkit loop, stock kernels (SDPA mask, fp32 adapters, full logits)",
        {
            "attention": "sdpa",
            "liger": False,
            "label_only_loss": False,
            "bf16_adapters": False,
            "fused_lora": False,
            "lora_in_epilogue": False,
            "split_qkv": False,
            "split_rope": False,
            "gate_up_swiglu": False,
            "sync_free_loss": False,
            "fused_add_norm": False,
        },
    ),
    ("+ bf16 adapters (float32 masters)", {"bf16_adapters": True}),
    ("+ varlen flash attention (no mask)", {"attention": "ftkit_varlen"}),
    ("+ head at label positions only, chunked", {"label_only_loss": True}),
    ("+ liger RMSNorm/SwiGLU/RoPE + fused linear CE", {"liger": True}),
    ("+ fused LoRA layers (scale and add in the GEMMs)", {"fused_lora": True}),
    ("+ fused LoRA, base GEMM adds the adapter's share in its epilogue", {"lora_in_epilogue": True}),
    ("+ ftkit attention forward (split qkv, no k/v copies)", {"split_qkv": True}),
    ("+ fused split + RoPE kernel (Triton, fused-qkv models)", {"split_rope": True}),
    ("+ fused gate/up SwiGLU kernel (Triton, fused gate_up models)", {"gate_up_swiglu": True}),
    ("+ label loss without host waits (ftkit's kernel instead of liger's)", {"sync_free_loss": True}),
    ("+ attention residual add and MLP RMSNorm fused (liger)", {"fused_add_norm": True}),
    ("+ torch.compile per decoder layer", {"compile_layers": True}),
]


def lengths(n: int, seed: int = 0, cap: int = 4096) -> list[int]:
    """Ultrachat-like conversation lengths in tokens (log-normal, median ~1100)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(math.log(1100), 0.6, size=n), 64, cap)]


def conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows whose tokenised length follows :func:`lengths` (each word is one token of the bench's tokenizer)."""
    import random

    rng = random.Random(seed)
    rows = []
    for total in lengths(n, seed):
        pairs = rng.randint(1, 4)
        messages = []
        for _ in range(pairs):
            budget = max(8, total // pairs - 8) // 2  # ~4 template tokens a message, ~2 tokens a word
            user = max(3, budget // 4)
            for role, words in (("user", user), ("assistant", max(3, budget - user))):
                messages.append({"role": role, "content": " ".join(rng.choices(WORDS, k=words))})
        rows.append({"messages": messages})
    return rows


def build(root: Path, layers: int, small: bool = False, shape_name: str = "phi3") -> Path:
    """A model of the named shape with random bf16 weights and a tokenizer that reads each bench word as a token.

    The tokenizer is the tiny model's (2,048 tokens) under the full-size embedding and head: the ids are a
    subset, the matrices are the real model's.
    """
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    from ftkit.backends.local.tiny import make_tiny_model

    out = root / f"{shape_name}-{'small' if small else 'full'}-{layers}l"
    if (out / "config.json").is_file():
        return out
    texts = [" ".join(WORDS[i : i + 40]) for i in range(0, len(WORDS), 40)] * 30
    make_tiny_model(out, texts=texts, vocab_size=2048, max_position_embeddings=4096)
    tiny = AutoConfig.from_pretrained(out)
    ids = {"bos_token_id": tiny.bos_token_id, "eos_token_id": tiny.eos_token_id, "pad_token_id": tiny.pad_token_id}
    if shape_name == "llama3-8b":
        llama = {**LLAMA3_8B, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4} if small else {}
        config: Any = LlamaConfig(
            **{**LLAMA3_8B, **llama, **({"num_key_value_heads": 2} if small else {})},
            num_hidden_layers=layers,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
            **ids,
        )
        cls: Any = LlamaForCausalLM
    else:
        shape = {**SHAPE, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4} if small else SHAPE
        config = Phi3Config(
            **shape,
            num_hidden_layers=layers,
            num_key_value_heads=shape["num_attention_heads"],
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
            sliding_window=None,
            tie_word_embeddings=False,
            **ids,
        )
        cls = Phi3ForCausalLM
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # an 8B model built in float32 first would need 32 GB
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = cls(config).to(torch.bfloat16)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out)
    del model
    return out


class Windows:
    """A metrics sink keeping each logging window's tokens/s (and stepping a profiler, if given)."""

    def __init__(self, profiler: Any = None) -> None:
        self.tokens_per_second: list[float] = []
        self.loss: list[float] = []
        self.profiler = profiler

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:  # noqa: ARG002 - the sink's signature
        if "tokens_per_second" in metrics:
            self.tokens_per_second.append(metrics["tokens_per_second"])
            self.loss.append(metrics["loss"])
        if self.profiler is not None:
            self.profiler.step()

    def flush(self) -> None:
        pass


def n_params(model_dir: Path) -> int:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    h, i, v, n = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = h * c.num_key_value_heads // c.num_attention_heads  # grouped-query attention: smaller k and v
    per_layer = h * h + 2 * h * kv + h * h + h * 2 * i + i * h + 2 * h
    return int(n * per_layer + 2 * v * h + h)


def run_ftkit(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ftkit.backends.local.training import TrainConfig, budget, train

    tuning = json.loads(args.tuning)
    budget.TUNING.update(tuning)
    extra: dict[str, Any] = {}
    if args.variant.endswith("22gib"):
        extra["gpu_memory_gib"] = 22.0
    if args.variant.startswith("qlora"):
        extra["quantize"] = "4bit"
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
        lora_target_modules=tuple(args.targets.split(",")),
        logging_steps=1 if args.variant == "profile" else 4,
        evaluation_strategy="disable",
        save_steps=10**6,
        token_cache_dir=args.cache,
        **extra,
    )
    profiler = None
    if args.variant == "profile":
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
            schedule=torch.profiler.schedule(wait=3, warmup=1, active=PROFILED_STEPS, repeat=1),
        )
        profiler.start()
    sink = Windows(profiler)
    plans: list[Any] = []
    real_plan = budget.make_plan

    def spy(*a: Any, **k: Any) -> Any:
        plan = real_plan(*a, **k)
        plans.append(plan)
        return plan

    budget.make_plan = spy  # type: ignore[assignment]  # to report the budget and checkpointing chosen
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # stop_after_steps one short of max_steps: the run stops with a checkpoint of the adapters instead of
    # merging and saving a 7.6 GB model, which is not training.
    result = train(config, metrics=sink, stop_after_steps=args.steps, progress="none")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    steady = sink.tokens_per_second[1:] or sink.tokens_per_second
    out: dict[str, Any] = {
        "variant": args.variant,
        "tuning": {**budget.TUNING},
        "budget": plans[0].budget if plans else None,
        "checkpointing": plans[0].checkpointing if plans else None,
        "steps": result.global_step,
        "tokens_per_step": result.tokens / max(result.global_step, 1),
        "tokens_per_second": statistics.median(steady) if steady else result.tokens / result.runtime_s,
        "windows": [round(x) for x in sink.tokens_per_second],
        "loss": [round(x, 4) for x in sink.loss],
        "peak_gib": round(peak, 2),
    }
    if cuda:  # the allocator's retries (a retry frees every cached block: a device-wide wait)
        stats = torch.cuda.memory_stats()
        out["alloc_retries"] = stats.get("num_alloc_retries", 0)
        out["device_allocs"] = stats.get("num_device_alloc", 0)
    if profiler is not None:
        profiler.stop()
        table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
        sys.path.insert(0, str(Path(__file__).parent))
        from profile_summary import summarize

        summary = summarize(profiler.events(), PROFILED_STEPS, torch.cuda.memory_stats() if cuda else None)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "profile.txt").write_text(summary + "\n\n" + table, encoding="utf-8")
        print(summary, file=sys.stderr)
    return out


def run_stock(args: argparse.Namespace) -> dict[str, Any]:
    """transformers Trainer + PEFT defaults, batch 1 (no padding), the same lengths, labels on every token."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    ls = lengths(args.steps + 8)
    warm = 4

    class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(ls)

        def __getitem__(self, i: int) -> dict[str, Any]:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(10, 1000, (ls[i],), generator=g)
            return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    class Clock(TrainerCallback):  # type: ignore[misc]
        t0 = 0.0
        seen = 0

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.seen += 1
            if self.seen == warm:
                torch.cuda.synchronize()
                self.t0 = time.perf_counter()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to("cuda")
    lora = peft.LoraConfig(
        r=8, lora_alpha=128, lora_dropout=0.0, target_modules=args.targets.split(","), task_type="CAUSAL_LM"
    )
    model = peft.get_peft_model(model, lora)
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=1,
        max_steps=args.steps,
        bf16=True,
        learning_rate=1e-4,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
    )
    clock = Clock()
    data = Rows()
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[clock])
    trainer._get_train_sampler = lambda *_a, **_k: torch.utils.data.SequentialSampler(data)  # a fixed workload
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    torch.cuda.synchronize()
    dt = time.perf_counter() - clock.t0
    real = sum(ls[warm : args.steps])
    return {
        "variant": "stock",
        "tokens_per_second": real / dt,
        "tokens_per_step": real / (args.steps - warm),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def child(args: argparse.Namespace) -> int:
    result = run_stock(args) if args.variant == "stock" else run_ftkit(args)
    result["mfu"] = 4 * n_params(Path(args.model)) * result["tokens_per_second"] / (PEAK_TFLOPS * 1e12)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def spawn(
    variant: str,
    model: Path,
    data: Path,
    cache: Path,
    steps: int,
    tuning: Mapping[str, Any],
    timeout: float,
    batch: int,
    shape: str = "phi3",
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--model", str(model), "--data", str(data)]
    cmd += ["--cache", str(cache), "--steps", str(steps), "--tuning", json.dumps(dict(tuning)), "--batch", str(batch)]
    cmd += ["--targets", ",".join(TARGETS[shape])]
    began = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "shape": shape, "error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        print(f"--- {variant} failed ---\n{tail}", file=sys.stderr)
        return {"variant": variant, "shape": shape, "error": tail[-400:]}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["shape"] = shape
    if proc.stderr and variant == "profile":
        print(proc.stderr[-9000:], file=sys.stderr)
    print(f"{variant}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--ablate", action="store_true", help="the per-optimisation table")
    parser.add_argument("--ablate-layers", type=int, default=8)
    parser.add_argument(
        "--ablate-from",
        type=int,
        default=0,
        help="run the ablation rows from this one (0-based; earlier rows' "
        "changes still apply), e.g. 4: liger and the rows after it",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--profile-try", default="{}", metavar="JSON", help="budget.TUNING changes for the --profile run"
    )
    parser.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="``fast`` with budget.TUNING changes, on each shape, e.g. fused_off='{\"fused_lora\": false}'",
    )
    parser.add_argument(
        "--only", default="stock,fast,qlora", help="side-by-side variants: stock, fast, 22gib, qlora, qlora-22gib"
    )
    parser.add_argument("--shapes", default="phi3,llama3-8b", help="model shapes: phi3, llama3-8b")
    parser.add_argument("--only-llama", help="variants for the llama3-8b shape (default: --only)")
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=16, help="conversations per optimizer step (ftkit)")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--root", type=Path, help="keep models and data here (default: a temporary directory)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--small", action="store_true", help="a small model of Phi-3's kind: a CPU smoke test")
    parser.add_argument("--child", dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--tuning", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--targets", default=",".join(LORA_TARGETS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return child(args)

    import torch
    import transformers

    began = time.perf_counter()
    root = args.root or Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversations(args.rows)), encoding="utf-8")
    cache = root / "tokens"
    results: list[dict[str, Any]] = []
    params: dict[str, int] = {}
    for shape in [s for s in args.shapes.split(",") if s]:
        model = build(root, args.layers, args.small, shape)
        params[shape] = n_params(model)
        only = args.only_llama if shape == "llama3-8b" and args.only_llama else args.only
        for variant in [v for v in only.split(",") if v]:
            results.append(spawn(variant, model, data, cache, args.steps, {}, args.timeout, args.batch, shape))
        for tried in args.tries:
            label, _, changes = tried.partition("=")
            r = spawn("fast", model, data, cache, args.steps, json.loads(changes), args.timeout, args.batch, shape)
            r["label"] = f"{shape} {label}"
            results.append(r)
        if shape != "phi3" and len(params) > 1:
            shutil.rmtree(model, ignore_errors=True)  # 16 GB of disk
    if args.profile:
        model = build(root, args.layers, args.small)
        results.append(spawn("profile", model, data, cache, 8, json.loads(args.profile_try), args.timeout, args.batch))
    ablations: list[dict[str, Any]] = []
    if args.ablate:
        shallow = build(root, args.ablate_layers, args.small)
        tuning: dict[str, Any] = {}
        for row, (label, change) in enumerate(ABLATIONS):
            tuning.update(change)
            if row < args.ablate_from:  # its change still applies to the rows below (they are cumulative)
                continue
            r = spawn("fast", shallow, data, cache, args.steps, tuning, args.timeout, args.batch)
            r["label"] = label
            ablations.append(r)

    import peft

    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "params": params,
        "results": results,
        "ablations": ablations,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    try:
        report["liger_kernel"] = importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        report["liger_kernel"] = None
    try:
        report["bitsandbytes"] = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        report["bitsandbytes"] = None
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2), file=sys.stderr)
    print(
        f"{report['device']}, torch {torch.__version__}, transformers {transformers.__version__}, liger "
        f"{report['liger_kernel']}, bitsandbytes {report['bitsandbytes']}, "
        + ", ".join(f"{k} {v / 1e9:.2f}B params" for k, v in params.items())
    )
    print(f"{'path':56} {'tokens/s':>9} {'MFU':>6} {'peak GiB':>9} {'x stock':>8}")
    for r in results + ablations:
        label = r.get("label") or f"{r.get('shape', 'phi3')} {r['variant']}"
        if "error" in r:
            print(f"{label:56} failed: {r['error'][-120:]!r}")
            continue
        stock = next(
            (x for x in results if x.get("shape") == r.get("shape") and x["variant"] == "stock" and "error" not in x),
            None,
        )
        ratio = r["tokens_per_second"] / stock["tokens_per_second"] if stock else float("nan")
        extra = f" budget {r['budget']}, ckpt {r['checkpointing']}" if r.get("budget") else ""
        print(f"{label[:56]:56} {r['tokens_per_second']:9.0f} {r['mfu']:6.1%} {r['peak_gib']:9.2f} {ratio:8.2f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
