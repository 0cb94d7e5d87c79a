"""Where a profiled training step's time goes: GPU kernels by kind, the GPU's idle time, the host's waits.

``summarize(events, steps)`` reads the events of a ``torch.profiler`` run (``profiler.events()``) and returns a
plain-text report: kernel time by category (matrix products, flash attention, Triton kernels, copies, ...), the
top kernels, the span the GPU was idle (the union of kernel intervals against the profiled wall span), the
longest idle gaps with the kernels around them, the host calls that wait for the GPU or the allocator, and which
host operations launched the copies and fills (``cudaMemcpyAsync``/``cudaMemsetAsync``, e.g. ``aten::copy_ <
aten::contiguous < LoraLinearBackward``).
Used by ``bench_train_gpu.py --profile``; tested on synthetic events in ``tests/test_profile_summary.py``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["CATEGORIES", "category", "summarize"]

# (category, pattern on the kernel's name), first match wins
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("flash attention", r"flash|fmha"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|splitKreduce"),
    ("optimizer", r"adam|multi_tensor_apply"),
    ("copy/cat", r"copy|Cat|cat_|transpose"),
    ("fill/zero", r"fill|Memset|zero"),
    ("reduction", r"reduce"),
    ("triton (liger, inductor)", r"^_|triton|liger|rope|rms|swiglu|cross_entropy"),
    ("memcpy", r"Memcpy"),
)

# host calls that wait for the GPU or pay for the allocator
WAITS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "aten::_local_scalar_dense",
    "cudaMemcpyAsync",
    "cudaMalloc",
    "cudaFree",
    "cudaHostAlloc",
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
)


def category(name: str) -> str:
    """The category of a kernel, by its name (``other element-wise`` when no pattern matches)."""
    for label, pattern in CATEGORIES:
        if re.search(pattern, name):
            return label
    return "other element-wise"


def _interval(event: Any) -> tuple[float, float]:
    return float(event.time_range.start), float(event.time_range.end)


def _is_gpu(event: Any) -> bool:
    """A kernel or copy on the GPU (not a range the profiler or the user annotated, such as ``ProfilerStep#3``)."""
    kind = getattr(event, "device_type", None)
    if getattr(event, "is_user_annotation", False) or event.name.startswith("ProfilerStep"):
        return False
    return str(kind).endswith("CUDA")


def _short(name: str, width: int = 90) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def summarize(events: Iterable[Any], steps: int, memory: dict[str, Any] | None = None) -> str:
    """A plain-text report of ``steps`` profiled steps from the profiler's ``events``.

    Args:
        events: ``torch.profiler``'s function events (each with ``name``, ``device_type`` and ``time_range``
            in microseconds).
        steps: How many steps the events cover (times are reported per step too).
        memory: ``torch.cuda.memory_stats()``, for the allocator's retries and device allocations.
    """
    events = list(events)
    kernels = sorted((e for e in events if _is_gpu(e)), key=lambda e: _interval(e)[0])
    host = [e for e in events if not _is_gpu(e)]
    lines: list[str] = []
    if not kernels:
        lines.append("no GPU kernels in the profile")
    else:
        lines += _kernel_report(kernels, steps, host)
    waits: dict[str, list[float]] = defaultdict(list)
    for e in host:
        if e.name in WAITS:
            start, end = _interval(e)
            waits[e.name].append(end - start)
    if waits:
        lines.append("host calls (count, total ms, per step ms, longest ms):")
        for name in WAITS:
            if name in waits:
                d = waits[name]
                lines.append(
                    f"  {name:30} {len(d):7d} {sum(d) / 1e3:9.1f} {sum(d) / 1e3 / steps:9.1f} {max(d) / 1e3:9.2f}"
                )
    lines += _launchers(host, steps)
    if memory:
        keys = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams", "num_ooms")
        lines.append("allocator: " + ", ".join(f"{k} {memory.get(k, 0)}" for k in keys))
    return "\n".join(lines)


def _host_during(start: float, end: float, host: Sequence[Any]) -> str:
    """What the host was inside while the GPU idled from ``start`` to ``end``: the innermost two host ranges
    covering at least half of the gap (the shortest first), e.g. ``cudaStreamSynchronize < aten::item``."""
    covering = []
    for e in host:
        a, b = _interval(e)
        if e.name.startswith("ProfilerStep") or b <= start or a >= end:
            continue
        if min(b, end) - max(a, start) >= (end - start) / 2:
            covering.append((b - a, e.name))
    names: list[str] = []
    for _, name in sorted(covering):
        if name not in names:
            names.append(name)
        if len(names) == 2:
            break
    return " < ".join(_short(n, 50) for n in names) or "(no host range)"


# the runtime calls whose launching host operation the report names: where copies and fills come from
LAUNCHES = ("cudaMemcpyAsync", "cudaMemsetAsync")


def _launchers(host: Sequence[Any], steps: int, depth: int = 3) -> list[str]:
    """The host operations that made the copy and fill calls, by count: each call's ``depth`` nearest enclosing
    host ranges (``cpu_parent``, innermost first), e.g. ``aten::copy_ < aten::contiguous < LoraLinearBackward``."""
    by_chain: Counter[tuple[str, str]] = Counter()
    for e in host:
        if e.name not in LAUNCHES:
            continue
        chain: list[str] = []
        parent = getattr(e, "cpu_parent", None)
        while parent is not None and len(chain) < depth:
            if not parent.name.startswith("ProfilerStep"):
                chain.append(_short(parent.name, 50))
            parent = getattr(parent, "cpu_parent", None)
        by_chain[(e.name, " < ".join(chain) or "(no host range)")] += 1
    if not by_chain:
        return []
    lines = ["copies and fills by what launched them (calls/step, call, host ranges innermost first):"]
    for (call, chain), n in by_chain.most_common(12):
        lines.append(f"  {n / steps:8.1f}  {call:16} {chain}")
    return lines


# idle gaps by length (us): where many short launch gaps and a few long waits are told apart
_GAP_BUCKETS = ((0, 20), (20, 100), (100, 1000), (1000, float("inf")))


def _kernel_report(kernels: Sequence[Any], steps: int, host: Sequence[Any] = ()) -> list[str]:
    busy_by_cat: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for e in kernels:
        start, end = _interval(e)
        busy_by_cat[category(e.name)] += end - start
        by_name[e.name] += end - start
        count[e.name] += 1
    total = sum(busy_by_cat.values())
    span_start = _interval(kernels[0])[0]
    span_end = max(_interval(e)[1] for e in kernels)
    span = span_end - span_start
    # the union of kernel intervals (streams may overlap): what the GPU was doing at all
    union = 0.0
    gaps: list[tuple[float, str, str, float]] = []
    cur_start, cur_end = _interval(kernels[0])
    prev_name = kernels[0].name
    for e in kernels[1:]:
        start, end = _interval(e)
        if start > cur_end:
            union += cur_end - cur_start
            gaps.append((start - cur_end, prev_name, e.name, cur_end))
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
        if end >= cur_end:
            prev_name = e.name
    union += cur_end - cur_start
    idle = span - union
    lines = [
        f"{steps} steps: span {span / 1e3:.1f} ms ({span / 1e3 / steps:.1f} ms/step), kernels {total / 1e3:.1f} ms, "
        f"GPU busy {union / span:.1%}, idle {idle / 1e3:.1f} ms ({idle / 1e3 / steps:.1f} ms/step), "
        f"{len(kernels)} kernels ({len(kernels) / steps:.0f}/step)",
        "kernel time by category (ms/step, share of kernel time):",
    ]
    for label, t in busy_by_cat.most_common():
        lines.append(f"  {label:28} {t / 1e3 / steps:9.1f} {t / total:7.1%}")
    lines.append("top kernels (ms/step, calls/step, mean us, name):")
    for name, t in by_name.most_common(25):
        lines.append(f"  {t / 1e3 / steps:8.1f} {count[name] / steps:8.0f} {t / count[name]:9.1f}  {_short(name, 200)}")
    gaps.sort(reverse=True)
    lines.append(f"idle gaps: {len(gaps)} ({len(gaps) / steps:.0f}/step); by length (count/step, ms/step):")
    for low, high in _GAP_BUCKETS:
        inside = [g for g, *_ in gaps if low <= g < high]
        label = f"{low:.0f}-{high:.0f} us" if high != float("inf") else f"over {low:.0f} us"
        lines.append(f"  {label:14} {len(inside) / steps:8.1f} {sum(inside) / 1e3 / steps:9.1f}")
    lines.append("longest (us, kernel before -> kernel after; what the host was inside meanwhile):")
    for g, before, after, at in gaps[:15]:
        lines.append(f"  {g:9.0f}  {_short(before, 60)} -> {_short(after, 60)}")
        if host:
            lines.append(f"             host: {_host_during(at, at + g, host)}")
    return lines
