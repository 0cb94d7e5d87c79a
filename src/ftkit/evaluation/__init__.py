"""Did the fine-tune help? The tuned model against its base, on held-out prompts, with intervals and a gate.

The public pieces: :class:`EvaluateSection` (the job file's ``evaluate:``), :class:`Evaluation` (runs one),
:class:`Candidate` (a model as it is served), :func:`load_prompts` (held-out conversations) and
:class:`EvaluationResult` (the report, ``evaluation.json``, the gate). ``ftkit run`` runs it as a stage after
deploy; ``ftkit eval`` runs it on a finished run or on any two deployments. See docs/evaluation.md.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

# The values load eagerly (the job file needs them); the rest on first use, because they sit in a higher layer
# (they drive backends) and the job file must not import backends.
from .spec import BUILTIN_METRICS, Check, EvaluateSection, JudgeSettings, Requirement, load_evaluate_section

if _typing.TYPE_CHECKING:
    from .evaluation import Candidate, Evaluation, LossFunction
    from .judge import Judge
    from .prompts import HeldOutPrompt, load_prompts
    from .result import EvaluationResult, ExampleResult, GateResult
    from .scores import MetricResult

_LAZY = {
    "Candidate": "evaluation",
    "Evaluation": "evaluation",
    "LossFunction": "evaluation",
    "Judge": "judge",
    "HeldOutPrompt": "prompts",
    "load_prompts": "prompts",
    "EvaluationResult": "result",
    "ExampleResult": "result",
    "GateResult": "result",
    "MetricResult": "scores",
}

__all__ = [
    "BUILTIN_METRICS",
    "Candidate",
    "Check",
    "EvaluateSection",
    "Evaluation",
    "EvaluationResult",
    "ExampleResult",
    "GateResult",
    "HeldOutPrompt",
    "Judge",
    "JudgeSettings",
    "LossFunction",
    "MetricResult",
    "Requirement",
    "load_evaluate_section",
    "load_prompts",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_importlib.import_module(f".{module}", __name__), name)
