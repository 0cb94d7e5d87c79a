"""What an evaluation found: every prompt, both answers, every score, the comparisons and the gates.

:meth:`EvaluationResult.write` saves ``evaluation.json`` (everything) and ``evaluation.md`` (the table with
intervals and the largest wins and losses side by side); ``_repr_html_`` shows the same in a notebook.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..exceptions import EvaluationGateError
from .scores import MetricResult
from .spec import EvaluateSection, Requirement

__all__ = ["EvaluationResult", "ExampleResult", "GateResult"]


@attrs.frozen(kw_only=True)
class ExampleResult:
    """One held-out prompt and what each model made of it.

    Attributes:
        index: Its position in the evaluation.
        line: Its line in the held-out file.
        messages: What the models were asked.
        reference: The held-out answer.
        base: The base model's greedy answer (``None`` if it failed).
        tuned: The tuned model's greedy answer.
        scores: Metric name to ``{"base": x, "tuned": y}``.
        errors: What failed for this prompt (``base``, ``tuned`` or ``judge`` to the error).
    """

    index: int
    line: int
    messages: tuple[Mapping[str, Any], ...]
    reference: str
    base: str | None
    tuned: str | None
    scores: dict[str, dict[str, float]] = attrs.field(factory=dict)
    errors: Mapping[str, str] = attrs.field(factory=dict)

    def delta(self, metric: str, higher_is_better: bool = True) -> float | None:
        """Tuned minus base on ``metric`` (sign flipped where lower is better), ``None`` if not both."""
        pair = self.scores.get(metric, {})
        if "base" not in pair or "tuned" not in pair:
            return None
        d = pair["tuned"] - pair["base"]
        return d if higher_is_better else -d


@attrs.frozen(kw_only=True)
class GateResult:
    """One requirement and whether the evaluation met it.

    Attributes:
        requirement: The job file's requirement.
        value: The improvement it was judged on (lower bound or estimate; ``None`` if not measured).
        passed: Whether it was met.
    """

    requirement: Requirement
    value: float | None
    passed: bool

    def __str__(self) -> str:
        r = self.requirement
        which = "lower bound" if r.use == "lower_bound" else "estimate"
        shown = "not measured" if self.value is None else f"{self.value:+.4g}"
        return f"{r.metric}: improvement {which} {shown} {'>=' if self.passed else '<'} {r.min_delta:g}"


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


@attrs.frozen(kw_only=True)
class EvaluationResult:
    """The evaluation of a tuned model against its base.

    Attributes:
        settings: The ``evaluate`` section it ran with.
        tuned: The tuned candidate (endpoint, deployment, model).
        base: The base candidate.
        examples: Every prompt with both answers and their scores.
        metrics: One comparison per metric, in report order.
        notes: What the reader should know (failed prompts, judge problems).
        duration_s: How long it took.
        created: When it finished (UTC, ISO 8601).
    """

    settings: EvaluateSection
    tuned: Mapping[str, Any]
    base: Mapping[str, Any]
    examples: tuple[ExampleResult, ...]
    metrics: tuple[MetricResult, ...]
    notes: tuple[str, ...] = ()
    duration_s: float = 0.0
    created: str = attrs.field(factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def metric(self, name: str) -> MetricResult:
        """The comparison of one metric (``KeyError`` if it was not measured)."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    # ---------------------------------------------------------------- gate

    def gates(self) -> tuple[GateResult, ...]:
        """Each ``require`` entry, checked."""
        out = []
        for req in self.settings.require:
            try:
                m = self.metric(req.metric)
            except KeyError:
                out.append(GateResult(requirement=req, value=None, passed=False))
                continue
            value = m.low if req.use == "lower_bound" else m.improvement
            out.append(GateResult(requirement=req, value=value, passed=value is not None and value >= req.min_delta))
        return tuple(out)

    @property
    def passed(self) -> bool:
        """Whether every requirement was met (``True`` when there are none)."""
        return all(g.passed for g in self.gates())

    def gate(self) -> None:
        """Raise :class:`~ftkit.exceptions.EvaluationGateError` when a requirement is not met."""
        failed = [g for g in self.gates() if not g.passed]
        if failed:
            raise EvaluationGateError(
                "the tuned model did not meet evaluate.require: " + "; ".join(map(str, failed)), result=self
            )

    # ---------------------------------------------------------------- records

    def to_dict(self) -> dict[str, Any]:
        """Everything, as ``evaluation.json`` holds it."""
        return {
            "created": self.created,
            "duration_s": round(self.duration_s, 3),
            "tuned": dict(self.tuned),
            "base": dict(self.base),
            "prompts": len(self.examples),
            "confidence": self.settings.confidence,
            "bootstrap": self.settings.bootstrap,
            "metrics": [attrs.asdict(m) | {"verdict": m.verdict} for m in self.metrics],
            "gates": [{**attrs.asdict(g.requirement), "value": g.value, "passed": g.passed} for g in self.gates()],
            "passed": self.passed,
            "notes": list(self.notes),
            "examples": [
                {
                    "index": e.index,
                    "line": e.line,
                    "messages": [dict(m) for m in e.messages],
                    "reference": e.reference,
                    "base": e.base,
                    "tuned": e.tuned,
                    "scores": e.scores,
                    "errors": dict(e.errors),
                }
                for e in self.examples
            ],
        }

    def summary(self) -> dict[str, Any]:
        """The aggregate only (for ``run.json`` and MLflow)."""
        return {
            m.name: {"base": m.base, "tuned": m.tuned, "improvement": m.improvement, "low": m.low, "high": m.high}
            for m in self.metrics
        } | {"passed": self.passed}

    def mlflow_metrics(self) -> dict[str, float]:
        """The aggregate as MLflow metric names (``evaluation/rouge_l/tuned``, ``evaluation/check.x/low``...)."""
        out: dict[str, float] = {}
        for m in self.metrics:
            for field in ("base", "tuned", "improvement", "low", "high"):
                value = getattr(m, field)
                if value is not None and math.isfinite(value):
                    out[f"evaluation/{m.name.replace(':', '.')}/{field}"] = float(value)
        out["evaluation/passed"] = float(self.passed)
        return out

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write ``evaluation.json`` and ``evaluation.md`` into ``directory`` (each atomically).

        Returns:
            ``{"json": path, "markdown": path}``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for kind, name, text in (
            ("json", "evaluation.json", json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n"),
            ("markdown", "evaluation.md", self.markdown()),
        ):
            path = directory / name
            tmp = directory / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            out[kind] = path
        return out

    # ---------------------------------------------------------------- rendering

    def _ranking_metric(self) -> MetricResult | None:
        order = [m for m in self.metrics if m.name == "judge"]
        order += [m for m in self.metrics if m.name.startswith("check:")]
        order += [m for m in self.metrics if m.name in ("rouge_l", "chrf", "loss")]
        return next((m for m in order if m.low is not None), None)

    def wins_and_losses(self, count: int | None = None) -> tuple[list[ExampleResult], list[ExampleResult], str]:
        """The prompts where the tuned model gained and lost most, on the most telling metric measured."""
        n = self.settings.examples if count is None else count
        metric = self._ranking_metric()
        if metric is None or n == 0:
            return [], [], ""
        scored = [(d, e) for e in self.examples if (d := e.delta(metric.name, metric.higher_is_better)) is not None]
        wins = [e for d, e in sorted(scored, key=lambda p: (-p[0], p[1].index)) if d > 0][:n]
        losses = [e for d, e in sorted(scored, key=lambda p: (p[0], p[1].index)) if d < 0][:n]
        return wins, losses, metric.name

    def table_rows(self) -> list[list[str]]:
        """The aggregate table: metric, base, tuned, improvement, interval, verdict."""
        level = f"{self.settings.confidence:.0%}"
        rows = [["metric", "base", "tuned", "improvement", f"{level} interval", "verdict", "n"]]
        for m in self.metrics:
            interval = "–" if m.low is None else f"[{_fmt(m.low, 3)}, {_fmt(m.high, 3)}]"
            improvement = "–" if m.improvement is None else f"{m.improvement:+.4g}"
            rows.append([m.name, _fmt(m.base), _fmt(m.tuned), improvement, interval, m.verdict, str(m.n)])
        return rows

    def summary_lines(self) -> list[str]:
        """A one-screen summary for the command line."""
        rows = self.table_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        for m in self.metrics:
            if m.note and m.low is None:
                lines.append(f"{m.name}: {m.note}")
        lines += list(self.notes)
        for g in self.gates():
            lines.append(f"{'PASS' if g.passed else 'FAIL'} {g}")
        return lines

    def markdown(self) -> str:
        """The report as Markdown: what was compared, the table, the gates, the largest wins and losses."""
        s = self.settings
        out = [
            "# Evaluation: tuned vs base",
            "",
            f"- tuned: `{_target(self.tuned)}`{_model(self.tuned)}",
            f"- base: `{_target(self.base)}`{_model(self.base)}",
            f"- {len(self.examples)} held-out prompts, greedy answers of at most {s.max_new_tokens} tokens; "
            f"{s.confidence:.0%} paired bootstrap intervals ({s.bootstrap} resamples, seed {s.seed}); "
            f"improvement > 0 means the tuned model is better; {self.duration_s:.1f} s",
            "",
        ]
        rows = self.table_rows()
        out.append("| " + " | ".join(rows[0]) + " |")
        out.append("|" + "---|" * len(rows[0]))
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        out.append("")
        for m in self.metrics:
            out.append(f"- **{m.name}**: {m.description}" + (f" ({m.note})" if m.note else ""))
        if self.notes:
            out += ["", *[f"> {n}" for n in self.notes]]
        gates = self.gates()
        if gates:
            out += ["", "## Requirements", ""]
            out += [f"- {'✅ pass' if g.passed else '❌ FAIL'}: {g}" for g in gates]
        wins, losses, metric = self.wins_and_losses()
        for title, items in ((f"Largest wins ({metric})", wins), (f"Largest losses ({metric})", losses)):
            if not items:
                continue
            out += ["", f"## {title}", ""]
            for e in items:
                pair = e.scores.get(metric, {})
                out += [
                    f"### Prompt {e.index + 1} (line {e.line}): base {_fmt(pair.get('base'), 3)}, "
                    f"tuned {_fmt(pair.get('tuned'), 3)}",
                    "",
                    f"**User:** {_quote(e.messages[-1].get('content', '') if e.messages else '')}",
                    "",
                    "| base | tuned | reference |",
                    "|---|---|---|",
                    f"| {_cell(e.base)} | {_cell(e.tuned)} | {_cell(e.reference)} |",
                    "",
                ]
        return "\n".join(out).rstrip() + "\n"

    def _repr_html_(self) -> str:
        rows = self.table_rows()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        gates = "".join(f"<li>{'✅' if g.passed else '❌'} {html.escape(str(g))}</li>" for g in self.gates())
        wins, losses, metric = self.wins_and_losses()
        pairs = ""
        for title, items in (("wins", wins), ("losses", losses)):
            for e in items:
                pairs += (
                    f"<tr><td>{title}</td><td>{html.escape(e.messages[-1].get('content', '') if e.messages else '')}"
                    f"</td><td>{html.escape(e.base or '')}</td><td>{html.escape(e.tuned or '')}</td></tr>"
                )
        side = (
            f"<table><caption>largest wins and losses ({html.escape(metric)})</caption><tr><th></th><th>prompt</th>"
            f"<th>base</th><th>tuned</th></tr>{pairs}</table>"
            if pairs
            else ""
        )
        return (
            f"<div><table><caption>tuned {html.escape(_target(self.tuned))} vs base "
            f"{html.escape(_target(self.base))}, {len(self.examples)} prompts</caption>"
            f"<tr>{head}</tr>{body}</table>{f'<ul>{gates}</ul>' if gates else ''}{side}</div>"
        )


def _target(candidate: Mapping[str, Any]) -> str:
    deployment = candidate.get("deployment")
    return f"{candidate.get('endpoint')}/{deployment}" if deployment else str(candidate.get("endpoint"))


def _model(candidate: Mapping[str, Any]) -> str:
    model = candidate.get("model")
    return f" ({model['name']} {model['version']})" if isinstance(model, Mapping) else ""


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _cell(text: str | None) -> str:
    return "*(failed)*" if text is None else _quote(text).replace("|", "\\|")
