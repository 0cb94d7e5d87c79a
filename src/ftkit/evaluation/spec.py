r"""``evaluate:``: what to compare, on which held-out prompts, with which metrics, and what the run requires.

Frozen values, no I/O. :func:`load_evaluate_section` reads the job file's section (lists of checks and
requirements included) and reports every problem with its key, as the rest of the job file does::

    evaluate:
      prompts: 40                 # held-out conversations from the test split
      metrics: [loss, rouge_l, chrf]
      checks:
        - {name: pirate, kind: regex, pattern: "(?i)\\barr+\\b"}
      require:
        - {metric: "check:pirate", min_delta: 0.2}
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs

from ..convert import BAD, bounds, convert_value
from ..exceptions import closest

__all__ = [
    "BUILTIN_METRICS",
    "Check",
    "EvaluateSection",
    "JudgeSettings",
    "Requirement",
    "load_evaluate_section",
]

# name -> (what it is, higher is better)
BUILTIN_METRICS: Mapping[str, tuple[str, bool]] = {
    "loss": ("mean cross-entropy of the held-out assistant tokens (training's masking)", False),
    "perplexity": ("exp(loss) over the held-out assistant tokens", False),
    "rouge_l": ("ROUGE-L F1 of the greedy answer against the held-out answer (rouge-score)", True),
    "chrf": ("chrF of the greedy answer against the held-out answer, 0-100 (sacrebleu)", True),
}
CheckKind = Literal["exact_match", "contains", "regex", "starts_with", "json_valid"]
_CHECK_KINDS: tuple[str, ...] = typing.get_args(CheckKind)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@attrs.frozen(kw_only=True)
class Check:
    """A user-declared check of an answer; scores 1 when it passes, 0 when not (reported as ``check:NAME``).

    Attributes:
        name: Its name in reports and requirements (letters, digits, ``_.-``).
        kind: ``exact_match`` / ``contains`` (the held-out answer, or ``value``), ``starts_with`` (``value``),
            ``regex`` (``pattern``, searched anywhere), ``json_valid`` (the answer parses as JSON).
        value: The text for ``starts_with`` (and for ``exact_match``/``contains`` against a fixed text).
        pattern: The regular expression for ``regex`` (Python syntax).
        ignore_case: Compare without case.
    """

    name: str
    kind: CheckKind
    value: str | None = None
    pattern: str | None = None
    ignore_case: bool = False

    def passes(self, answer: str, reference: str) -> bool:
        """Whether ``answer`` passes (``reference`` is the held-out answer, for ``exact_match``)."""
        text, want = answer.strip(), (self.value if self.value is not None else reference).strip()
        if self.ignore_case:
            text, want = text.casefold(), want.casefold()
        if self.kind == "exact_match":
            return " ".join(text.split()) == " ".join(want.split())
        if self.kind == "contains":
            return want in text
        if self.kind == "starts_with":
            return text.startswith(want)
        if self.kind == "regex":
            return re.search(self.pattern or "", answer, re.IGNORECASE if self.ignore_case else 0) is not None
        try:  # json_valid
            import json

            json.loads(answer.strip())
        except ValueError:
            return False
        return True


@attrs.frozen(kw_only=True)
class Requirement:
    """A gate: the run fails (before a deployment is kept) unless the tuned model is better by ``min_delta``.

    Improvements are signed so that positive is better for every metric (for ``loss`` and ``perplexity`` it is
    base minus tuned).

    Attributes:
        metric: A metric of the evaluation (``rouge_l``, ``check:NAME``, ``judge``...).
        min_delta: The least improvement required.
        use: ``lower_bound`` (default: the confidence interval's lower end must reach ``min_delta``, so a lucky
            sample does not pass) or ``estimate`` (the point estimate must).
    """

    metric: str
    min_delta: float = 0.0
    use: Literal["lower_bound", "estimate"] = "lower_bound"


@attrs.frozen(kw_only=True)
class JudgeSettings:
    """Pairwise LLM-as-judge through any OpenAI-compatible chat completions endpoint.

    Each prompt is judged twice, base first and tuned first, to cancel position bias; the tuned model scores 1
    for a win, 0.5 for a tie and 0 for a loss in each order (reported as ``judge``, a win rate; 0.5 is a draw).

    Attributes:
        url: The chat completions URL (``.../v1/chat/completions``, an Azure OpenAI deployment's URL, or a local
            ftkit endpoint's ``openai_uri``); a base URL ending in ``/v1`` gets ``/chat/completions`` added.
        model: The ``model`` field of the request (Azure OpenAI ignores it).
        api_key_env: The environment variable holding the key (the key itself never goes in a job file).
        auth: ``bearer`` (``Authorization: Bearer KEY``) or ``api-key`` (Azure OpenAI's header).
        rubric: What makes one answer better than the other (the judge's instructions).
        max_tokens: The judge's longest verdict.
        timeout_s: One request's timeout.
    """

    url: str
    model: str = "judge"
    api_key_env: str
    auth: Literal["bearer", "api-key"] = "bearer"
    rubric: str = "Which answer follows the user's request better: correct, helpful, and in the style asked for?"
    max_tokens: int = attrs.field(default=8, metadata=bounds(1, 1024))
    timeout_s: float = attrs.field(default=60.0, metadata=bounds(exclusive_minimum=0, maximum=3600))

    @property
    def chat_url(self) -> str:
        """The full chat completions URL."""
        url = self.url.rstrip("/")
        return f"{url}/chat/completions" if url.endswith("/v1") else url


@attrs.frozen(kw_only=True)
class EvaluateSection:
    """``evaluate:`` compare the tuned model with the base model on held-out prompts.

    Attributes:
        enabled: Run the evaluation (a section present is enabled unless this says false).
        prompts: Held-out conversations to evaluate (the first N of the split, in file order, after a seeded
            shuffle); more than the split holds is an error.
        split: ``test`` (the run's held-out split), ``score``, or the path of a JSONL file of conversations.
        metrics: Built-in metrics: ``loss`` (and ``perplexity``), ``rouge_l``, ``chrf``.
        checks: User-declared checks (see :class:`Check`).
        judge: Optional pairwise LLM judge (see :class:`JudgeSettings`).
        require: Gates (see :class:`Requirement`).
        base: ``deploy`` (the base model on a second deployment of the run's endpoint with 0% traffic, deleted
            after the evaluation), or ``ENDPOINT`` / ``ENDPOINT/DEPLOYMENT`` of something already serving.
        base_deployment: The base deployment's name when ``base: deploy``.
        max_new_tokens: Longest greedy answer.
        concurrency: Requests in flight at once, per candidate.
        confidence: Confidence level of the bootstrap intervals.
        bootstrap: Bootstrap resamples.
        seed: Seed of the prompt choice and the bootstrap.
        examples: Largest wins and losses shown side by side in the report.
    """

    enabled: bool = True
    prompts: int = attrs.field(default=50, metadata=bounds(2, 100_000))
    split: str = "test"
    metrics: tuple[str, ...] = ("loss", "rouge_l", "chrf")
    checks: tuple[Check, ...] = ()
    judge: JudgeSettings | None = None
    require: tuple[Requirement, ...] = ()
    base: str = "deploy"
    base_deployment: str = "base"
    max_new_tokens: int = attrs.field(default=128, metadata=bounds(1, 4096))
    concurrency: int = attrs.field(default=4, metadata=bounds(1, 256))
    confidence: float = attrs.field(default=0.95, metadata=bounds(exclusive_minimum=0.5, maximum=0.999))
    bootstrap: int = attrs.field(default=2000, metadata=bounds(100, 100_000))
    seed: int = attrs.field(default=0, metadata=bounds(0, 2**32 - 1))
    examples: int = attrs.field(default=3, metadata=bounds(0, 100))

    @property
    def deploys_base(self) -> bool:
        """Whether the evaluation puts the base model on a deployment of its own."""
        return self.base == "deploy"

    def base_target(self) -> tuple[str, str | None]:
        """``base`` as (endpoint, deployment or ``None``) when it names an existing one."""
        endpoint, _, deployment = self.base.partition("/")
        return endpoint, deployment or None

    def metric_names(self) -> tuple[str, ...]:
        """Every metric this evaluation reports, in report order."""
        names = [m for m in self.metrics if m in BUILTIN_METRICS]
        if "loss" in names and "perplexity" not in names:
            names.insert(names.index("loss") + 1, "perplexity")
        names += [f"check:{c.name}" for c in self.checks]
        if self.judge is not None:
            names.append("judge")
        return tuple(names)


_SCALARS = {f.name: f for f in attrs.fields(EvaluateSection) if f.name not in ("metrics", "checks", "judge", "require")}


def load_evaluate_section(
    raw: object, problem: Callable[[str, str, str | None], None], prefix: str = "evaluate"
) -> EvaluateSection | None:
    """Read the ``evaluate:`` mapping; report each problem through ``problem(where, message, suggestion)``.

    Args:
        raw: The section as YAML parsed it (``None`` or an empty mapping: every default).
        problem: Called for each problem.
        prefix: The section's key.

    Returns:
        The section, or ``None`` when anything was wrong (every problem reported).
    """
    if raw is None or raw is True:
        raw = {}
    if raw is False:
        raw = {"enabled": False}
    if not isinstance(raw, dict):
        problem(prefix, f"expected a mapping, got {type(raw).__name__}", None)
        return None
    hints = typing.get_type_hints(EvaluateSection)
    valid = [f.name for f in attrs.fields(EvaluateSection)]
    kwargs: dict[str, Any] = {}
    count = 0

    def report(where: str, message: str, suggestion: str | None = None) -> None:
        nonlocal count
        count += 1
        problem(where, message, suggestion)

    for key, value in raw.items():
        where = f"{prefix}.{key}"
        if key in _SCALARS:
            converted, reason = convert_value(value, hints[key], _SCALARS[key].metadata)
            if converted is BAD or reason is not None:
                report(where, reason or "bad value")
            else:
                kwargs[key] = converted
        elif key == "metrics":
            kwargs[key] = _metrics(value, where, report)
        elif key == "checks":
            kwargs[key] = _items(value, where, report, _check)
        elif key == "require":
            kwargs[key] = _items(value, where, report, _requirement)
        elif key == "judge":
            kwargs[key] = None if value is None else _judge(value, where, report)
        else:
            near = closest(str(key), valid)
            report(where, "unknown key", f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(valid)}")
    # Cross-checks run on what loaded, so one round of errors shows them too; a check that failed to load is
    # still a name a requirement may use.
    declared = {str(c.get("name")) for c in _as_list(raw.get("checks")) if isinstance(c, dict)}
    section = EvaluateSection(**kwargs)
    _cross_checks(section, prefix, report, declared)
    return None if count else section


def _as_list(value: object) -> list[Any]:
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


def _metrics(value: object, where: str, report: Callable[..., None]) -> tuple[str, ...]:
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        report(where, "expected a list of metric names", f"choose from: {', '.join(BUILTIN_METRICS)}")
        return ()
    for name in names:
        if name not in BUILTIN_METRICS:
            near = closest(name, list(BUILTIN_METRICS))
            hint = f"did you mean {near[0]}? " if near else ""
            report(where, f"unknown metric {name!r}", f"{hint}choose from: {', '.join(BUILTIN_METRICS)}")
    return tuple(dict.fromkeys(names))


def _items(value: object, where: str, report: Callable[..., None], build: Callable[..., Any]) -> tuple[Any, ...]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        report(where, f"expected a list of mappings, got {type(value).__name__}")
        return ()
    built = [build(item, f"{where}[{i}]", report) for i, item in enumerate(value)]
    return tuple(b for b in built if b is not None)


def _typed(cls: type, value: object, where: str, report: Callable[..., None]) -> dict[str, Any] | None:
    """Convert a mapping's values to ``cls``'s field types; ``None`` after reporting problems."""
    if not isinstance(value, dict):
        report(where, f"expected a mapping, got {type(value).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    out: dict[str, Any] = {}
    ok = True
    for key, item in value.items():
        if key not in fields:
            near = closest(str(key), list(fields))
            report(
                f"{where}.{key}", "unknown key", f"did you mean {near[0]}?" if near else f"valid: {', '.join(fields)}"
            )
            ok = False
            continue
        converted, reason = convert_value(item, hints[key], fields[key].metadata)
        if converted is BAD or reason is not None:
            report(f"{where}.{key}", reason or "bad value")
            ok = False
        else:
            out[key] = converted
    for name, field in fields.items():
        if field.default is attrs.NOTHING and name not in value:
            report(f"{where}.{name}", "is required")
            ok = False
    return out if ok else None


def _check(value: object, where: str, report: Callable[..., None]) -> Check | None:
    kwargs = _typed(Check, value, where, report)
    if kwargs is None:
        return None
    check = Check(**kwargs)
    if not _NAME.fullmatch(check.name):
        report(f"{where}.name", f"{check.name!r} is not a check name", "use letters, digits, '_', '.' or '-'")
        return None
    if check.kind == "regex":
        if check.pattern is None:
            report(f"{where}.pattern", "is required for a regex check")
            return None
        try:
            re.compile(check.pattern)
        except re.error as exc:
            report(f"{where}.pattern", f"{check.pattern!r} does not compile: {exc}")
            return None
    if check.kind == "starts_with" and not check.value:
        report(f"{where}.value", "is required for a starts_with check")
        return None
    return check


def _requirement(value: object, where: str, report: Callable[..., None]) -> Requirement | None:
    kwargs = _typed(Requirement, value, where, report)
    return Requirement(**kwargs) if kwargs is not None else None


def _judge(value: object, where: str, report: Callable[..., None]) -> JudgeSettings | None:
    kwargs = _typed(JudgeSettings, value, where, report)
    if kwargs is None:
        return None
    judge = JudgeSettings(**kwargs)
    if not judge.url.startswith(("http://", "https://")):
        report(f"{where}.url", f"{judge.url!r} is not an http(s) URL")
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", judge.api_key_env):
        report(f"{where}.api_key_env", f"{judge.api_key_env!r} is not an environment variable name")
        return None
    return judge


def _cross_checks(
    section: EvaluateSection,
    prefix: str,
    report: Callable[..., None],
    declared: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    names = (*section.metric_names(), *(f"check:{d}" for d in declared))
    names = tuple(dict.fromkeys(names))
    seen: set[str] = set()
    for i, check in enumerate(section.checks):
        if check.name in seen:
            report(f"{prefix}.checks[{i}].name", f"{check.name!r} is declared twice")
        seen.add(check.name)
    for i, req in enumerate(section.require):
        if req.metric not in names:
            near = closest(req.metric, list(names))
            hint = f"did you mean {near[0]}? " if near else ""
            report(
                f"{prefix}.require[{i}].metric",
                f"{req.metric!r} is not measured",
                f"{hint}measured: {', '.join(names)}",
            )
    if not names:
        report(f"{prefix}.metrics", "nothing to measure", "name a metric, a check or a judge")
    if not section.deploys_base:
        endpoint, deployment = section.base_target()
        for part, what in ((endpoint, "endpoint"), (deployment, "deployment")):
            if part is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,31}", part):
                report(
                    f"{prefix}.base", f"{part!r} is not an {what} name", "use deploy, ENDPOINT or ENDPOINT/DEPLOYMENT"
                )
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,31}", section.base_deployment):
        report(f"{prefix}.base_deployment", f"{section.base_deployment!r} is not a deployment name")


def requirement_lines(requirements: Sequence[Requirement]) -> list[str]:
    """The gates as one line each, for plans and reports."""
    return [
        f"{r.metric}: improvement {'lower bound' if r.use == 'lower_bound' else 'estimate'} >= {r.min_delta:g}"
        for r in requirements
    ]
