"""The one training loop of the local backend: LoRA (or full) supervised fine-tuning of a causal LM.

A plain PyTorch loop, not the HF ``Trainer``: every step packs a batch's conversations into one row (no
padding; ``position_ids`` restart per example so attention never crosses examples, see :mod:`.data`), computes
the loss on assistant tokens only, and steps AdamW with the component's schedule. It checkpoints the
trainable weights, optimizer, scheduler and RNG state atomically, and a restarted run continues from the last
checkpoint: the data order depends only on the seed and the epoch, so it reaches the same final step with the
same batches.

Everything that decides speed is in :func:`_forward_loss` and :func:`train`'s step; a GPU-speed change goes
there (fused kernels, chunked loss, compile), leaving the rest alone.

torch, transformers and peft are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ...exceptions import MissingDependencyError, Problem, ValidationError
from .data import Example, PackedBatch, encode_file, pack

__all__ = [
    "LR_SCHEDULERS",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "train",
]

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
EVAL_STRATEGIES = ("epoch", "steps", "disable")
Precision = Literal["auto", "32", "16"]
Device = Literal["auto", "cpu", "cuda"]
Progress = Literal["auto", "rich", "plain", "none"]

_CHECKPOINTS = "checkpoints"
_FINAL = "model"
_SMALL_MODEL_PARAMS = 20_000_000


def _optional_tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _positive(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValidationError([Problem(attribute.name, f"must be at least 1, got {value}")], "invalid training config")


def _choice(choices: Sequence[str]) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValidationError(
                [Problem(attribute.name, f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")],
                "invalid training config",
            )

    return check


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything one local training run needs, as plain values (it round-trips through JSON).

    The names and defaults follow the ``chat_completion_pipeline`` component's inputs; see
    :meth:`ftkit.backends.local.backend.LocalBackend.train_config` for how a job's parameters map here.

    Attributes:
        model_dir: The base model (a Hugging Face directory with its tokenizer and chat template).
        train_file: Training data, JSONL in the component's format.
        eval_file: Evaluation data (the job's test file), or ``None`` for no evaluation.
        output_dir: Where checkpoints and the final model go.
        num_train_epochs: Epochs.
        max_steps: Optimizer steps, overriding epochs when > 0.
        per_device_train_batch_size: Conversations per micro-batch (packed into one row).
        per_device_eval_batch_size: Conversations per evaluation batch.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        learning_rate: Peak learning rate.
        lr_scheduler_type: One of :data:`LR_SCHEDULERS`.
        warmup_steps: Linear warmup steps.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        max_grad_norm: Gradient clipping norm (0: none).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_epsilon: AdamW epsilon.
        max_seq_length: Longest sequence; ``-1``: the model's maximum.
        apply_lora: Train LoRA adapters (else all weights).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_target_modules: Modules to adapt; ``None``: every linear layer but the output head.
        merge_lora_weights: Save merged weights (else the adapter).
        precision: ``32`` (float32), ``16`` (bfloat16 on CUDA; float32 on CPU) or ``auto`` (bf16 on CUDA).
        seed: Seed of the weights' adapters, the data order and dropout.
        logging_steps: Steps between metric logs.
        evaluation_strategy: ``epoch``, ``steps`` or ``disable``.
        eval_steps: Steps between evaluations when the strategy is ``steps``.
        save_steps: Steps between checkpoints (one is also written at each epoch's end).
        save_total_limit: Checkpoints kept; ``-1``: all.
        max_eval_examples: Evaluate on at most this many conversations (``None``: all).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    model_dir: str
    train_file: str
    eval_file: str | None = None
    output_dir: str
    num_train_epochs: int = attrs.field(default=1, validator=_positive)
    max_steps: int = -1
    per_device_train_batch_size: int = attrs.field(default=1, validator=_positive)
    per_device_eval_batch_size: int = attrs.field(default=1, validator=_positive)
    gradient_accumulation_steps: int = attrs.field(default=1, validator=_positive)
    learning_rate: float = 2e-5
    lr_scheduler_type: str = attrs.field(default="linear", validator=_choice(LR_SCHEDULERS))
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_seq_length: int = -1
    apply_lora: bool = True
    lora_r: int = attrs.field(default=8, validator=_positive)
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    merge_lora_weights: bool = True
    precision: Precision = attrs.field(default="auto", validator=_choice(("auto", "32", "16")))
    seed: int = 42
    logging_steps: int = attrs.field(default=10, validator=_positive)
    evaluation_strategy: str = attrs.field(default="epoch", validator=_choice(EVAL_STRATEGIES))
    eval_steps: int = attrs.field(default=500, validator=_positive)
    save_steps: int = attrs.field(default=500, validator=_positive)
    save_total_limit: int = -1
    max_eval_examples: int | None = None
    device: Device = attrs.field(default="auto", validator=_choice(("auto", "cpu", "cuda")))

    def to_json(self) -> str:
        """Return the config as JSON (for a background job's worker)."""
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Read a config written by :meth:`to_json`."""
        return cls(**json.loads(text))


@attrs.frozen(kw_only=True)
class TrainResult:
    """How a call to :func:`train` ended.

    Attributes:
        global_step: Optimizer steps done in total (including before a resume).
        total_steps: Steps the run was planned for.
        model_dir: The saved model (a Hugging Face directory with the tokenizer), ``None`` if stopped early.
        resumed_from: The checkpoint step this call started from, if it resumed.
        stopped: Whether it stopped early (on request), leaving a checkpoint to resume from.
        train_examples: Training conversations used.
        eval_examples: Evaluation conversations used.
        first_eval_loss: Evaluation loss before training (``None`` without evaluation).
        final_eval_loss: Evaluation loss at the end.
        tokens: Tokens processed by this call.
        runtime_s: Wall time of this call.
    """

    global_step: int
    total_steps: int
    model_dir: Path | None
    resumed_from: int | None = None
    stopped: bool = False
    train_examples: int = 0
    eval_examples: int = 0
    first_eval_loss: float | None = None
    final_eval_loss: float | None = None
    tokens: int = 0
    runtime_s: float = 0.0


class MetricsSink:
    """Where :func:`train` sends metrics: anything with ``log_metrics(values, step)`` and ``flush()``.

    :class:`~ftkit.backends.local.tracking.RunLogger` is one; this base class drops them.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at ``step``."""

    def flush(self) -> None:
        """Send what was recorded."""


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint under ``output_dir``, or ``None``."""
    root = Path(output_dir) / _CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("checkpoint-") and (p / "state.json").is_file()]
    done = [p for p in done if p.name.removeprefix("checkpoint-").isdigit()]
    return max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "local") from None
    return torch


def _pick_device(torch: Any, wanted: Device) -> str:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValidationError(
            [Problem("local.device", "cuda was asked for but torch sees no CUDA GPU", "use device: auto or cpu")],
            "no GPU",
        )
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def _dtype(torch: Any, device: str, precision: Precision) -> Any:
    # On CUDA, 16-bit means bfloat16: no loss scaling needed. On CPU, bf16 matmuls are slow: stay in float32.
    if device == "cuda" and precision in ("auto", "16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _forward_loss(torch: Any, model: Any, batch: PackedBatch, device: str, dtype: Any) -> tuple[Any, int]:
    """Return the summed cross-entropy over the batch's label tokens, and their count.

    Strictly private. The one forward pass of training and evaluation: the place to make fast on GPU.
    """
    ids = torch.tensor(batch.input_ids, device=device)
    pos = torch.tensor(batch.position_ids, device=device)
    labels = torch.tensor(batch.labels, device=device)
    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
        # No attention mask + restarting position_ids: transformers masks attention block-diagonally.
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, int((targets != -100).sum())


def _evaluate(torch: Any, model: Any, batches: Sequence[PackedBatch], device: str, dtype: Any) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            loss, n = _forward_loss(torch, model, batch, device, dtype)
            total += float(loss)
            count += n
    model.train()
    return total / max(count, 1)


def _batches(examples: Sequence[Example], size: int) -> list[PackedBatch]:
    return [pack(examples[i : i + size]) for i in range(0, len(examples), size)]


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # The order depends on (seed, epoch) only, so a resumed run sees the same batches as an uninterrupted one.
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


class _ProgressView:
    """Strictly private: a rich progress bar in a terminal, plain lines, or nothing."""

    def __init__(self, mode: Progress, total: int, start: int) -> None:
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "none"
        self.mode = mode
        self._bar: Any = None
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            self._bar.start()

    def update(self, step: int, total: int, metrics: Mapping[str, float] | None) -> None:
        if self.mode == "rich":
            fields = {}
            if metrics and "loss" in metrics:
                fields = {"loss": f"{metrics['loss']:.4f}", "tps": f"{metrics.get('tokens_per_second', 0):,.0f}"}
            self._bar.update(self._task, completed=step, **fields)
        elif self.mode == "plain" and metrics:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            print(f"step {step}/{total} {shown}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _save_checkpoint(
    torch: Any, out: Path, step: int, named: Mapping[str, Any], opt: Any, sched: Any, limit: int
) -> None:
    root = out / _CHECKPOINTS
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save({k: v.detach().cpu() for k, v in named.items()}, tmp / "trainable.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        rng: dict[str, Any] = {"torch": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        # state.json last: a checkpoint without it is incomplete and ignored.
        (tmp / "state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint behind
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic on one filesystem: a kill leaves either the old set or the new one
    if limit > 0:
        done = sorted(
            (p for p in root.iterdir() if p.name.startswith("checkpoint-")),
            key=lambda p: int(p.name.removeprefix("checkpoint-")),
        )
        for old in done[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(torch: Any, ckpt: Path, named: Mapping[str, Any], opt: Any, sched: Any) -> int:
    weights = torch.load(ckpt / "trainable.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(weights[k].to(p.device, p.dtype))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)  # our own file: RNG states are not plain tensors
    torch.random.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


def _build_model(config: TrainConfig, device: str, dtype: Any) -> Any:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise MissingDependencyError("transformers", "local") from None
    # With LoRA the frozen base is stored in the compute dtype (bf16 on CUDA: half the memory) and peft keeps the
    # trainable adapters in float32. Full fine-tuning keeps float32 master weights and computes in bf16 under
    # autocast: AdamW steps on bf16 weights round away updates under half a bf16 step (0.2-0.4% of a weight).
    weights_dtype = dtype if config.apply_lora else _import_torch().float32
    model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=weights_dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    if not config.apply_lora:
        return model
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("peft", "local") from None
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules) if config.lora_target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 method deprecated in favour of another name; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return peft.get_peft_model(model, lora)
    except ValueError as exc:  # e.g. target modules that the model does not have
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ValidationError(
            [Problem("lora_target_modules", str(exc).splitlines()[0], f"modules in this model: {', '.join(names)}")],
            "invalid LoRA settings",
        ) from None


def _save_final(config: TrainConfig, model: Any, tokenizer: Any) -> Path:
    out = Path(config.output_dir) / _FINAL
    tmp = Path(config.output_dir) / f".{_FINAL}.tmp"
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def train(
    config: TrainConfig,
    *,
    metrics: MetricsSink | Any | None = None,
    progress: Progress = "auto",
    stop_after_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Fine-tune ``config.model_dir`` on ``config.train_file`` and save the result under ``config.output_dir``.

    Args:
        config: The run.
        metrics: Receives ``loss``, ``learning_rate``, ``grad_norm``, ``tokens_per_second``, ``epoch`` every
            ``logging_steps`` and ``eval_loss`` at each evaluation (step 0 included): a
            :class:`~ftkit.backends.local.tracking.RunLogger` or any :class:`MetricsSink`.
        progress: ``auto`` (a rich bar in a terminal, quiet otherwise), ``rich``, ``plain`` (lines) or ``none``.
        stop_after_steps: Stop (with a checkpoint) once this many steps are done in total: for tests and demos.
        should_stop: Polled after every step; when it returns true the run checkpoints and stops (cancellation).
        resume: Continue from the newest checkpoint in ``output_dir``, if there is one.

    Returns:
        What happened.

    Raises:
        ValidationError: Bad settings or unusable data.
        MissingDependencyError: The ``local`` extra is not installed.
    """
    torch = _import_torch()
    try:
        from transformers import AutoTokenizer, get_scheduler
    except ImportError:
        raise MissingDependencyError("transformers", "local") from None
    sink = metrics if metrics is not None else MetricsSink()
    started = time.perf_counter()
    device = _pick_device(torch, config.device)
    dtype = _dtype(torch, device, config.precision)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
    model_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    max_len = config.max_seq_length if config.max_seq_length > 0 else (model_max if 0 < model_max < 10**6 else 4096)
    train_examples, _ = encode_file(tokenizer, config.train_file, max_len)
    eval_examples: list[Example] = []
    if config.eval_file and config.evaluation_strategy != "disable":
        eval_examples, _ = encode_file(tokenizer, config.eval_file, max_len)
        if config.max_eval_examples is not None:
            eval_examples = eval_examples[: config.max_eval_examples]
    eval_batches = _batches(eval_examples, config.per_device_eval_batch_size)

    # Seed before building the model: LoRA's initial weights come from the global RNG.
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = _build_model(config, device, dtype)
    model.train()
    threads = torch.get_num_threads()
    if device == "cpu" and sum(p.numel() for p in model.parameters()) < _SMALL_MODEL_PARAMS:
        # Intra-op threads cost more than they save on tiny matrices (measured: 17x slower linear layers with
        # 2 threads than with 1 on a 2-core machine), so small models train single-threaded.
        torch.set_num_threads(1)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for n, p in named.items() if p.ndim >= 2]
    no_decay = [p for n, p in named.items() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )
    micro_per_epoch = math.ceil(len(train_examples) / config.per_device_train_batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps > 0 else steps_per_epoch * config.num_train_epochs
    scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps
    )

    step = 0
    resumed_from = None
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        step = resumed_from = _load_checkpoint(torch, ckpt, named, optimizer, scheduler)

    view = _ProgressView(progress, total_steps, step)
    first_eval = final_eval = None
    tokens_done = 0
    window_loss, window_labels, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    last_eval_step = -1

    def evaluate_now() -> float:
        nonlocal last_eval_step, window_start
        began = time.perf_counter()
        value = _evaluate(torch, model, eval_batches, device, dtype)
        window_start += time.perf_counter() - began  # tokens/s measures training, not evaluation
        sink.log_metrics({"eval_loss": value}, step)
        sink.flush()
        last_eval_step = step
        return value

    stopped = False
    try:
        if eval_batches and step == 0:
            first_eval = evaluate_now()
        while step < total_steps:
            epoch, group = divmod(step, steps_per_epoch)
            order = _epoch_order(len(train_examples), config.seed, epoch)
            first = group * config.gradient_accumulation_steps * config.per_device_train_batch_size
            size = config.gradient_accumulation_steps * config.per_device_train_batch_size
            chosen = [train_examples[i] for i in order[first : first + size]]
            micro = _batches(chosen, config.per_device_train_batch_size)
            n_labels = sum(b.num_labels for b in micro)
            for batch in micro:
                loss, _ = _forward_loss(torch, model, batch, device, dtype)
                # Normalise by the whole step's label tokens: every token weighs the same across micro-batches.
                (loss / max(n_labels, 1)).backward()
                window_loss += float(loss.detach())
                window_tokens += batch.num_tokens
            window_labels += n_labels
            params = list(named.values())
            if config.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            else:
                grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
            lr = float(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_done += sum(b.num_tokens for b in micro)

            logged: dict[str, float] | None = None
            if step % config.logging_steps == 0 or step == total_steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                logged = {
                    "loss": window_loss / max(window_labels, 1),
                    "learning_rate": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_second": window_tokens / elapsed,
                    "epoch": step / steps_per_epoch,
                }
                sink.log_metrics(logged, step)
                sink.flush()
                window_loss, window_labels, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
            view.update(step, total_steps, logged)

            epoch_end = step % steps_per_epoch == 0
            if eval_batches and (
                (config.evaluation_strategy == "steps" and step % config.eval_steps == 0)
                or (config.evaluation_strategy == "epoch" and epoch_end)
            ):
                final_eval = evaluate_now()
            want_stop = (stop_after_steps is not None and step >= stop_after_steps) or bool(
                should_stop and should_stop()
            )
            if step < total_steps and (step % config.save_steps == 0 or epoch_end or want_stop):
                _save_checkpoint(torch, out, step, named, optimizer, scheduler, config.save_total_limit)
            if want_stop and step < total_steps:
                stopped = True
                break
        if not stopped and eval_batches and last_eval_step != step:
            final_eval = evaluate_now()
    finally:
        view.close()
        sink.flush()
        torch.set_num_threads(threads)

    runtime = time.perf_counter() - started
    model_dir = None if stopped else _save_final(config, model, tokenizer)
    if not stopped:
        sink.log_metrics({"train_runtime": runtime, "train_tokens_per_second": tokens_done / runtime}, step)
        sink.flush()
        (out / "result.json").write_text(
            json.dumps({"global_step": step, "total_steps": total_steps, "final_eval_loss": final_eval}),
            encoding="utf-8",
        )
    return TrainResult(
        global_step=step,
        total_steps=total_steps,
        model_dir=model_dir,
        resumed_from=resumed_from,
        stopped=stopped,
        train_examples=len(train_examples),
        eval_examples=len(eval_examples),
        first_eval_loss=first_eval,
        final_eval_loss=final_eval,
        tokens=tokens_done,
        runtime_s=runtime,
    )
