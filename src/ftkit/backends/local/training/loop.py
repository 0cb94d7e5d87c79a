"""The training loop: :func:`train` reads as setup (:mod:`.loading`, :mod:`.optimizer`), steps, and finish.

A step takes ``per_device_train_batch_size x gradient_accumulation_steps`` conversations (in an order that
depends only on the seed and the epoch, so a resumed run sees the same batches), cuts them into micro-batches by
the token budget (:mod:`.budget`), sums their label-token losses and normalises by the step's label tokens, so a
step's result does not depend on the budget. Loss and gradient norm stay on the device until a logging step.
The run evaluates, checkpoints (:mod:`.checkpoints`) and stops on request between steps; :mod:`.finish` saves
the model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ....exceptions import Problem, ValidationError
from .. import qlora
from ..data import pack_arrays
from . import budget, checkpoints, cpu_bf16, finish, hardware, model_setup
from . import stopping as stops
from .config import MetricsSink, Progress, TrainConfig, TrainResult
from .forward import evaluate
from .loading import Loaded, load, wrap_forward
from .optimizer import make_optimizer
from .progress import ProgressView, announcer
from .ranks import Ranks
from .stopping import StopRequested

__all__ = ["train"]

_SMALL_MODEL_PARAMS = 20_000_000


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # The order depends on (seed, epoch) only, so a resumed run sees the same batches as an uninterrupted one.
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


class _Steps:
    """Strictly private: the optimizer steps of one run, from its first (or resumed) step to its last or a stop.

    Holds what the steps change between them: the step count, the logging window (loss and gradient norm stay
    on the device until a logging step: reading them would make the host wait for the GPU in every step, and the
    next step's data could not be prepared while the GPU works), and the evaluation losses.
    """

    def __init__(
        self,
        torch: Any,
        transformers: Any,
        config: TrainConfig,
        device: str,
        loaded: Loaded,
        ranks: Ranks,
        sink: MetricsSink | Any,
        check: Callable[[], None],  # between evaluation batches: raises StopRequested (ranks agree)
    ) -> None:
        self.torch, self.config, self.device, self.loaded = torch, config, device, loaded
        self.ranks, self.sink, self.check = ranks, sink, check
        self.opt = make_optimizer(torch, transformers, config, loaded.model, device, ranks, len(loaded.train_set))
        self.total_steps = self.opt.total_steps
        self.step = 0
        self.resumed_from: int | None = None
        self.first_eval: float | None = None
        self.final_eval: float | None = None
        self.tokens_done = 0
        self.window_loss = torch.zeros((), device=device)
        self.window_labels, self.window_tokens, self.window_start = 0, 0, time.perf_counter()
        self.grad_norm: Any = None
        self.last_eval_step = -1
        self.stopped = False

    @property
    def named(self) -> dict[str, Any]:
        """The trainable weights (their float32 masters when the model holds bf16 ones), by name."""
        return self.opt.trainables.named

    def resume(self, out: Path) -> None:
        """Continue from the newest checkpoint in ``out``, if there is one."""
        ckpt = checkpoints.latest_checkpoint(out)
        if ckpt is None:
            return
        opt = self.opt
        loaded = checkpoints.load_checkpoint(
            self.torch, ckpt, *self.ranks.loading(self.named, opt.optimizer), opt.scheduler
        )
        self.step = self.resumed_from = loaded
        opt.trainables.push()

    def outcome(self) -> finish.Outcome:
        """How the steps ended, as plain values."""
        return finish.Outcome(
            self.step,
            self.total_steps,
            self.resumed_from,
            self.stopped,
            self.first_eval,
            self.final_eval,
            self.tokens_done,
        )

    def evaluate_now(self) -> float:
        """Evaluate, log ``eval_loss`` at this step; the time it takes does not count against tokens/s."""
        began = time.perf_counter()
        with stops.evaluating(self.ranks):  # an evaluation has nothing to keep either
            loaded = self.loaded
            value = evaluate(
                self.torch, loaded.model, loaded.forward, loaded.eval_batches, self.device, self.ranks, self.check
            )
        self.window_start += time.perf_counter() - began  # tokens/s measures training, not evaluation
        self.sink.log_metrics({"eval_loss": value}, self.step)
        self.sink.flush()
        self.last_eval_step = self.step
        return value

    def train_step(self) -> float:
        """One optimizer step over this rank's micro-batches; returns the learning rate it stepped with."""
        torch, config, ranks, opt = self.torch, self.config, self.ranks, self.opt
        train_set = self.loaded.train_set
        epoch, group = divmod(self.step, opt.steps_per_epoch)
        order = _epoch_order(len(train_set), config.seed, epoch)
        chosen = order[group * opt.per_step : (group + 1) * opt.per_step]
        share = ranks.step_share(train_set, chosen, self.loaded.plan.budget, budget.split)  # this rank's part
        micro = [pack_arrays(train_set, g) for g in share.groups]
        n_labels = share.labels  # the whole step's, on every rank
        for batch, weight in zip(micro, share.weights, strict=True):
            loss = self.loaded.forward(batch)
            if weight != 1.0:  # a repeat that keeps the ranks in step (see .ranks)
                loss = loss * weight
            # Normalise by the whole step's label tokens: every token weighs the same across micro-batches,
            # so the step does not depend on how the budget cut it.
            (loss / max(n_labels, 1)).backward()
            opt.trainables.accumulate()
            self.window_loss += loss.detach()
        self.window_tokens += share.tokens
        self.window_labels += n_labels
        masters = opt.trainables.masters
        if config.max_grad_norm > 0:
            self.grad_norm = ranks.plain(torch.nn.utils.clip_grad_norm_(masters, config.max_grad_norm))
        else:
            grads = [p.grad for p in masters if p.grad is not None]
            self.grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else None
        lr = float(opt.scheduler.get_last_lr()[0])
        opt.optimizer.step()
        opt.scheduler.step()
        opt.optimizer.zero_grad(set_to_none=True)
        opt.trainables.push()
        self.step += 1
        self.tokens_done += share.tokens
        return lr

    def log_window(self, lr: float) -> dict[str, float] | None:
        """At a logging step, the window's metrics (logged), else ``None``."""
        step = self.step
        if not (step % self.config.logging_steps == 0 or step == self.total_steps):
            return None
        loss_sum = float(self.ranks.sum(self.window_loss))  # the one wait for the GPU, once per logging window
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        logged = {
            "loss": loss_sum / max(self.window_labels, 1),
            "learning_rate": lr,
            "grad_norm": float(self.grad_norm) if self.grad_norm is not None else 0.0,
            "tokens_per_second": self.window_tokens / elapsed,
            "epoch": step / self.opt.steps_per_epoch,
        }
        self.sink.log_metrics(logged, step)
        self.sink.flush()
        self.window_loss.zero_()
        self.window_labels, self.window_tokens, self.window_start = 0, 0, time.perf_counter()
        return logged

    def evaluate_if_due(self, epoch_end: bool) -> bool:
        """Evaluate when the strategy says so; whether a stop request cut the evaluation short."""
        config = self.config
        if self.loaded.eval_batches and (
            (config.evaluation_strategy == "steps" and self.step % config.eval_steps == 0)
            or (config.evaluation_strategy == "epoch" and epoch_end)
        ):
            try:
                self.final_eval = self.evaluate_now()
            except StopRequested:
                return True  # checkpointed after it, as any stop after a step
        return False

    def save(self) -> None:
        """Write a checkpoint of this step (gathered from every rank; rank 0 writes it)."""
        saved, saved_optimizer = self.ranks.gathered(self.named, self.opt.optimizer)
        if self.ranks.main:
            checkpoints.save_checkpoint(
                self.torch,
                Path(self.config.output_dir),
                self.step,
                saved,
                saved_optimizer,
                self.opt.scheduler,
                self.config.save_total_limit,
            )

    def run(
        self,
        view: ProgressView,
        say: Callable[[str], None],
        stop_after_steps: int | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        """Evaluate the base model, step to the end or a stop, evaluate the result."""
        ranks, config, total = self.ranks, self.config, self.total_steps
        if self.loaded.eval_batches and self.step == 0:
            say(f"evaluating the base model on {len(self.loaded.eval_set or ()):,} conversations (step 0)")
            try:
                self.first_eval = self.evaluate_now()
            except StopRequested:
                self.stopped = True  # nothing trained yet: nothing to checkpoint
        if not self.stopped:
            base = f" (step 0: eval loss {self.first_eval:.4f})" if self.first_eval is not None else ""
            say(f"training from step {self.step} to {total}" if self.step else f"training {total} steps{base}")
        while not self.stopped and self.step < total:
            lr = self.train_step()
            view.update(self.step, total, self.log_window(lr))
            epoch_end = self.step % self.opt.steps_per_epoch == 0
            want_stop = self.evaluate_if_due(epoch_end) or ranks.agree(  # all ranks stop after the same step
                (stop_after_steps is not None and self.step >= stop_after_steps) or bool(should_stop and should_stop())
            )
            if self.step < total and (self.step % config.save_steps == 0 or epoch_end or want_stop):
                self.save()
                if not want_stop and ranks.agree(stops.asked(should_stop)):
                    want_stop = True  # asked while the checkpoint was written: it is the one to resume from
            if want_stop and self.step < total:
                self.stopped = True
                break
        if not self.stopped and self.loaded.eval_batches and self.last_eval_step != self.step:
            try:
                self.final_eval = self.evaluate_now()
            except StopRequested:  # every step is done: the resumed run only evaluates and saves
                self.save()  # gathered: a collective on every rank (rank 0 writes)
                self.stopped = True


def _check_qlora(config: TrainConfig, device: str, ranks: Ranks) -> None:
    """Strictly private: a 4-bit run needs CUDA, LoRA, bitsandbytes and one process."""
    qlora.require_device(device, config.apply_lora, config.quantize)
    qlora.bitsandbytes()
    if ranks.world > 1:
        raise ValidationError(
            [Problem("local.quantize", "4-bit weights train on one process only", "set local.processes: 1")],
            "QLoRA cannot run here",
        )


def train(
    config: TrainConfig,
    *,
    metrics: MetricsSink | Any | None = None,
    progress: Progress = "auto",
    stop_after_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Fine-tune ``config.model_dir`` on ``config.train_file`` and save the result under ``config.output_dir``.

    Args:
        config: The run.
        metrics: Receives ``loss``, ``learning_rate``, ``grad_norm``, ``tokens_per_second``, ``epoch`` every
            ``logging_steps`` and ``eval_loss`` at each evaluation (step 0 included): a
            :class:`~ftkit.backends.local.tracking.RunLogger` or any :class:`MetricsSink`.
        progress: ``auto`` (a rich bar in a terminal, quiet otherwise), ``rich``, ``plain`` (lines) or ``none``.
        stop_after_steps: Stop (with a checkpoint) once this many steps are done in total: for tests and demos.
        should_stop: Polled after every step and checkpoint write, between evaluation batches and between the
            loading phases; when it returns true the run checkpoints (if it trained since the last one) and stops
            (cancellation). :func:`stop_now` (from a signal handler) also cuts model loading and tokenisation short,
            and with one process evaluations too; several ranks agree on every stop (see :mod:`.stopping`).
        resume: Continue from the newest checkpoint in ``output_dir``, if there is one.
        ranks: This process's rank of a multi-process run (:class:`~.ranks.TorchRanks`); one process
            by default.

    Returns:
        What happened.

    Raises:
        ValidationError: Bad settings or unusable data.
        MissingDependencyError: The ``local`` extra is not installed.
    """
    torch = hardware.import_torch()
    transformers = hardware.import_transformers()
    sink = metrics if metrics is not None else MetricsSink()
    ranks = ranks if ranks is not None else Ranks()
    started = time.perf_counter()
    device = hardware.pick_device(torch, config.device)
    dtype = hardware.compute_dtype(torch, device, config.precision)
    if config.quantize != "none":
        _check_qlora(config, device, ranks)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = announcer(sink, progress, ranks)

    def check() -> None:
        """A stop request polled between the loading phases (ranks: each on its own, agreed at the end)."""
        if stops.asked(should_stop):
            raise StopRequested

    # packed micro-batches vary in length: see hardware.cuda_allocator (process-wide, put back at the end)
    with hardware.cuda_allocator(torch, device, bool(budget.TUNING["expandable_segments"])):
        try:
            with stops.loading(ranks, should_stop):  # loading and tokenising: nothing to keep, a stop cuts them short
                loaded = load(torch, transformers, config, device, dtype, ranks, say, check)
        except StopRequested:
            done = checkpoints.latest_checkpoint(out) if resume else None
            at = int(done.name.rsplit("-", 1)[-1]) if done is not None else 0
            return TrainResult(global_step=at, total_steps=0, model_dir=None, stopped=True)
        threads = torch.get_num_threads()
        if device == "cpu" and sum(p.numel() for p in loaded.model.parameters()) < _SMALL_MODEL_PARAMS:
            # Intra-op threads cost more than they save on tiny matrices (measured: 17x slower linear layers with
            # 2 threads than with 1 on a 2-core machine), so small models train single-threaded.
            torch.set_num_threads(1)
        loaded = wrap_forward(torch, loaded, device, dtype, ranks)
        steps = _Steps(torch, transformers, config, device, loaded, ranks, sink, stops.agreed(ranks, should_stop))
        if resume:
            steps.resume(out)
        view = ProgressView(progress, steps.total_steps, steps.step)
        try:
            steps.run(view, say, stop_after_steps, should_stop)
        finally:
            view.close()
            sink.flush()
            torch.set_num_threads(threads)

        runtime = time.perf_counter() - started
        outcome = steps.outcome()
        examples = (len(loaded.train_set), len(loaded.eval_set) if loaded.eval_set is not None else 0)
        model_dir: Path | None = None
        if not outcome.stopped and config.quantize != "none" and config.merge_lora_weights:
            merge = finish.merge_inputs(torch, config, loaded, steps.named, device, ranks)
            # The 4-bit model goes (nothing else holds it) so that the bf16 merged model fits where it ran.
            del loaded, steps
            model_dir = finish.save_merged(
                torch, config, merge.tokenizer, merge.weights, merge.batches, merge.adapter, device, merge.plan
            )
        elif not outcome.stopped:
            cpu_bf16.disable(torch, loaded.model)  # merge and save from the float32 weights
            model_dir = finish.final_model(
                config, loaded, steps.named, ranks, lambda: model_setup.build_model(config, "cpu", dtype)
            )
    return finish.report(sink, ranks, out, outcome, model_dir, examples, runtime)
