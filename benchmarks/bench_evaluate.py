"""Evaluation throughput on the CPU, and its cost in wall time relative to the training it follows.

Runs the real-model demo's flow (SmolLM2-135M-Instruct learning a pirate's voice, LoRA on the CPU) through
``ftkit.run`` with an ``evaluate:`` section, and times each stage from its progress events: training (the
``finetune`` stage), the evaluation as a whole (base deployment, greedy answers of both models through the local
endpoint, held-out loss of both models, report), and its generation phase alone (answers/s and prompts/s, a
prompt being answered by both models).

    python benchmarks/bench_evaluate.py [--prompts 16] [--steps 25] [--concurrency 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch
    import transformers

    import ftkit
    from ftkit.backends.local.lessons import pirate_conversations, write_jsonl
    from ftkit.backends.local.smollm2 import smollm2_model_dir
    from ftkit.runner import StageEvent

    model = smollm2_model_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    os.environ["FTKIT_HOME"] = str(work / "home")
    rows = pirate_conversations(260, seed=5)
    write_jsonl(rows[:200], work / "train.jsonl")
    write_jsonl(rows[200:], work / "test.jsonl")
    job = {
        "name": "bench-evaluate",
        "backend": "local",
        "model": {"name": "SmolLM2-135M-Instruct", "path": str(model)},
        "data": {"train_file": "train.jsonl", "test_file": "test.jsonl"},
        "finetune": {
            "learning_rate": 2e-3, "max_steps": args.steps, "per_device_train_batch_size": 8,
            "max_seq_length": 128, "evaluation_strategy": "disable",
        },
        "local": {"device": "cpu"},
        "evaluate": {
            "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency,
            "metrics": ["loss", "rouge_l", "chrf"],
            "checks": [{"name": "pirate", "kind": "starts_with", "value": "Ahoy"}],
        },
    }  # fmt: skip
    (work / "job.yaml").write_text(yaml.safe_dump(job), encoding="utf-8")

    marks: dict[str, float] = {}
    start = time.perf_counter()

    def on_event(event: StageEvent) -> None:
        now = time.perf_counter() - start
        key = f"{event.stage}{':done' if event.done else ''}"
        marks.setdefault(key, now)
        if event.stage == "evaluate" and event.message.startswith("generating"):
            marks["generate"] = now
        if event.stage == "evaluate" and re.match(r"answers (\d+)/\1 in", event.message):
            marks["generate:done"] = now
        if event.stage == "evaluate" and event.message.startswith("held-out loss"):
            marks["loss"] = now
        print(f"[{now:7.1f}s] {event.stage:<8} {event.message}", file=sys.stderr)

    result = ftkit.run(ftkit.JobFile.load(work / "job.yaml"), on_event=on_event, poll_s=0.5)
    assert result.evaluation is not None
    train_s = marks["finetune:done"] - marks["finetune"]
    eval_s = marks["evaluate:done"] - marks["evaluate"]
    gen_s = marks["generate:done"] - marks["generate"]
    loss_s = marks["evaluate:done"] - marks["loss"]
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ftkit": ftkit.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "prompts": args.prompts,
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "evaluate_s": round(eval_s, 1),
        "generate_s": round(gen_s, 1),
        "answers_per_s": round(2 * args.prompts / gen_s, 2),
        "prompts_per_s": round(args.prompts / gen_s, 2),
        "loss_and_report_s": round(loss_s, 1),
        "evaluate_over_train": round(eval_s / train_s, 2),
        "check_pirate": result.evaluation.metric("check:pirate").improvement,
    }
    print("| " + " | ".join(figures) + " |")
    print("|" + "---|" * len(figures))
    print("| " + " | ".join(str(v) for v in figures.values()) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
