"""benchmarks/profile_summary.py: the GPU benchmark's account of a profiled step, on synthetic events."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from profile_summary import category, summarize


def event(name: str, start: float, end: float, gpu: bool = True) -> Any:
    return types.SimpleNamespace(
        name=name,
        device_type="DeviceType.CUDA" if gpu else "DeviceType.CPU",
        time_range=types.SimpleNamespace(start=start, end=end),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>", "flash attention"),
        ("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda>", "copy/cat"),
        ("_triton_rope", "triton (liger, inductor)"),
        ("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add<c10::BFloat16>>", "other element-wise"),
        ("void at::native::(anonymous namespace)::fused_adam_kernel", "optimizer"),
    ],
)
def test_kernels_fall_in_their_category(name: str, expected: str) -> None:
    assert category(name) == expected


def test_busy_idle_and_gaps_from_the_kernel_intervals() -> None:
    events = [
        event("nvjet_gemm", 0, 100),
        event("flash_fwd", 100, 150),  # back to back: no gap
        event("copy_kernel", 400, 450),  # 250 us idle before it
        event("nvjet_gemm", 440, 600),  # overlaps the copy (another stream): counted once in "busy"
        event("cudaStreamSynchronize", 150, 400, gpu=False),
        event("aten::_local_scalar_dense", 150, 400, gpu=False),
        event("aten::mm", 0, 10, gpu=False),  # not a wait: not listed
        event("ProfilerStep#1", 0, 600),  # the step's range the profiler draws on the GPU row: not a kernel
    ]
    report = summarize(events, steps=2, memory={"num_alloc_retries": 3})
    assert "span 0.6 ms" in report
    assert "GPU busy 58.3%" in report  # (150 + 200) of 600 us
    assert "idle 0.2 ms" in report
    assert "250  flash_fwd -> copy_kernel" in report
    assert "host: aten::_local_scalar_dense < cudaStreamSynchronize" in report  # innermost first (equal: by name)
    bucket = next(line for line in report.splitlines() if line.strip().startswith("100-1000 us"))
    assert bucket.split()[2:] == ["0.5", "0.1"]  # one gap of 250 us over 2 steps: 0.5 a step, 0.125 ms a step
    assert "cudaStreamSynchronize" in report
    assert "aten::_local_scalar_dense" in report
    assert "aten::mm" not in report
    assert "ProfilerStep" not in report
    assert "4 kernels" in report
    assert "num_alloc_retries 3" in report
    matmul = next(line for line in report.splitlines() if line.strip().startswith("matmul"))
    assert matmul.split()[1] == "0.1"  # 260 us over 2 steps: 0.13 ms a step


def test_the_host_range_covering_a_gap_is_named() -> None:
    events = [
        event("nvjet_gemm", 0, 100),
        event("nvjet_gemm", 1100, 1200),  # a 1 ms gap
        event("ProfilerStep#2", 0, 1200, gpu=False),  # never reported as the cause
        event("autograd::engine::evaluate_function: LoraLinearBackward", 50, 1150, gpu=False),
        event("aten::_local_scalar_dense", 120, 1090, gpu=False),
        event("aten::mm", 100, 110, gpu=False),  # covers too little of the gap
    ]
    report = summarize(events, steps=1)
    assert "host: aten::_local_scalar_dense < autograd::engine::evaluate_function: LoraLinear..." in report
    assert "over 1000 us" in report


def test_copies_and_fills_are_traced_to_the_host_operations_that_made_them() -> None:
    backward = event("LoraLinearBackward", 0, 900, gpu=False)
    contiguous = event("aten::contiguous", 10, 100, gpu=False)
    contiguous.cpu_parent = backward
    copy = event("aten::copy_", 20, 90, gpu=False)
    copy.cpu_parent = contiguous
    step = event("ProfilerStep#1", 0, 1000, gpu=False)
    zeros = event("aten::zeros", 200, 210, gpu=False)
    zeros.cpu_parent = step  # the step's range is never named
    events = [event("Memcpy DtoD (Device -> Device)", 30, 80), backward, contiguous, copy, step, zeros]
    for start in (30, 40, 50, 60):
        launch = event("cudaMemcpyAsync", start, start + 5, gpu=False)
        launch.cpu_parent = copy
        events.append(launch)
    fill = event("cudaMemsetAsync", 201, 202, gpu=False)
    fill.cpu_parent = zeros
    orphan = event("cudaMemsetAsync", 300, 301, gpu=False)
    report = summarize([*events, fill, orphan], steps=2)
    lines = report.splitlines()
    start = lines.index("copies and fills by what launched them (calls/step, call, host ranges innermost first):")
    assert lines[start + 1].split(None, 2) == [
        "2.0",
        "cudaMemcpyAsync",
        "aten::copy_ < aten::contiguous < LoraLinearBackward",
    ]
    assert sorted(line.split(None, 2)[2] for line in lines[start + 2 : start + 4]) == ["(no host range)", "aten::zeros"]


def test_user_annotations_on_the_gpu_are_not_kernels() -> None:
    annotated = event("my_region", 0, 500)
    annotated.is_user_annotation = True
    report = summarize([annotated, event("nvjet_gemm", 0, 100)], steps=1)
    assert "1 kernels" in report
    assert "my_region" not in report


def test_a_profile_without_kernels_says_so() -> None:
    assert "no GPU kernels" in summarize([event("aten::mm", 0, 10, gpu=False)], steps=1)
