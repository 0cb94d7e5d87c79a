"""Tokenising an ultrachat_200k-sized train split for training: conversations/s, peak memory, cache reuse.

Writes ``--rows`` synthetic ultrachat-shaped conversations (about 3.8 user/assistant pairs, user turns ~40 words,
assistant turns ~230, as ``shared/bench/make_ultrachat.py``) as the component's JSONL, then encodes them with
:func:`ftkit.backends.local.data.encode_file` under a template like Phi-3's own (no ``{% generation %}`` marks,
so assistant spans come from rendering prefixes, the slow case): once on one core over a slice, once on every
core into the token cache, and once more from the cache. Reports conversations/s, the peak RSS of the main
process and of the largest worker, and bytes per token held.

    python benchmarks/bench_tokenize.py [--rows 207865] [--workers N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from ftkit.backends.local.data import encode_file

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "which",
    "have",
    "not",
    "but",
    "they",
    "his",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "each",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "model",
    "data",
    "train",
    "chat",
    "story",
]


def row(rng: random.Random) -> dict[str, Any]:
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    messages = []
    for _ in range(max(1, int(rng.gauss(3.8, 1.5)))):
        messages.append({"role": "user", "content": text(max(3, int(rng.lognormvariate(3.6, 0.6))))})
        messages.append({"role": "assistant", "content": text(max(3, int(rng.lognormvariate(5.3, 0.5))))})
    return {"messages": messages}


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=207_865)
    parser.add_argument("--serial-rows", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from ftkit.backends.local.tiny import chat_texts, make_tiny_model

    root = Path(tempfile.mkdtemp())
    rng = random.Random(0)
    data = root / "train_sft.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for _ in range(args.rows):
            f.write(json.dumps(row(rng)) + "\n")
    with data.open(encoding="utf-8") as f:
        sample = [json.loads(line) for line in itertools.islice(f, 200)]
    model = make_tiny_model(root / "tok", texts=chat_texts(sample), vocab_size=2048)
    tokenizer = AutoTokenizer.from_pretrained(model)
    # Phi-3's own template has no generation marks: assistant spans come from rendering growing prefixes.
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    rss_start = peak_rss_mib(resource.RUSAGE_SELF)

    small = root / "slice.jsonl"
    with data.open(encoding="utf-8") as f:
        small.write_text("".join(itertools.islice(f, args.serial_rows)), encoding="utf-8")
    t = time.perf_counter()
    encode_file(tokenizer, small, args.max_len, workers=1)
    serial = args.serial_rows / (time.perf_counter() - t)

    cache = root / "cache"
    t = time.perf_counter()
    encoded, report = encode_file(tokenizer, data, args.max_len, workers=args.workers, cache_dir=cache)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    again, _ = encode_file(tokenizer, data, args.max_len, workers=args.workers, cache_dir=cache)
    warm = time.perf_counter() - t
    assert len(again) == len(encoded)
    result = {
        "rows": args.rows,
        "kept": report.kept,
        "tokens": len(encoded.tokens),
        "workers": args.workers,
        "serial_conversations_per_s": round(serial),
        "parallel_conversations_per_s": round(args.rows / cold),
        "parallel_s": round(cold, 1),
        "cached_s": round(warm, 2),
        "bytes_per_token": round(encoded.nbytes / len(encoded.tokens), 2),
        "arrays_mib": round(encoded.nbytes / 2**20, 1),
        "main_peak_rss_mib": round(peak_rss_mib(resource.RUSAGE_SELF)),
        "main_rss_before_encoding_mib": round(rss_start),
        "largest_worker_peak_rss_mib": round(peak_rss_mib(resource.RUSAGE_CHILDREN)),
        "jsonl_mib": round(data.stat().st_size / 2**20),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
