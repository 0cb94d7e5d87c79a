"""Benchmark: ChatDatasetBuilder vs. the seed notebook's data step, side by side, on one ultrachat-shaped split.

Generates the 207,865-row split with ../shared/bench/make_ultrachat.py (into a temp dir, once; reused when
FTKIT_BENCH_DATA points to an existing parquet), then runs each method in its own process and reports wall time
and peak RSS (ru_maxrss of the child). Results go in docs/benchmarks.md ("Data preparation").

Usage: python benchmarks/bench_data_build.py [--percent 100] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"
ROWS = 207_865

FTKIT_CHILD = """
import sys
from ftkit.data import ChatDatasetBuilder, SplitSelection
src, out, pc = sys.argv[1], sys.argv[2], float(sys.argv[3])
b = ChatDatasetBuilder(src, splits=["train_sft"], out_dir=out, selection=SplitSelection(percent=pc)).build()
r = b.report.split("train_sft")
print(r.rows_written, r.rows_rejected)
"""


def one(method: str, data: Path, out: Path, percent: float) -> tuple[float, float, str, float]:
    """Run one method in a fresh parent (so ru_maxrss is that method's alone)."""
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True)\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps([time.perf_counter() - t, u.ru_maxrss / 1024, p.stdout.strip(), u.ru_utime + u.ru_stime]))\n"
    )
    if method == "seed":
        cmd = [sys.executable, str(SHARED_BENCH / "seed_prep.py"), str(data), str(out / "seed.jsonl"), f"{percent:g}"]
    else:
        cmd = [sys.executable, "-c", FTKIT_CHILD, str(data), str(out / "ftkit"), f"{percent:g}"]
    import json

    res = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True)
    wall, rss, stdout, cpu = json.loads(res.stdout)
    return wall, rss, stdout, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--percent", type=float, action="append")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    if not (SHARED_BENCH / "make_ultrachat.py").is_file():
        sys.exit(f"skipped: {SHARED_BENCH} is not present")
    data = Path(os.environ.get("FTKIT_BENCH_DATA", Path(tempfile.gettempdir()) / "ftkit-bench-ultrachat.parquet"))
    if not data.is_file():
        print(f"generating {data} ...", flush=True)
        subprocess.run(
            [sys.executable, str(SHARED_BENCH / "make_ultrachat.py"), str(data), "--rows", str(ROWS)], check=True
        )
    import datasets
    import numpy
    import pyarrow

    print(
        f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, pyarrow {pyarrow.__version__},"
        f" datasets {datasets.__version__}, numpy {numpy.__version__}; {data} ({data.stat().st_size / 1e6:.0f} MB)"
    )
    for percent in a.percent or [100.0, 5.0]:
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                seed = one("seed", data, out, percent)
                ft = one("ftkit", data, out, percent)
                print(
                    f"{percent:g}%: seed {seed[0]:.2f} s (cpu {seed[3]:.1f} s) {seed[1]:.0f} MB"
                    f" | ftkit {ft[0]:.2f} s (cpu {ft[3]:.1f} s) {ft[1]:.0f} MB"
                    f" | ratio {ft[0] / seed[0]:.2f} | rows seed={seed[2]} ftkit(written, rejected)={ft[2]}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
