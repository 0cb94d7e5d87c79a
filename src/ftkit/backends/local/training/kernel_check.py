"""Where ftkit's own Triton kernels for training may run, and their one-time check on a device.

A kernel module (:mod:`.qkv_rope`, :mod:`.gate_up_swiglu`, :mod:`.label_loss`) runs on CUDA with Triton, or
under Triton's interpreter (``TRITON_INTERPRET=1``, for tests on a CPU): :func:`available`. Before its first use
on a device, its compiled kernels are compared with plain torch on a small input, values and gradients
(:func:`checked`, once per device: :func:`once_per_device`, :func:`usable`). A failure to build or run them, or
a disagreement, is logged and the model's own code runs instead, so a Triton that cannot build a kernel costs
speed, not the run.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["available", "checked", "once_per_device", "usable"]

_log = logging.getLogger(__name__)


def available(device: Any) -> bool:
    """Whether Triton kernels can run on ``device``: CUDA with Triton (or Triton's interpreter, for tests)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401 - torch's CUDA wheels carry it
    except ImportError:
        return False
    return True


def checked(compare: Callable[[Any, str], bool], device: str, kernel: str, fallback: str) -> bool:
    """Run ``compare(torch, device)`` (kernels against plain torch) and say whether the kernels may be used.

    Args:
        compare: Returns whether the kernels' values and gradients are plain torch's on ``device``.
        device: Where to check.
        kernel: What the kernel is, for the log (e.g. "the fused split+RoPE kernel").
        fallback: What runs instead, for the log (e.g. "the model's own rotation").
    """
    import torch

    try:
        # the first training forward may run under no_grad or inference mode (an evaluation in training mode):
        # the check needs gradients either way
        with torch.inference_mode(False), torch.enable_grad():
            ok = compare(torch, device)
    except Exception as error:  # any failure to build or run the kernels means: do without them
        _log.warning("%s failed on %s (%s); using %s", kernel, device, error, fallback)
        return False
    if not ok:
        _log.warning("%s disagrees with torch on %s; using %s", kernel, device, fallback)
    return ok


def once_per_device(compare: Callable[[Any, str], bool], kernel: str, fallback: str) -> Any:
    """:func:`checked` for ``compare``, run once per device: a function ``device -> bool`` (its cache clears)."""

    @functools.cache
    def check(device: str) -> bool:
        return checked(compare, device, kernel, fallback)

    return check


def usable(device: Any, check: Callable[[str], bool]) -> bool:
    """Whether a kernel module's kernels may run on ``device``.

    They may where Triton is :func:`available` and the module's ``check`` (:func:`once_per_device`) passes.
    """
    return available(device) and check(str(device))
