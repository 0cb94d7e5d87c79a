"""The end of a run: the model saved (merged, an adapter, or a QLoRA merge checked first) and the result told.

:func:`save_final` writes a Hugging Face directory atomically; a QLoRA run with ``merge_lora_weights`` first
takes what the merge needs off the 4-bit model (:func:`merge_inputs`), then, with that model gone, builds the
merged one and checks it against the adapter model before saving it (:func:`save_merged`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .. import qlora
from ..data import EncodedSet, PackedArrays, pack_arrays
from . import model_setup
from .budget import RESERVE_BYTES, Plan, split
from .checkpoints import raise_storage
from .config import MetricsSink, TrainConfig, TrainResult
from .forward import evaluate, forward_loss
from .hardware import compute_dtype
from .ranks import Ranks

if TYPE_CHECKING:
    from .loading import Loaded

__all__ = ["MergeInputs", "Outcome", "final_model", "merge_inputs", "report", "save_final", "save_merged"]

_FINAL = "model"
_ADAPTER = "adapter"  # a QLoRA run's adapter, saved beside its merged model


@attrs.frozen
class Outcome:
    """How the steps ended, as plain values (nothing here holds the model).

    Attributes:
        step: Optimizer steps done in total.
        total_steps: Steps the run was planned for.
        resumed_from: The checkpoint step this call started from, if it resumed.
        stopped: Whether it stopped early, leaving a checkpoint.
        first_eval: Evaluation loss before training.
        final_eval: Evaluation loss at the end.
        tokens: Tokens trained on by this call.
    """

    step: int
    total_steps: int
    resumed_from: int | None
    stopped: bool
    first_eval: float | None
    final_eval: float | None
    tokens: int


def save_final(config: TrainConfig, model: Any, tokenizer: Any, *, name: str = _FINAL) -> Path:
    """Save ``model`` (merged, or as an adapter that names its base) and the tokenizer atomically; return where."""
    out = Path(config.output_dir) / name
    tmp = Path(config.output_dir) / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if config.apply_lora and config.merge_lora_weights:
        model = model.merge_and_unload()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if config.apply_lora and not config.merge_lora_weights:
            # An adapter directory: transformers loads it (with peft) from the base recorded here.
            cfg = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
            cfg["base_model_name_or_path"] = str(Path(config.model_dir).absolute())
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_storage(exc, tmp)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def check_batches(encoded: EncodedSet, plan: Plan, most: int = 16) -> list[PackedArrays]:
    """The conversations a merge is checked on (the first ``most`` of the held-out set)."""
    groups = split(encoded.lengths, range(min(len(encoded), most)), plan.budget)
    return [pack_arrays(encoded, g) for g in groups]


@attrs.frozen
class MergeInputs:
    """What a QLoRA merge needs, taken off the 4-bit model so that it can go first (CPU tensors and values).

    Attributes:
        tokenizer: Saved with the merged model.
        weights: The de-quantized base weights and the trained adapters.
        batches: The conversations the merge is checked on.
        adapter: The adapter model's loss on ``batches`` and where the adapter was saved.
        plan: The run's plan.
    """

    tokenizer: Any
    weights: tuple[Mapping[str, Any], Mapping[str, Any]]
    batches: list[PackedArrays]
    adapter: tuple[float, Path]
    plan: Plan


def merge_inputs(
    torch: Any, config: TrainConfig, loaded: Loaded, named: Mapping[str, Any], device: str, ranks: Ranks
) -> MergeInputs:
    """Check the adapter model's loss, save the adapter, and take the weights the merge is built from."""
    batches = check_batches(loaded.eval_set if loaded.eval_set is not None else loaded.train_set, loaded.plan)
    adapter_loss = evaluate(torch, loaded.model, loaded.forward, batches, device, ranks)
    adapter_dir = save_final(
        attrs.evolve(config, merge_lora_weights=False), loaded.model, loaded.tokenizer, name=_ADAPTER
    )
    base_weights = qlora.dequantized_weights(loaded.model)
    adapters = {k: v.detach().cpu() for k, v in named.items()}
    return MergeInputs(loaded.tokenizer, (base_weights, adapters), batches, (adapter_loss, adapter_dir), loaded.plan)


def save_merged(
    torch: Any,
    config: TrainConfig,
    tokenizer: Any,
    weights: tuple[Mapping[str, Any], Mapping[str, Any]],
    check: Sequence[PackedArrays],
    adapter: tuple[float, Path],
    device: str,
    plan: Plan,
) -> Path:
    """Merge a QLoRA run's adapter into its de-quantized base, check the merge, then save it.

    ``weights`` are the de-quantized base weights and the trained adapters (see :func:`.qlora.load_merged`);
    ``adapter`` the adapter model's loss on ``check`` and where the adapter was saved. The merged model is
    built on the CPU in the compute dtype and checked on the GPU when it fits there (the 4-bit model is gone by
    now), else on the CPU.
    """
    import gc

    adapter_loss, adapter_dir = adapter
    gc.collect()
    dtype = compute_dtype(torch, device, config.precision)
    plain = model_setup.build_model(attrs.evolve(config, quantize="none"), "cpu", dtype)
    merged = qlora.load_merged(plain, *weights)
    where = "cpu"
    if device == "cuda":
        torch.cuda.empty_cache()
        size = sum(p.numel() * p.element_size() for p in merged.parameters())
        if torch.cuda.mem_get_info()[0] > size + RESERVE_BYTES + 2 * 2**30:
            where = "cuda"
    merged.to(where)
    merged.eval()
    mplan = plan if where == "cuda" else attrs.evolve(plan, fused_loss=False, compile_layers=False, checkpointing=False)
    merged_loss = evaluate(torch, merged, lambda b: forward_loss(torch, merged, b, where, mplan), check, where, Ranks())
    qlora.check_merge(adapter_loss, merged_loss, saved_adapter=str(adapter_dir))
    return save_final(attrs.evolve(config, apply_lora=False), merged.cpu(), tokenizer)


def final_model(
    config: TrainConfig,
    loaded: Loaded,
    named: Mapping[str, Any],
    ranks: Ranks,
    rebuild: Callable[[], Any],
) -> Path | None:
    """Save the trained model (on rank 0; under FSDP2 an unsharded ``rebuild()`` takes the gathered weights)."""
    final = ranks.final_model(loaded.model, named, rebuild)
    return None if final is None else save_final(config, final, loaded.tokenizer)


def report(
    sink: MetricsSink | Any,
    ranks: Ranks,
    out: Path,
    outcome: Outcome,
    model_dir: Path | None,
    examples: tuple[int, int],
    runtime: float,
) -> TrainResult:
    """Log the run's totals and write ``result.json`` (rank 0, a finished run), and return the result."""
    if not outcome.stopped and ranks.main:
        sink.log_metrics({"train_runtime": runtime, "train_tokens_per_second": outcome.tokens / runtime}, outcome.step)
        sink.flush()
        (out / "result.json").write_text(
            json.dumps(
                {"global_step": outcome.step, "total_steps": outcome.total_steps, "final_eval_loss": outcome.final_eval}
            ),
            encoding="utf-8",
        )
    return TrainResult(
        global_step=outcome.step,
        total_steps=outcome.total_steps,
        model_dir=model_dir,
        resumed_from=outcome.resumed_from,
        stopped=outcome.stopped,
        train_examples=examples[0],
        eval_examples=examples[1],
        first_eval_loss=outcome.first_eval,
        final_eval_loss=outcome.final_eval,
        tokens=outcome.tokens,
        runtime_s=runtime,
    )
