"""The device and number format a run computes in, and the libraries it needs.

torch and transformers are imported here, on first use, with a clear error when the ``local`` extra is missing.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ....exceptions import MissingDependencyError, Problem, ValidationError
from .config import Device, Precision

__all__ = [
    "bf16_base_matmuls",
    "compute_dtype",
    "cpu_has_native_bf16",
    "cuda_allocator",
    "import_torch",
    "import_transformers",
    "pick_device",
]


def import_torch() -> Any:
    """The ``torch`` module, or :class:`~ftkit.exceptions.MissingDependencyError` naming the extra."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "local") from None
    return torch


def import_transformers() -> Any:
    """The ``transformers`` module, or :class:`~ftkit.exceptions.MissingDependencyError` naming the extra."""
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "local") from None
    return transformers


def pick_device(torch: Any, wanted: Device) -> str:
    """``cuda`` or ``cpu``: what ``wanted`` resolves to here (a clear error when CUDA is asked for but absent)."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValidationError(
            [Problem("local.device", "cuda was asked for but torch sees no CUDA GPU", "use device: auto or cpu")],
            "no GPU",
        )
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


# /proc/cpuinfo flags of CPUs whose matrix units compute bfloat16 natively (AVX512-BF16's dot products, AMX's tiles).
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX-BF16; Linux only).

    Elsewhere bf16 arithmetic is emulated through float32 and slower than float32 itself, so training stays in
    float32 there.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags") and _BF16_CPU_FLAGS & set(line.partition(":")[2].split()):
            return True
    return False


def compute_dtype(torch: Any, device: str, precision: Precision) -> Any:
    """The compute dtype: bfloat16 where the device has it natively and ``precision`` allows."""
    if precision == "32":
        return torch.float32
    if device == "cuda":
        # 16-bit means bfloat16: no loss scaling needed.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # A CPU: a bf16 model only when asked for (precision 16) and computed natively (emulated bf16 is slower than
    # float32). Not by default: measured on SmolLM2-135M at lr 1e-4, 1.31x the float32 step rate, but the loss
    # lagged (a LoRA update far below a bf16 activation's rounding step is lost in the sum); by default a CPU
    # with native bf16 computes only the frozen base's products in bf16 instead (see bf16_base_matmuls).
    if precision == "16" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def bf16_base_matmuls(device: str, precision: Precision, apply_lora: bool) -> bool:
    """Whether a float32 LoRA run computes its frozen base projections in bf16 (see :mod:`.cpu_bf16`).

    The default (``precision: auto``) on a CPU with native bf16; ``precision: 32`` opts out. The GPU path
    trains a bf16 model instead, and a full fine-tune has no frozen projections.
    """
    return device == "cpu" and precision == "auto" and apply_lora and cpu_has_native_bf16()


_ALLOC_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


@contextlib.contextmanager
def cuda_allocator(torch: Any, device: str, expandable: bool) -> Iterator[bool]:
    """While training on CUDA, the caching allocator grows segments instead of caching fixed-size blocks.

    Packed micro-batches have a different length every time, so fixed-size cached blocks fragment; when a
    request fits no cached block the allocator frees all of them, which waits for the whole device. Expandable
    segments map more memory into one segment instead. The setting is process-wide, so it is put back
    afterwards (``train()`` may run in a notebook's process) and left alone where the user configured the
    allocator (``PYTORCH_CUDA_ALLOC_CONF``). Yields whether it was set.
    """
    wanted = expandable and device == "cuda" and not any(os.environ.get(k) for k in _ALLOC_ENV)
    setter = getattr(getattr(torch.cuda, "memory", None), "_set_allocator_settings", None)
    if not wanted or setter is None:
        yield False
        return
    setter("expandable_segments:True")
    try:
        yield True
    finally:
        setter("expandable_segments:False")
