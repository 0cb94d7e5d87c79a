"""Throughput of the local training loop on a GPU, for a mid-size Phi-3-shaped model with random weights.

Builds a Phi-3-architecture model from ``Phi3Config`` (by default hidden size 1024, 8 layers, 16 heads, MLP 2816,
Phi-3's vocabulary of 32064: about 168M parameters) with random weights and the tiny model's tokenizer, writes
long synthetic conversations (each truncated to ``--seq / 2`` tokens, two per packed micro-batch: ``--seq``
tokens a step), and trains with :func:`ftkit.backends.local.training.train`: LoRA (r 16, every linear layer) and
full fine-tuning. It reports the median tokens/s over the logging windows after the first (warm-up), the
model TFLOP/s that implies (matrix products only: 6 x parameters per token for full fine-tuning, 4x for LoRA,
whose frozen weights need no weight gradients) and the peak GPU memory. Context, not a target.

    python benchmarks/bench_train_gpu.py [--steps 40] [--seq 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from ftkit.backends.local.tiny import chat_texts, make_tiny_model, synthetic_conversations
from ftkit.backends.local.training import TrainConfig, train


class Windows:
    """A metrics sink keeping each logging window's tokens/s."""

    def __init__(self) -> None:
        self.tokens_per_second: list[float] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:  # noqa: ARG002 - the sink's signature
        if "tokens_per_second" in metrics:
            self.tokens_per_second.append(metrics["tokens_per_second"])

    def flush(self) -> None:
        pass


def long_conversations(n: int, exchanges: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows of ``exchanges`` user/assistant turns each, from the synthetic chat patterns."""
    pool = synthetic_conversations(n * exchanges, seed=seed, system_every=0)
    rows = []
    for i in range(n):
        messages = [m for row in pool[i * exchanges : (i + 1) * exchanges] for m in row["messages"]]
        rows.append({"messages": messages})
    return rows


def build_model(root: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[Path, int]:
    """The tiny model's tokenizer, with a Phi-3-shaped model of the asked size in place of its weights."""
    from transformers import AutoConfig, Phi3Config, Phi3ForCausalLM

    out = make_tiny_model(root / "model", texts=chat_texts(rows), max_position_embeddings=4096)
    tiny = AutoConfig.from_pretrained(out)
    config = Phi3Config(
        vocab_size=32064,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id,
        pad_token_id=tiny.pad_token_id,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config).to(torch.bfloat16)  # stored in bf16, as Phi-3's own checkpoints are
    model.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def run(model_dir: Path, data: Path, out: Path, lora: bool, args: argparse.Namespace) -> dict[str, Any]:
    config = TrainConfig(
        model_dir=str(model_dir),
        train_file=str(data),
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=2,
        max_seq_length=args.seq // 2,
        learning_rate=1e-4,
        apply_lora=lora,
        lora_r=16,
        lora_alpha=32,
        logging_steps=5,
        evaluation_strategy="disable",
        save_steps=10**6,
        device=args.device,
    )
    sink = Windows()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = train(config, metrics=sink)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    steady = sink.tokens_per_second[1:] or sink.tokens_per_second
    return {
        "mode": "lora" if lora else "full",
        "steps": result.global_step,
        "tokens_per_step": result.tokens / max(result.global_step, 1),
        "tokens_per_second": statistics.median(steady),
        "windows": [round(x) for x in sink.tokens_per_second],
        "runtime_s": result.runtime_s,
        "peak_gib": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq", type=int, default=2048, help="tokens per packed micro-batch (two conversations)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = long_conversations(2 * args.steps, exchanges=max(4, args.seq // 40), seed=0)
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        model_dir, params = build_model(root, rows, args)
        results = [run(model_dir, data, root / mode, mode == "lora", args) for mode in ("lora", "full")]
    for r in results:
        r["model_tflops"] = (4 if r["mode"] == "lora" else 6) * params * r["tokens_per_second"] / 1e12

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    report = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "params": params,
        "shape": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "intermediate", "seq", "steps")},
        "results": results,
        "wall_s": time.perf_counter() - began,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2), file=sys.stderr)
    print(f"{device}, torch {torch.__version__}, transformers {transformers.__version__}, {params / 1e6:.0f}M params")
    print(f"{'mode':6} {'tok/step':>9} {'tok/s':>9} {'TFLOP/s':>8} {'peak GiB':>9}")
    for r in results:
        print(
            f"{r['mode']:6} {r['tokens_per_step']:9.0f} {r['tokens_per_second']:9.0f} "
            f"{r['model_tflops']:8.1f} {r['peak_gib']:9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
