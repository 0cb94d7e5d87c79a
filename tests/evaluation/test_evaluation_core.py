"""The evaluate: section, the paired bootstrap, checks, gates, the report, and the judge over real HTTP.

No torch: these run in the core (mindeps) environment too, where the metric libraries may be missing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ftkit.evaluation import Check, EvaluateSection, JudgeSettings, Requirement, load_prompts
from ftkit.evaluation.result import EvaluationResult, ExampleResult
from ftkit.evaluation.scores import compare_means, compare_token_losses
from ftkit.exceptions import EvaluationGateError, JobFileError, ValidationError
from ftkit.jobfile import JobFile

BASE = "name: j\nbackend: local\nmodel: {name: m, path: ./m}\n"


def _load(evaluate: str) -> JobFile:
    return JobFile.from_yaml(BASE + evaluate, source="job.yaml")


class TestSection:
    def test_absent_means_no_evaluation_and_empty_means_defaults(self) -> None:
        assert _load("").evaluate is None
        job = _load("evaluate:\n")
        assert job.evaluate == EvaluateSection()
        assert job.evaluate.metric_names() == ("loss", "perplexity", "rouge_l", "chrf")
        assert _load("evaluate: {enabled: false}\n").evaluate is None

    def test_lists_load_typed_and_round_trip(self) -> None:
        job = _load(
            "evaluate:\n  prompts: 12\n  metrics: [rouge_l]\n  checks:\n"
            "    - {name: pirate, kind: starts_with, value: Ahoy, ignore_case: 'true'}\n"
            "    - {name: js, kind: json_valid}\n"
            "  require:\n    - {metric: 'check:pirate', min_delta: 0.2}\n"
            "  judge: {url: 'http://127.0.0.1:1/v1', api_key_env: JUDGE_KEY}\n"
        )
        ev = job.evaluate
        assert ev is not None
        assert ev.checks[0] == Check(name="pirate", kind="starts_with", value="Ahoy", ignore_case=True)
        assert ev.require == (Requirement(metric="check:pirate", min_delta=0.2),)
        assert ev.judge is not None
        assert ev.judge.chat_url == "http://127.0.0.1:1/v1/chat/completions"
        assert ev.metric_names() == ("rouge_l", "check:pirate", "check:js", "judge")
        assert JobFile.from_mapping(job.to_mapping()).evaluate == ev

    def test_every_problem_at_once_with_lines(self) -> None:
        with pytest.raises(JobFileError) as info:
            _load(
                "evaluate:\n"
                "  prompts: 1\n"
                "  metrics: [rougel]\n"
                "  checks:\n"
                "    - {name: p, kind: regex, pattern: 'a(b'}\n"
                "    - {name: q, kind: starts}\n"
                "  require:\n"
                "    - {metric: 'check:pp'}\n"
                "  judge: {url: 'ftp://x', api_key_env: K}\n"
            )
        text = info.value.render()
        assert "6 problem(s) in job.yaml" in text
        assert "job.yaml:5: evaluate.prompts: 1 is below the minimum 2" in text
        assert "job.yaml:6: evaluate.metrics: unknown metric 'rougel'; did you mean rouge_l?" in text
        assert "job.yaml:8: evaluate.checks[0].pattern: 'a(b' does not compile" in text
        assert "job.yaml:9: evaluate.checks[1].kind: 'starts' is not allowed" in text
        assert "evaluate.require[0].metric: 'check:pp' is not measured; did you mean check:p?" in text
        assert "evaluate.judge.url: 'ftp://x' is not an http(s) URL" in text

    def test_a_judge_without_its_key_is_reported_by_validate(self, tmp_path: Path) -> None:
        from ftkit.job_checks import job_file_problems

        job = _load("evaluate: {judge: {url: 'http://127.0.0.1:1/v1', api_key_env: FTKIT_TEST_NO_SUCH_KEY}}\n")
        problems = [str(p) for p in job_file_problems(job)]
        assert any("$FTKIT_TEST_NO_SUCH_KEY is not set: the judge endpoint needs a key" in p for p in problems)


class TestPrompts:
    def test_more_prompts_than_the_split_holds_is_an_error_naming_both(self, tmp_path: Path) -> None:
        path = tmp_path / "test.jsonl"
        rows = [
            {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(3)
        ] + [{"messages": [{"role": "user", "content": "no answer"}]}]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        assert sorted(p.reference for p in load_prompts(path, 3)) == ["a0", "a1", "a2"]
        with pytest.raises(ValidationError) as info:
            load_prompts(path, 5)
        assert "5 prompts requested but" in str(info.value)
        assert "holds 3 usable conversation(s) (1 row(s) do not end with an assistant answer" in str(info.value)
        assert "set evaluate.prompts to at most 3" in str(info.value)

    def test_the_choice_is_seeded(self, tmp_path: Path) -> None:
        path = tmp_path / "t.jsonl"
        path.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
                + "\n"
                for i in range(20)
            ),
            encoding="utf-8",
        )
        assert [p.line for p in load_prompts(path, 5, seed=1)] == [p.line for p in load_prompts(path, 5, seed=1)]
        assert [p.line for p in load_prompts(path, 5, seed=1)] != [p.line for p in load_prompts(path, 5, seed=2)]


class TestScores:
    def test_a_clear_gain_excludes_zero_and_noise_does_not(self) -> None:
        gain = compare_means("x", [0.0] * 20, [1.0] * 18 + [0.0] * 2)
        assert gain.improvement == pytest.approx(0.9)
        assert gain.low is not None
        assert gain.low > 0
        assert gain.verdict == "better"
        noise = compare_means("x", [1, 0] * 10, [0, 1] * 10)
        assert noise.low is not None
        assert noise.high is not None
        assert noise.low < 0 < noise.high
        assert noise.verdict == "no clear difference"
        worse = compare_means("x", [1.0] * 20, [0.0] * 20)
        assert worse.verdict == "worse"

    def test_lower_is_better_metrics_are_signed_so_positive_is_better(self) -> None:
        loss = compare_means("loss", [2.0] * 10, [1.0] * 10, higher_is_better=False)
        assert loss.improvement == pytest.approx(1.0)
        tok_loss, ppl = compare_token_losses([(20.0, 10)] * 8, [(10.0, 10)] * 8)
        assert tok_loss.base == pytest.approx(2.0)
        assert tok_loss.tuned == pytest.approx(1.0)
        assert ppl.improvement == pytest.approx(7.389056 - 2.718282, rel=1e-5)
        assert tok_loss.verdict == "better"

    @pytest.mark.parametrize(
        ("check", "answer", "reference", "passes"),
        [
            (Check(name="a", kind="starts_with", value="Ahoy", ignore_case=True), "ahoy there", "", True),
            (Check(name="a", kind="starts_with", value="Ahoy"), "Well, ahoy", "", False),
            (Check(name="a", kind="exact_match"), " Paris ", "Paris", True),
            (Check(name="a", kind="contains"), "It is Paris.", "Paris", True),
            (Check(name="a", kind="contains"), "It is Rome.", "Paris", False),
            (Check(name="a", kind="regex", pattern=r"\d+"), "there are 4", "", True),
            (Check(name="a", kind="json_valid"), '{"a": 1}', "", True),
            (Check(name="a", kind="json_valid"), "{a: 1}", "", False),
        ],
    )
    def test_checks(self, check: Check, answer: str, reference: str, passes: bool) -> None:
        assert check.passes(answer, reference) is passes

    def test_reference_metrics(self) -> None:
        pytest.importorskip("rouge_score")
        pytest.importorskip("sacrebleu")
        from ftkit.evaluation.scores import reference_scorer

        rouge, chrf = reference_scorer("rouge_l"), reference_scorer("chrf")
        assert rouge("the cat sat", "the cat sat") == pytest.approx(1.0)
        assert rouge("a dog ran", "the cat sat") == 0.0
        assert chrf("the cat sat", "the cat sat") == pytest.approx(100.0)
        assert 0 < chrf("the cat sits", "the cat sat") < 100


def _result(settings: EvaluateSection, base: list[float], tuned: list[float]) -> EvaluationResult:
    examples = tuple(
        ExampleResult(
            index=i,
            line=i + 1,
            messages=({"role": "user", "content": f"question {i}"},),
            reference=f"ref {i}",
            base=f"base {i}",
            tuned=f"tuned {i} | with a pipe",
            scores={"check:pirate": {"base": b, "tuned": t}},
        )
        for i, (b, t) in enumerate(zip(base, tuned, strict=True))
    )
    metric = compare_means("check:pirate", base, tuned, description="pirate")
    return EvaluationResult(
        settings=settings,
        tuned={"endpoint": "ep", "deployment": "demo", "model": {"name": "ft", "version": "1", "id": "x"}},
        base={"endpoint": "ep", "deployment": "base", "model": None},
        examples=examples,
        metrics=(metric,),
    )


class TestResult:
    SETTINGS = EvaluateSection(
        checks=(Check(name="pirate", kind="starts_with", value="Ahoy"),),
        require=(Requirement(metric="check:pirate", min_delta=0.3),),
        examples=2,
    )

    def test_report_files_and_gate_pass(self, tmp_path: Path) -> None:
        result = _result(self.SETTINGS, [0.0] * 10, [1.0] * 10)
        paths = result.write(tmp_path)
        record = json.loads(paths["json"].read_text())
        assert record["passed"] is True
        assert record["metrics"][0]["verdict"] == "better"
        assert len(record["examples"]) == 10
        assert record["examples"][0]["tuned"] == "tuned 0 | with a pipe"
        markdown = paths["markdown"].read_text()
        assert "| check:pirate | 0 | 1 | +1 | [1, 1] | better | 10 |" in markdown
        assert "✅ pass: check:pirate: improvement lower bound +1 >= 0.3" in markdown
        assert "## Largest wins (check:pirate)" in markdown
        assert "tuned 0 \\| with a pipe" in markdown
        assert "<table>" in result._repr_html_()
        assert "better" in result._repr_html_()
        assert result.mlflow_metrics()["evaluation/check.pirate/improvement"] == 1.0
        result.gate()

    def test_gate_fails_on_the_lower_bound_not_the_lucky_estimate(self) -> None:
        result = _result(self.SETTINGS, [0, 1] * 5, [1, 0, 1, 1, 0, 1, 1, 0, 1, 0])
        assert result.metric("check:pirate").improvement == pytest.approx(0.1)
        assert not result.passed
        with pytest.raises(EvaluationGateError, match="check:pirate: improvement lower bound -"):
            result.gate()
        lines = result.summary_lines()
        assert lines[0].split() == ["metric", "base", "tuned", "improvement", "95%", "interval", "verdict", "n"]
        assert any(line.startswith("FAIL check:pirate") for line in lines)


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge: rate-limits the first request, then prefers whichever answer says 'Ahoy'."""

    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"auth": self.headers.get("Authorization"), "body": body})
        if len(type(self).calls) == 1:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        text = body["messages"][1]["content"]
        first = text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]
        verdict = "A" if first.startswith("Ahoy") else "B"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"{verdict}."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def judge_url() -> Iterator[str]:
    _Judge.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_judge_asks_both_orders_and_retries_a_rate_limit(judge_url: str) -> None:
    pytest.importorskip("httpx")
    from ftkit.evaluation import Judge

    judge = Judge(JudgeSettings(url=judge_url, api_key_env="K"), environ={"K": "secret"})
    conversation = [{"role": "user", "content": "Hello?"}]
    assert judge.score(conversation, "Hello.", "Ahoy, matey!") == 1.0  # tuned won in both orders
    assert judge.score(conversation, "Ahoy!", "Hello.") == 0.0
    assert len(_Judge.calls) == 5  # one 429, retried, then two orders each
    assert {c["auth"] for c in _Judge.calls} == {"Bearer secret"}
    judge.close()


def test_judge_without_its_key_is_a_clear_error() -> None:
    from ftkit.evaluation import Judge

    with pytest.raises(ValidationError, match=r"\$NOPE is not set: the judge endpoint needs a key"):
        Judge(JudgeSettings(url="http://127.0.0.1:1/v1", api_key_env="NOPE"), environ={})
