"""`Evaluation`: base against tuned on the same held-out prompts, through their endpoints.

::

    tuned = Candidate("tuned", backend.endpoints, "my-endpoint", "demo", model=registered)
    base = Candidate("base", backend.endpoints, "my-endpoint", "base", model=base_model)
    result = Evaluation(settings, tuned=tuned, base=base, prompts=load_prompts("test.jsonl", 40)).run()
    result.write("runs/x")      # evaluation.json, evaluation.md
    result.gate()               # raises EvaluationGateError when a requirement is not met

Answers are greedy and generated concurrently (``settings.concurrency`` requests in flight per candidate); every
finished answer and judgement is appended to ``evaluation.partial.jsonl`` at once, so an interruption or a
failing judge loses nothing already computed. Held-out loss is asked of the backend (the local one computes it
with training's own masking; Azure ML serves generations only and says so).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..backends.base import Endpoints, RegisteredModel
from ..exceptions import EvaluationError, FtkitError
from .judge import Judge
from .prompts import HeldOutPrompt
from .result import EvaluationResult, ExampleResult
from .scores import MetricResult, compare_means, compare_token_losses, reference_scorer
from .spec import BUILTIN_METRICS, EvaluateSection

__all__ = ["Candidate", "Evaluation", "LossFunction"]

LossFunction = Callable[[RegisteredModel, Sequence[Sequence[Mapping[str, Any]]]], "list[tuple[float, int]] | None"]
"""``(model, conversations) -> [(summed NLL, assistant tokens), ...]``, or ``None`` where it cannot be computed."""


@attrs.frozen(kw_only=True)
class Candidate:
    """A model to evaluate, as it is served.

    Attributes:
        label: ``tuned`` or ``base``.
        endpoints: The backend's endpoints (what scores it).
        endpoint: The endpoint's name.
        deployment: The deployment to name in every request (``None``: the endpoint's traffic decides).
        model: The model behind it, where held-out loss can be computed from its files.
    """

    label: str
    endpoints: Endpoints = attrs.field(eq=False, repr=False)
    endpoint: str
    deployment: str | None = None
    model: RegisteredModel | None = None

    @property
    def target(self) -> str:
        """``endpoint/deployment`` as reports show it."""
        return f"{self.endpoint}/{self.deployment}" if self.deployment else self.endpoint

    def describe(self) -> dict[str, Any]:
        """The candidate as recorded in ``evaluation.json``."""
        model = self.model
        return {
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "model": None if model is None else {"name": model.name, "version": model.version, "id": model.id},
        }


def _answer_text(response: Any) -> str:
    from ..deploy import answer_text

    return answer_text(response)


class _Partial:
    """Appends finished work to ``evaluation.partial.jsonl`` (one JSON object a line, flushed at once)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("w", encoding="utf-8")

    def add(self, record: Mapping[str, Any]) -> None:
        if self._fh is None:
            return
        with self._lock:
            self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            self._fh.flush()

    def close(self, *, remove: bool) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if remove and self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


class _Progress:
    """Throttled progress lines with an ETA."""

    def __init__(self, what: str, total: int, report: Callable[[str], None] | None, every_s: float = 2.0) -> None:
        self.what, self.total, self.report, self.every_s = what, total, report, every_s
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.report is None or (now - self._last < self.every_s and self.done < self.total):
            return
        self._last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done)
        tail = f", ETA {_duration(eta)}" if self.done < self.total else f" in {_duration(elapsed)}"
        self.report(f"{self.what} {self.done}/{self.total}{tail}")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class Evaluation:
    """Compares a tuned model with its base model on held-out prompts.

    Args:
        settings: The job file's ``evaluate`` section (metrics, checks, judge, gates, concurrency).
        tuned: The tuned model's candidate.
        base: The base model's candidate.
        prompts: The held-out prompts (see :func:`~ftkit.evaluation.load_prompts`).
        losses: Computes held-out loss for a model (the backend's ``heldout_losses``); ``None``: not measured.
        loss_note: Why loss is not measured, or what stands in for it (e.g. the component's eval loss).
        judge: The pairwise judge, when ``settings.judge`` is set (built from it by default).
        out_dir: Where ``evaluation.partial.jsonl`` goes while the evaluation runs (``None``: nowhere).
        on_progress: Told a line of progress (with an ETA) now and then.
        timeout_s: One generation request's timeout.
    """

    def __init__(
        self,
        settings: EvaluateSection,
        *,
        tuned: Candidate,
        base: Candidate,
        prompts: Sequence[HeldOutPrompt],
        losses: LossFunction | None = None,
        loss_note: str | None = None,
        judge: Judge | None = None,
        out_dir: Path | None = None,
        on_progress: Callable[[str], None] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.settings = settings
        self.tuned = tuned
        self.base = base
        self.prompts = list(prompts)
        self.losses = losses
        self.loss_note = loss_note
        self.judge = judge if judge is not None or settings.judge is None else Judge(settings.judge)
        self.out_dir = out_dir
        self.on_progress = on_progress
        self.timeout_s = timeout_s
        self.partial_path = out_dir / "evaluation.partial.jsonl" if out_dir is not None else None

    def _say(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)

    def run(self) -> EvaluationResult:
        """Generate, score and compare; the result is not written (see :meth:`EvaluationResult.write`).

        Returns:
            The result, with every prompt, both answers, every score and the comparisons.

        Raises:
            EvaluationError: No prompt was answered by both models (each failure is in the message).
            MissingDependencyError: A metric's library is missing (the ``eval`` extra).
        """
        started = time.monotonic()
        scorers = {name: reference_scorer(name) for name in self.settings.metrics if name in ("rouge_l", "chrf")}
        partial = _Partial(self.partial_path)
        ok = False
        try:
            answers, errors = self._generate(partial)
            both = [i for i in range(len(self.prompts)) if ("base", i) in answers and ("tuned", i) in answers]
            if not both:
                shown = "; ".join(f"{k[0]} prompt {k[1]}: {v}" for k, v in list(errors.items())[:3])
                raise EvaluationError(f"no prompt was answered by both models ({shown})")
            judged, judge_errors = self._judge(answers, both, partial)
            examples = self._examples(answers, errors, judged, judge_errors, scorers)
            metrics = self._compare(examples)
            ok = True
        finally:
            partial.close(remove=ok)
        notes = []
        failed = len(self.prompts) - len(both)
        if failed:
            notes.append(f"{failed} of {len(self.prompts)} prompt(s) not compared: a model's answer failed")
        if judge_errors:
            notes.append(f"the judge failed on {len(judge_errors)} prompt(s); judged on the rest")
        if self.judge is not None and self.judge.unparsed:
            notes.append(f"{self.judge.unparsed} judge verdict(s) were neither A, B nor TIE: counted as ties")
        return EvaluationResult(
            settings=self.settings,
            tuned=self.tuned.describe(),
            base=self.base.describe(),
            examples=tuple(examples),
            metrics=tuple(metrics),
            notes=tuple(notes),
            duration_s=time.monotonic() - started,
        )

    # ---------------------------------------------------------------- generation

    def _generate(self, partial: _Partial) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]]:
        from ..jobfile import ScoreSection

        greedy = ScoreSection(temperature=0.0, top_p=1.0, do_sample=False, max_new_tokens=self.settings.max_new_tokens)
        from ..deploy import request_body

        tasks = [(c, i) for i in range(len(self.prompts)) for c in (self.tuned, self.base)]
        answers: dict[tuple[str, int], str] = {}
        errors: dict[tuple[str, int], str] = {}
        progress = _Progress("answers", len(tasks), self.on_progress)
        self._say(f"generating {len(tasks)} greedy answers ({len(self.prompts)} prompts x 2 models)")

        def one(candidate: Candidate, i: int) -> str:
            body = request_body(self.prompts[i].messages, greedy)
            try:
                response = candidate.endpoints.score(
                    candidate.endpoint, body, deployment=candidate.deployment, timeout_s=self.timeout_s
                )
            except FtkitError as exc:
                partial.add(
                    {"kind": "answer", "model": candidate.label, "prompt": i, "answer": None, "error": str(exc)}
                )
                raise
            answer = _answer_text(response)
            # Saved from the worker thread as soon as it exists: a stop that interrupts the main thread loses nothing.
            partial.add({"kind": "answer", "model": candidate.label, "prompt": i, "answer": answer, "error": None})
            return answer

        def done(key: tuple[str, int], answer: str | None, error: str | None) -> None:
            if answer is not None:
                answers[key] = answer
            else:
                errors[key] = error or "failed"
            progress.step()

        _in_threads(
            [((c.label, i), functools.partial(one, c, i)) for c, i in tasks],
            workers=2 * self.settings.concurrency,
            on_done=done,
        )
        return answers, errors

    def _judge(
        self, answers: Mapping[tuple[str, int], str], both: Sequence[int], partial: _Partial
    ) -> tuple[dict[int, float], dict[int, str]]:
        judge = self.judge
        if judge is None:
            return {}, {}
        judged: dict[int, float] = {}
        errors: dict[int, str] = {}
        progress = _Progress("judged", len(both), self.on_progress)
        self._say(f"asking the judge about {len(both)} prompts (both orders)")

        def done(i: int, score: float | None, error: str | None) -> None:
            if score is not None:
                judged[i] = score
            else:
                errors[i] = error or "failed"
            progress.step()

        def ask(i: int) -> float:
            try:
                score = judge.score(self.prompts[i].messages, answers[("base", i)], answers[("tuned", i)])
            except FtkitError as exc:
                partial.add({"kind": "judge", "prompt": i, "tuned_score": None, "error": str(exc)})
                raise
            partial.add({"kind": "judge", "prompt": i, "tuned_score": score, "error": None})
            return score

        _in_threads(
            [(i, functools.partial(ask, i)) for i in both],
            workers=self.settings.concurrency,
            on_done=done,
        )
        return judged, errors

    # ---------------------------------------------------------------- scoring

    def _examples(
        self,
        answers: Mapping[tuple[str, int], str],
        errors: Mapping[tuple[str, int], str],
        judged: Mapping[int, float],
        judge_errors: Mapping[int, str],
        scorers: Mapping[str, Callable[[str, str], float]],
    ) -> list[ExampleResult]:
        examples = []
        for i, prompt in enumerate(self.prompts):
            base, tuned = answers.get(("base", i)), answers.get(("tuned", i))
            scores: dict[str, dict[str, float]] = {}
            for label, answer in (("base", base), ("tuned", tuned)):
                if answer is None:
                    continue
                for name, scorer in scorers.items():
                    scores.setdefault(name, {})[label] = scorer(answer, prompt.reference)
                for check in self.settings.checks:
                    passed = check.passes(answer, prompt.reference)
                    scores.setdefault(f"check:{check.name}", {})[label] = float(passed)
            if i in judged:
                scores["judge"] = {"tuned": judged[i], "base": 1.0 - judged[i]}
            problems = {k[0]: v for k, v in errors.items() if k[1] == i}
            if i in judge_errors:
                problems["judge"] = judge_errors[i]
            examples.append(
                ExampleResult(
                    index=i,
                    line=prompt.line,
                    messages=prompt.messages,
                    reference=prompt.reference,
                    base=base,
                    tuned=tuned,
                    scores=scores,
                    errors=problems,
                )
            )
        return examples

    def _compare(self, examples: list[ExampleResult]) -> list[MetricResult]:
        s = self.settings
        results: dict[str, MetricResult] = {}
        if "loss" in s.metrics or "perplexity" in s.metrics:
            results.update(self._losses(examples))
        for name in s.metric_names():
            if name in results or name in ("loss", "perplexity"):
                continue
            paired = [e for e in examples if name in e.scores and len(e.scores[name]) == 2]
            higher = BUILTIN_METRICS.get(name, ("", True))[1]
            description = None
            note = None
            if name.startswith("check:"):
                check = next(c for c in s.checks if f"check:{c.name}" == name)
                description = f"share of answers passing the {check.kind} check {check.name!r}"
            elif name == "judge":
                description = "tuned model's pairwise win rate by the judge, both orders (0.5: a draw)"
                note = "the base column is the base model's win rate"
            results[name] = compare_means(
                name,
                [e.scores[name]["base"] for e in paired],
                [e.scores[name]["tuned"] for e in paired],
                higher_is_better=higher,
                description=description,
                note=note,
                resamples=s.bootstrap,
                confidence=s.confidence,
                seed=s.seed,
            )
        return [results[name] for name in s.metric_names() if name in results]

    def _losses(self, examples: list[ExampleResult]) -> dict[str, MetricResult]:
        def missing(why: str) -> dict[str, MetricResult]:
            return {
                name: MetricResult(
                    name=name,
                    description=BUILTIN_METRICS[name][0],
                    higher_is_better=False,
                    base=None,
                    tuned=None,
                    note=why,
                )
                for name in ("loss", "perplexity")
            }

        if self.losses is None:
            return missing(self.loss_note or "not measured: the backend serves generations only")
        if self.tuned.model is None or self.base.model is None:
            return missing("not measured: a candidate is an endpoint given by name, without model files")
        conversations = [p.conversation for p in self.prompts]
        self._say(f"held-out loss of both models on {len(conversations)} conversations")
        base = self.losses(self.base.model, conversations)
        tuned = self.losses(self.tuned.model, conversations)
        if base is None or tuned is None:
            return missing(self.loss_note or "not measured: the backend cannot compute held-out loss")
        for example, b, t in zip(examples, base, tuned, strict=True):
            if b[1] and t[1]:
                example.scores["loss"] = {"base": b[0] / b[1], "tuned": t[0] / t[1]}
        s = self.settings
        loss, perplexity = compare_token_losses(
            base, tuned, resamples=s.bootstrap, confidence=s.confidence, seed=s.seed
        )
        return {"loss": loss, "perplexity": perplexity}


def _in_threads(
    tasks: Sequence[tuple[Any, Callable[[], Any]]],
    *,
    workers: int,
    on_done: Callable[[Any, Any, str | None], None],
) -> None:
    """Run ``tasks`` on a thread pool; ``on_done(key, value, error)`` runs in this thread as each finishes.

    The calling thread waits in short slices, so SIGINT/SIGTERM (raised in this thread by ftkit's handlers)
    stop the loop at once; queued tasks are then cancelled and running ones are left to finish on their own.
    An ftkit error of one task is recorded for it; anything else stops the evaluation.
    """
    pool = cf.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ftkit-eval")
    futures = {pool.submit(fn): key for key, fn in tasks}
    try:
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                key = futures[future]
                try:
                    value = future.result()
                except FtkitError as exc:
                    on_done(key, None, f"{type(exc).__name__}: {exc}")
                else:
                    on_done(key, value, None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
