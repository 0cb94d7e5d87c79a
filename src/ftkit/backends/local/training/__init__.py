"""The one training loop of the local backend: LoRA (or full) supervised fine-tuning of a causal LM.

A plain PyTorch loop, not the HF ``Trainer``. A step takes ``per_device_train_batch_size x
gradient_accumulation_steps`` conversations and splits them into micro-batches by a **token budget**
(``max_tokens_per_micro_batch``); each micro-batch is packed into one row with no padding, and its examples'
boundaries go to the attention kernel (:mod:`..attention`: variable-length flash attention on CUDA, so no
token attends across examples and no compute goes to masked pairs). The loss is computed on assistant tokens
only, at those positions only (:mod:`..loss`: the head runs chunk by chunk, or fused with liger-kernel, never
materialising a row's logits), summed over the micro-batches and normalised by the step's label tokens, so a
step's result does not depend on the budget. AdamW (fused on CUDA) steps float32 master copies of the trainable
weights, which the model holds in its compute dtype (bf16 adapters on a bf16 base on CUDA), with the component's
schedule. Nothing inside a step waits for the GPU: loss and gradient norm stay on the device until a logging step.

When the budget needs it (or when asked) the decoder layers are checkpointed; the budget itself comes from the
GPU's memory (or ``gpu_memory_gib``) when not given. With liger-kernel installed (``ftkit[gpu]``), its RMSNorm,
SwiGLU and RoPE kernels replace transformers' on CUDA. On a CPU the same loop runs in float32; where the CPU
computes bfloat16 natively, the frozen base projections' matrix products run in bf16 (:mod:`.cpu_bf16`).

It checkpoints the trainable weights, optimizer, scheduler and RNG state atomically, and a restarted run
continues from the last checkpoint: the data order depends only on the seed and the epoch, so it reaches the
same final step with the same batches. Tokenised data is cached on disk (see :func:`..data.encode_file`).

The modules, in the order a run meets them:

- :mod:`.config`: :class:`TrainConfig`, :class:`TrainResult`, :class:`MetricsSink` (plain values);
- :mod:`.loop`: :func:`train` itself: setup, the steps, finish;
- :mod:`.hardware`: the device and compute dtype; :mod:`.budget`: the token budget and fast paths;
- :mod:`.cpu_bf16`: a CPU's frozen base products in bfloat16, all else float32;
- :mod:`.loading`: tokenise, load the model (:mod:`.model_setup`), plan; :mod:`.optimizer`: AdamW and masters;
- :mod:`.forward`: the forward pass and evaluation; :mod:`.checkpoints`: save, find, load;
- :mod:`.progress`: what a run shows; :mod:`.stopping`: stops in loading, evaluation and checkpoint writes;
- :mod:`.finish`: the saved model (and a QLoRA merge, checked) and the result;
- :mod:`.ranks`: the hooks where several processes differ from one (DDP, FSDP2), and the sharding policy.

torch, transformers and peft are imported inside the functions: importing this package stays light.
"""

from __future__ import annotations

from .checkpoints import latest_checkpoint
from .config import (
    LR_SCHEDULERS,
    QUANTIZE_CHOICES,
    Device,
    MetricsSink,
    Precision,
    Progress,
    TrainConfig,
    TrainResult,
)
from .hardware import cpu_has_native_bf16
from .loop import train
from .stopping import StopRequested, stop_now

__all__ = [
    "LR_SCHEDULERS",
    "QUANTIZE_CHOICES",
    "Device",
    "MetricsSink",
    "Precision",
    "Progress",
    "StopRequested",
    "TrainConfig",
    "TrainResult",
    "cpu_has_native_bf16",
    "latest_checkpoint",
    "stop_now",
    "train",
]
