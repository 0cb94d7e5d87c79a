"""Per-answer scores and their paired comparison: reference metrics, user checks, and the bootstrap.

ROUGE-L comes from Google's ``rouge-score`` (the reference implementation) and chrF from ``sacrebleu``; both
are behind the ``eval`` extra and imported on first use. Every comparison is *paired*: base and tuned answer
the same prompts, and the bootstrap resamples prompts (not answers), so the interval is of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..exceptions import MissingDependencyError
from .spec import BUILTIN_METRICS

__all__ = ["MetricResult", "compare_means", "compare_token_losses", "reference_scorer"]


@attrs.frozen(kw_only=True)
class MetricResult:
    """One metric for both models, with the improvement and its bootstrap interval.

    Attributes:
        name: ``loss``, ``perplexity``, ``rouge_l``, ``chrf``, ``check:NAME`` or ``judge``.
        description: What it measures.
        higher_is_better: Its direction (the improvement is signed so that positive is always better).
        base: The base model's value (``None`` where not measured).
        tuned: The tuned model's value.
        improvement: Tuned better by this much (``None`` where not measured for both).
        low: The interval's lower end.
        high: The interval's upper end.
        n: Prompts it was measured on.
        note: Why it is missing or what it rests on, where that needs saying.
    """

    name: str
    description: str
    higher_is_better: bool
    base: float | None
    tuned: float | None
    improvement: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    note: str | None = None

    @property
    def verdict(self) -> str:
        """``better``, ``worse``, ``no clear difference`` (interval spans 0) or ``not compared``."""
        if self.low is None or self.high is None:
            return "not compared"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"


def _bootstrap_indices(n: int, resamples: int, seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(values: Any, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def compare_means(
    name: str,
    base: Sequence[float],
    tuned: Sequence[float],
    *,
    higher_is_better: bool = True,
    description: str | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    note: str | None = None,
) -> MetricResult:
    """Compare per-prompt scores by their means (paired bootstrap over prompts).

    Args:
        name: The metric's name.
        base: The base model's score on each prompt.
        tuned: The tuned model's score on the same prompts, in the same order.
        higher_is_better: The metric's direction.
        description: What it measures (default: the built-in metric's description).
        resamples: Bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.
        note: A note for the report.

    Returns:
        The comparison.
    """
    import numpy as np

    if len(base) != len(tuned):
        raise ValueError(f"{name}: {len(base)} base scores against {len(tuned)} tuned scores")
    desc = description or BUILTIN_METRICS.get(name, (name, True))[0]
    if not base:
        return MetricResult(
            name=name,
            description=desc,
            higher_is_better=higher_is_better,
            base=None,
            tuned=None,
            note=note or "no prompt was answered by both models",
        )
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * (t - b)
    means = diff[_bootstrap_indices(len(diff), resamples, seed)].mean(axis=1)
    low, high = _interval(means, confidence)
    return MetricResult(
        name=name,
        description=desc,
        higher_is_better=higher_is_better,
        base=float(b.mean()),
        tuned=float(t.mean()),
        improvement=float(diff.mean()),
        low=low,
        high=high,
        n=len(diff),
        note=note,
    )


def compare_token_losses(
    base: Sequence[tuple[float, int]],
    tuned: Sequence[tuple[float, int]],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[MetricResult, MetricResult]:
    """Compare held-out loss and perplexity, token-weighted (as training's eval loss is), paired by prompt.

    Args:
        base: ``(summed negative log-likelihood, assistant tokens)`` per prompt for the base model.
        tuned: The same for the tuned model (same prompts, same order).
        resamples: Bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.

    Returns:
        ``(loss, perplexity)``; improvements are base minus tuned (lower is better for both).
    """
    import numpy as np

    pairs = [(b, t) for b, t in zip(base, tuned, strict=True) if b[1] > 0 and t[1] > 0]
    results = []
    for name in ("loss", "perplexity"):
        desc = BUILTIN_METRICS[name][0]
        if not pairs:
            results.append(
                MetricResult(
                    name=name,
                    description=desc,
                    higher_is_better=False,
                    base=None,
                    tuned=None,
                    note="no prompt had an assistant token to score",
                )
            )
            continue
        bn = np.asarray([b[0] for b, _ in pairs])
        bt = np.asarray([b[1] for b, _ in pairs], dtype=float)
        tn = np.asarray([t[0] for _, t in pairs])
        tt = np.asarray([t[1] for _, t in pairs], dtype=float)
        f: Callable[[Any], Any] = (lambda x: x) if name == "loss" else np.exp
        idx = _bootstrap_indices(len(pairs), resamples, seed)
        base_boot = f(bn[idx].sum(axis=1) / bt[idx].sum(axis=1))
        tuned_boot = f(tn[idx].sum(axis=1) / tt[idx].sum(axis=1))
        low, high = _interval(base_boot - tuned_boot, confidence)
        base_value = float(f(bn.sum() / bt.sum()))
        tuned_value = float(f(tn.sum() / tt.sum()))
        results.append(
            MetricResult(
                name=name,
                description=desc,
                higher_is_better=False,
                base=base_value,
                tuned=tuned_value,
                improvement=base_value - tuned_value,
                low=low,
                high=high,
                n=len(pairs),
            )
        )
    return results[0], results[1]


def reference_scorer(name: str) -> Callable[[str, str], float]:
    """Return ``score(answer, reference)`` for ``rouge_l`` or ``chrf``.

    Raises:
        MissingDependencyError: ``rouge-score`` or ``sacrebleu`` is not installed (the ``eval`` extra).
        ValueError: Not a reference metric.
    """
    if name == "rouge_l":
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise MissingDependencyError("rouge-score", "eval") from None
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

        def rouge_l(answer: str, reference: str) -> float:
            return float(scorer.score(reference, answer)["rougeL"].fmeasure)

        return rouge_l
    if name == "chrf":
        try:
            from sacrebleu.metrics.chrf import CHRF
        except ImportError:
            raise MissingDependencyError("sacrebleu", "eval") from None
        metric = CHRF()

        def chrf(answer: str, reference: str) -> float:
            score = float(metric.sentence_score(answer, [reference]).score)
            return score if math.isfinite(score) else 0.0

        return chrf
    raise ValueError(f"{name} is not a reference metric")
