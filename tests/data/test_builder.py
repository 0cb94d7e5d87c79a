"""ChatDatasetBuilder: rejection reasons, reconciliation, sampling, atomic writes, the sources and the CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ftkit
from ftkit.cli.main import main
from ftkit.data import (
    ChatDatasetBuilder,
    DataSourceError,
    HubSource,
    Reason,
    RowRules,
    SplitSelection,
    SplitSpec,
    check_row,
    rows_for_percent,
)
from ftkit.data.validate import check_arrow, is_canonical
from ftkit.data.writer import encode_jsonl
from ftkit.exceptions import DatasetValidationError, ValidationError
from ftkit.jobfile import JobFile

PAIRS = 3


def good(i: int, pairs: int = PAIRS, system: bool = False) -> dict[str, Any]:
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for t in range(pairs):
        msgs.append({"role": "user", "content": f'Question {i}.{t} with "quotes", a\\slash\nand a newline é'})
        msgs.append({"role": "assistant", "content": f"Answer {i}.{t}\ttab \u2028 ok"})
    return {"prompt": msgs[-2]["content"], "prompt_id": f"id{i}", "messages": msgs}


def msgs_of(*roles: str) -> list[dict[str, Any]]:
    return [{"role": r, "content": f"text {k}"} for k, r in enumerate(roles)]


# Each bad kind: (row, expected reason). Rows that Arrow can hold with the canonical types are also checked
# through the vectorised path.
BAD: dict[str, tuple[Any, Reason]] = {
    "not_object": ([1, 2], Reason.ROW_NOT_OBJECT),
    "missing_messages": ({"prompt": "p"}, Reason.MESSAGES_MISSING),
    "null_messages": ({"messages": None}, Reason.MESSAGES_MISSING),
    "json_string": ({"messages": json.dumps(msgs_of("user", "assistant"))}, Reason.MESSAGES_JSON_STRING),
    "string": ({"messages": "hello"}, Reason.MESSAGES_NOT_LIST),
    "dict": ({"messages": {"role": "user"}}, Reason.MESSAGES_NOT_LIST),
    "empty": ({"messages": []}, Reason.MESSAGES_EMPTY),
    "message_not_object": ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, Reason.MESSAGE_NOT_OBJECT),
    "null_message": ({"messages": [None, {"role": "assistant", "content": "x"}]}, Reason.MESSAGE_NOT_OBJECT),
    "role_missing": ({"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}, Reason.ROLE_MISSING),
    "role_null": ({"messages": [{"role": None, "content": "x"}]}, Reason.ROLE_MISSING),
    "role_int": ({"messages": [{"role": 1, "content": "x"}]}, Reason.ROLE_NOT_STRING),
    "role_unknown": ({"messages": msgs_of("user", "bot")}, Reason.ROLE_UNKNOWN),
    "role_case": ({"messages": msgs_of("User", "assistant")}, Reason.ROLE_UNKNOWN),
    "content_missing": (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},
        Reason.CONTENT_MISSING,
    ),
    "content_parts": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "y"},
            ]
        },
        Reason.CONTENT_NOT_STRING,
    ),
    "content_nan": (
        {"messages": [{"role": "user", "content": math.nan}, {"role": "assistant", "content": "y"}]},
        Reason.CONTENT_NOT_STRING,
    ),
    "content_number": (
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]},
        Reason.CONTENT_NOT_STRING,
    ),
    "content_empty": (
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
        Reason.CONTENT_EMPTY,
    ),
    "content_spaces": (
        {"messages": [{"role": "user", "content": " \n\t\u3000"}, {"role": "assistant", "content": "y"}]},
        Reason.CONTENT_EMPTY,
    ),
    "system_midway": ({"messages": msgs_of("user", "system", "assistant")}, Reason.SYSTEM_NOT_FIRST),
    "system_last": ({"messages": msgs_of("user", "assistant", "system")}, Reason.SYSTEM_NOT_FIRST),
    "system_twice": ({"messages": msgs_of("system", "system", "user", "assistant")}, Reason.SYSTEM_DUPLICATE),
    "assistant_first": ({"messages": msgs_of("assistant", "user", "assistant")}, Reason.FIRST_TURN_NOT_USER),
    "system_then_assistant": ({"messages": msgs_of("system", "assistant")}, Reason.FIRST_TURN_NOT_USER),
    "two_users": ({"messages": msgs_of("user", "user", "assistant")}, Reason.TURNS_NOT_ALTERNATING),
    "two_assistants": ({"messages": msgs_of("user", "assistant", "assistant")}, Reason.TURNS_NOT_ALTERNATING),
    "system_only": ({"messages": msgs_of("system")}, Reason.NO_USER_TURN),
    "ends_with_user": ({"messages": msgs_of("user", "assistant", "user")}, Reason.LAST_TURN_NOT_ASSISTANT),
    "user_only": ({"messages": msgs_of("user")}, Reason.LAST_TURN_NOT_ASSISTANT),
    "huge": (
        {"messages": [{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "y" * 50}]},
        Reason.ROW_TOO_LARGE,
    ),
    "prompt_nan": ({"prompt": math.nan, "messages": msgs_of("user", "assistant")}, Reason.PROMPT_NOT_STRING),
    "prompt_list": ({"prompt": ["a"], "messages": msgs_of("user", "assistant")}, Reason.PROMPT_NOT_STRING),
    "prompt_id_int": ({"prompt_id": 7, "messages": msgs_of("user", "assistant")}, Reason.PROMPT_ID_NOT_STRING),
}
RULES = RowRules(require_last_assistant=True, max_row_chars=100)


def canonical_table(rows: list[Any]) -> pa.Table | None:
    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("prompt_id", pa.string()),
            ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string()), ("name", pa.string())]))),
        ]
    )
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, TypeError, AttributeError):
        return None


class TestRejectionReasons:
    @pytest.mark.parametrize("kind", sorted(BAD))
    def test_python_path(self, kind: str) -> None:
        """Every bad kind is rejected under its named reason by the row checker."""
        row, reason = BAD[kind]
        found = check_row(row, RULES)
        assert isinstance(found, tuple)
        assert reason == found[0]

    @pytest.mark.parametrize("kind", sorted(BAD))
    def test_arrow_path_agrees(self, kind: str) -> None:
        """Where Arrow can hold the row with canonical types, the vectorised check gives the same reason."""
        row, reason = BAD[kind]
        table = canonical_table([row, good(1, pairs=1)])
        if table is None or not isinstance(row, dict) or not all(k in ("prompt", "prompt_id", "messages") for k in row):
            pytest.skip("not representable with the canonical Arrow types")
        batch = table.to_batches()[0]
        assert is_canonical(batch.schema)
        check = check_arrow(batch, RULES)
        from ftkit.data.reasons import REASON_ORDER

        ranks = [REASON_ORDER[r] if r < len(REASON_ORDER) else None for r in check.rank]
        assert [reason, None] == ranks

    def test_score_split_may_end_with_user(self) -> None:
        """The scoring split does not need a final assistant turn."""
        row = {"messages": msgs_of("user")}
        assert isinstance(check_row(row, RowRules(require_last_assistant=False)), dict)

    def test_system_first_accepted_and_extra_keys_dropped(self) -> None:
        """A leading system message is fine; extra per-message keys and extra columns are dropped."""
        row = good(0, system=True)
        row["extra"] = 1
        row["messages"][1]["name"] = "alice"
        out = check_row(row, RowRules())
        assert isinstance(out, dict)
        assert {"prompt", "prompt_id", "messages"} == set(out)
        assert {"role", "content"} == set(out["messages"][1])


def write_jsonl(path: Path, rows: list[Any], extra_lines: dict[int, bytes] | None = None) -> Path:
    lines = [json.dumps(r).encode() for r in rows]
    for at, raw in sorted((extra_lines or {}).items()):
        lines.insert(at, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def mixed_rows(n: int = 60) -> list[Any]:
    rows: list[Any] = [good(i, pairs=1 + i % 3) for i in range(n)]
    for k, name in enumerate(["assistant_first", "two_users", "content_spaces", "role_unknown", "system_twice"]):
        rows[5 + 7 * k] = BAD[name][0]
    return rows


class TestBuild:
    def test_reconcile_and_outputs(self, tmp_path: Path) -> None:
        """rows in = written + rejected, per split and per reason; files load with datasets; report.json matches."""
        rows = mixed_rows()
        build = ChatDatasetBuilder(
            {"train_sft": rows, "test_gen": rows[:20]}, splits=["train_sft", "test_gen"], out_dir=tmp_path / "o"
        ).build()
        r = build.report.split("train_sft")
        assert (r.rows_in, r.rows_written, r.rows_rejected) == (60, 55, 5)
        assert sum(r.reasons.values()) == r.rows_rejected
        assert {s.reason.value for s in r.samples} == set(r.reasons)
        assert build.train_file == build.files["train_sft"]
        assert build.score_file == build.files["test_gen"]
        data = build.files["train_sft"].read_bytes()
        assert hashlib.sha256(data).hexdigest() == r.sha256
        lines = data.decode("utf-8").split("\n")[:-1]
        assert len(lines) == 55
        for line in lines:
            assert line == json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":"))
        report = json.loads(build.report_path.read_text())
        assert report["totals"]["rows_rejected"] == 8  # 5 + 3 in test_gen
        assert report["splits"][0]["turns"]["max"] == 6
        import datasets

        ds = datasets.load_dataset("json", data_files=str(build.files["train_sft"]), split="train")
        assert len(ds) == 55
        assert "train_sft" in build.report.summary()

    def test_three_sources_same_result(self, tmp_path: Path) -> None:
        """Parquet, JSONL, in-memory rows and the datasets path write byte-identical files and reports."""
        rows = [good(i, pairs=1 + i % 4) for i in range(40)]
        rows[3]["messages"][1]["role"] = "bot"
        rows[9]["messages"][0]["content"] = "  "
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train_sft.parquet")
        write_jsonl(tmp_path / "train_sft.jsonl", rows)
        hub_dir = tmp_path / "hub" / "data"
        hub_dir.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), hub_dir / "train_sft-00000-of-00001.parquet")
        sources: dict[str, Any] = {
            "parquet": tmp_path / "train_sft.parquet",
            "jsonl": tmp_path / "train_sft.jsonl",
            "rows": {"train_sft": rows},
            "table": {"train_sft": pa.Table.from_pylist(rows)},
            "hub": HubSource(str(tmp_path / "hub"), cache_dir=str(tmp_path / "hf-cache")),
        }
        outs = {}
        for name, src in sources.items():
            build = ChatDatasetBuilder(
                src, splits=["train_sft"], out_dir=tmp_path / name, selection=SplitSelection(rows=30, sample="random")
            ).build()
            outs[name] = (build.files["train_sft"].read_bytes(), build.report.reasons)
        assert len({v[0] for v in outs.values()}) == 1, {k: len(v[0]) for k, v in outs.items()}
        assert all(v[1] == outs["parquet"][1] for v in outs.values())

    def test_jsonl_bad_lines(self, tmp_path: Path) -> None:
        """Invalid UTF-8 and invalid JSON lines are rejected rows with their line numbers; blank lines skipped."""
        rows = [good(i) for i in range(20)]
        path = write_jsonl(tmp_path / "t.jsonl", rows, {2: b'{"messages": [', 5: b"\xff\xfe bad", 8: b"   "})
        build = ChatDatasetBuilder(path, splits=["t"], out_dir=tmp_path / "o").build()
        r = build.report.split("t")
        assert dict(r.reasons) == {"invalid_json": 1, "invalid_utf8": 1}
        assert (r.rows_in, r.rows_written) == (22, 20)
        by_reason = {s.reason: s for s in r.samples}
        assert by_reason[Reason.INVALID_JSON].line == 3
        assert by_reason[Reason.INVALID_UTF8].line == 6

    def test_lone_surrogate_is_invalid_utf8(self, tmp_path: Path) -> None:
        """A cut emoji ("\\ud83d" alone: valid JSON, not encodable as UTF-8) is one rejected row, not a crash."""
        rows: list[Any] = [good(i) for i in range(12)]
        rows[3]["messages"][1]["content"] = "cut off \ud83d"
        path = write_jsonl(tmp_path / "t.jsonl", rows)  # json.dumps escapes it as \ud83d
        build = ChatDatasetBuilder(path, splits=["train_sft"], out_dir=tmp_path / "o").build()
        r = build.report.split("train_sft")
        assert dict(r.reasons) == {"invalid_utf8": 1}
        assert (r.rows_in, r.rows_written, r.rows_rejected) == (12, 11, 1)
        assert [s.row for s in r.samples] == [3]
        lines = build.files["train_sft"].read_bytes().split(b"\n")  # not splitlines: the rows hold U+2028
        assert len(lines) == 12
        assert lines[-1] == b""

    def test_mixed_types_jsonl_gives_uniform_file(self, tmp_path: Path) -> None:
        """A file whose rows disagree on types (pyarrow can't load it) is written with one schema."""
        rows: list[Any] = [good(i) for i in range(15)]
        rows[1] = BAD["content_parts"][0]
        rows[2] = BAD["json_string"][0]
        rows[4] = {"messages": msgs_of("user", "assistant")}  # no prompt: written with prompt null
        path = write_jsonl(tmp_path / "t.jsonl", rows)
        build = ChatDatasetBuilder(path, splits=["train_sft"], out_dir=tmp_path / "o").build()
        table = pa.Table.from_pylist(
            [json.loads(x) for x in build.files["train_sft"].read_text(encoding="utf-8").split("\n")[:-1]]
        )
        assert table.num_rows == 13
        import pyarrow.json as pj

        assert pj.read_json(build.files["train_sft"]).num_rows == 13

    def test_strict_fails_listing_every_reason_and_writes_nothing(self, tmp_path: Path) -> None:
        """Strict mode raises with all reasons, and leaves no file behind."""
        out = tmp_path / "o"
        with pytest.raises(DatasetValidationError) as info:
            ChatDatasetBuilder({"train_sft": mixed_rows()}, splits=["train_sft"], out_dir=out, strict=True).build()
        text = str(info.value)
        for reason in (
            "first_turn_not_user",
            "turns_not_alternating",
            "content_empty",
            "role_unknown",
            "system_duplicate",
        ):
            assert reason in text
        assert list(out.glob("*")) == [] if out.exists() else True

    def test_too_few_train_rows_warns(self, tmp_path: Path) -> None:
        """Fewer than 10 training rows after Azure's 80% split is reported (an error in strict mode)."""
        build = ChatDatasetBuilder(
            {"train_sft": [good(i) for i in range(11)]}, splits=["train_sft"], out_dir=tmp_path
        ).build()
        assert build.report.warnings
        assert "fewer than 10" in str(build.report.warnings[0])
        with pytest.raises(DatasetValidationError):
            ChatDatasetBuilder(
                {"train_sft": [good(i) for i in range(11)]}, splits=["train_sft"], out_dir=tmp_path / "s", strict=True
            ).build()

    def test_atomic_write_on_interrupt(self, tmp_path: Path) -> None:
        """An exception mid-build leaves neither the final file nor a temporary one; an old file is kept."""
        out = tmp_path / "o"
        out.mkdir()
        (out / "train_sft.jsonl").write_text("old\n")

        class Boom(list):  # type: ignore[type-arg]
            def __getitem__(self, item: Any) -> Any:
                if isinstance(item, slice) and item.start and item.start >= 40:
                    raise KeyboardInterrupt
                return super().__getitem__(item)

        with pytest.raises(KeyboardInterrupt):
            ChatDatasetBuilder(
                {"train_sft": Boom(good(i) for i in range(100))}, splits=["train_sft"], out_dir=out, batch_size=20
            ).build()
        assert sorted(p.name for p in out.iterdir()) == ["train_sft.jsonl"]
        assert (out / "train_sft.jsonl").read_text() == "old\n"

    def test_parquet_output_and_tokens(self, tmp_path: Path) -> None:
        """Parquet output matches the JSONL; a token counter adds statistics and the over-length count."""
        rows = [good(i) for i in range(20)]
        build = ChatDatasetBuilder(
            {"train_sft": rows},
            splits=["train_sft"],
            out_dir=tmp_path,
            parquet=True,
            tokenizer=lambda msgs: sum(len(m["content"].split()) for m in msgs),
            max_seq_length=10,
        ).build()
        table = pq.read_table(build.parquet_files["train_sft"])
        assert table.to_pylist() == [
            json.loads(x) for x in build.files["train_sft"].read_text(encoding="utf-8").split("\n")[:-1]
        ]
        r = build.report.split("train_sft")
        assert r.tokens is not None
        assert r.tokens.count == 20
        assert r.rows_over_max_seq_length == 20


class TestSelection:
    def test_percent_matches_hf_rule(self) -> None:
        """Percent -> rows uses int(round(pc * n / 100)), banker's rounding included."""
        assert rows_for_percent(5, 207865) == 10393
        assert rows_for_percent(5, 23110) == 1156
        assert rows_for_percent(50, 5) == 2  # 2.5 rounds to even

    def test_first_matches_datasets_slice(self, tmp_path: Path) -> None:
        """`first` with a percent keeps exactly the rows of datasets' split[0%:pc%]."""
        import datasets

        rows = [good(i, pairs=1) for i in range(47)]
        path = tmp_path / "train_sft.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        ds = datasets.load_dataset(
            "parquet", data_files={"train_sft": str(path)}, split="train_sft[0%:15%]", cache_dir=str(tmp_path / "c")
        )
        build = ChatDatasetBuilder(
            path, splits=["train_sft"], out_dir=tmp_path / "o", selection=SplitSelection(percent=15)
        ).build()
        ids = [
            json.loads(x)["prompt_id"] for x in build.files["train_sft"].read_text(encoding="utf-8").split("\n")[:-1]
        ]
        assert ds["prompt_id"] == ids

    def test_random_sample_is_deterministic(self, tmp_path: Path) -> None:
        """The same seed gives the same rows (in stored order) across runs and batch sizes; another seed differs."""
        rows = [good(i, pairs=1) for i in range(500)]

        def ids(seed: int, batch: int) -> list[str]:
            b = ChatDatasetBuilder(
                {"train_sft": rows},
                splits=["train_sft"],
                out_dir=tmp_path / f"{seed}-{batch}",
                selection=SplitSelection(percent=10, sample="random", seed=seed),
                batch_size=batch,
            ).build()
            return [
                json.loads(x)["prompt_id"] for x in b.files["train_sft"].read_text(encoding="utf-8").split("\n")[:-1]
            ]

        a = ids(1, 64)
        assert len(a) == 50
        assert a == ids(1, 7)
        assert a != ids(2, 64)
        assert a == sorted(a, key=lambda s: int(s[2:]))
        # Pinned: the sample must not change between machines or versions.
        assert a[:3] == ["id3", "id20", "id30"] or pytest.fail(f"sample changed: {a[:3]}")

    def test_selection_validation(self) -> None:
        """Bad selections raise ftkit's ValidationError naming the job file's key, never a bare ValueError."""
        with pytest.raises(ValidationError, match="percent or rows") as both:
            SplitSelection(percent=5, rows=10)
        assert both.value.problems[0].where == "data.rows"
        for bad in (0, -5, 150):
            with pytest.raises(ValidationError, match=r"data\.percent"):
                SplitSelection(percent=bad)
        with pytest.raises(ValidationError, match=r"data\.rows"):
            SplitSelection(rows=-1)

    def test_split_purpose(self) -> None:
        assert SplitSpec.infer("test_gen").purpose == "score"
        assert SplitSpec.infer("train_sft").purpose == "train"
        assert SplitSpec.infer("test_sft").purpose == "test"


class TestEncoder:
    def test_matches_json_dumps(self) -> None:
        """Every control character, quote and backslash is escaped exactly as json.dumps does."""
        text = "".join(chr(c) for c in range(0x30)) + '\\"é\u2028\U0001f600'
        rows = [{"prompt": None, "prompt_id": "x", "messages": [{"role": "user", "content": text}]}]
        batch = pa.RecordBatch.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("prompt", pa.string()),
                    ("prompt_id", pa.string()),
                    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                ]
            ),
        )
        got = bytes(encode_jsonl(batch))
        assert json.dumps(rows[0], ensure_ascii=False, separators=(",", ":")).encode() + b"\n" == got


class TestSourcesAndJob:
    def test_missing_split_and_file(self, tmp_path: Path) -> None:
        pq.write_table(pa.Table.from_pylist([good(0)]), tmp_path / "train_sft.parquet")
        with pytest.raises(DataSourceError, match="test_sft"):
            ChatDatasetBuilder(tmp_path, splits=["train_sft", "test_sft"], out_dir=tmp_path / "o").build()
        with pytest.raises(DataSourceError, match="no such file"):
            ChatDatasetBuilder(tmp_path / "nope.jsonl", out_dir=tmp_path / "o").build()
        (tmp_path / "broken.parquet").write_bytes(b"not parquet")
        with pytest.raises(DataSourceError, match="parquet"):
            ChatDatasetBuilder(tmp_path / "broken.parquet", splits=["broken"], out_dir=tmp_path / "o").build()

    def test_hub_offline_is_a_clear_error(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A dataset id that is not in the cache, offline, is an ftkit error that says what to do."""
        import datasets.config
        import huggingface_hub.constants

        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        # Both libraries read the variables once, at import (datasets before 2.20 names it HF_DATASETS_OFFLINE).
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(DataSourceError, match="local Hugging Face cache"):
            ChatDatasetBuilder(
                HubSource("nobody/no-such-dataset", cache_dir=str(tmp_path)), splits=["train_sft"], out_dir=tmp_path
            ).build()

    def test_from_job(self, tmp_path: Path) -> None:
        """from_job uses the data section: splits with purposes, percent, out_dir resolved against the job file."""
        src = tmp_path / "src"
        src.mkdir()
        for split in ("train_sft", "test_sft", "test_gen"):
            write_jsonl(src / f"{split}.jsonl", [good(i) for i in range(40)])
        job_path = tmp_path / "job.yaml"
        job_path.write_text(
            "name: t\nmodel: {name: m}\ndata: {source: src, percent: 50, sample: random, seed: 3, out_dir: built}\n"
        )
        build = ChatDatasetBuilder.from_job(JobFile.load(job_path)).build()
        assert tmp_path / "built" / "train_sft.jsonl" == build.files["train_sft"]
        assert build.test_file == build.files["test_sft"]
        assert build.report.split("test_gen").rows_written == 20


class TestCli:
    def test_build_flags(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write_jsonl(tmp_path / "train_sft.jsonl", mixed_rows())
        rc = main(
            [
                "data",
                "build",
                "--source",
                str(path),
                "--out",
                str(tmp_path / "o"),
                "--splits",
                "train_sft",
                "--rows",
                "30",
            ]
        )
        assert rc == 0
        out = capsys.readouterr().out
        assert "30 in" in out
        assert (tmp_path / "o" / "report.json").is_file()

    def test_strict_exit_1(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write_jsonl(tmp_path / "train_sft.jsonl", mixed_rows())
        rc = main(
            ["data", "build", "--source", str(path), "--out", str(tmp_path / "o"), "--splits", "train_sft", "--strict"]
        )
        assert rc == 1
        err = capsys.readouterr().err
        assert "turns_not_alternating" in err
        assert "Traceback" not in err

    def test_unreadable_source_exit_1(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        rc = main(["data", "build", "--source", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "o")])
        assert rc == 1
        assert "no such file" in capsys.readouterr().err

    def test_the_console_names_the_files_own_lines(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad JSONL line is named by its 1-based line number in the file, as report.json names it, on the
        console and in strict mode's error."""
        path = write_jsonl(tmp_path / "train.jsonl", [good(i) for i in range(12)], {7: b"{not json"})
        assert main(["data", "build", "--source", str(path), "--out", str(tmp_path / "o")]) == 0
        out = capsys.readouterr().out
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        assert report["splits"][0]["samples"][0]["line"] == 8
        assert "e.g. line 8: " in out
        assert main(["data", "build", "--source", str(path), "--out", str(tmp_path / "s"), "--strict"]) == 1
        assert "e.g. line 8: " in capsys.readouterr().err

    def test_duplicates_are_counted_with_a_reason(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Rows identical to an earlier one, and test rows that are also train rows, are kept and counted in a
        warning each (strict mode fails on them, as on any warning)."""
        src = tmp_path / "src"
        src.mkdir()
        rows = [good(i) for i in range(12)]
        write_jsonl(src / "train.jsonl", [*rows, rows[3], rows[3]])
        write_jsonl(src / "test.jsonl", [rows[0], good(100)])
        argv = ["data", "build", "--source", str(src), "--splits", "train,test", "--out", str(tmp_path / "o")]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "train: 2 row(s) identical to an earlier row of the split" in out
        assert "test: 1 row(s) identical to rows of train" in out
        assert (tmp_path / "o" / "train.jsonl").read_bytes().count(b"\n") == 14  # kept, not dropped
        assert main([*argv[:-1], str(tmp_path / "s"), "--strict"]) == 1
        assert "identical to an earlier row" in capsys.readouterr().err

    def test_a_missing_folder_is_an_immediate_error_not_a_hub_lookup(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A word that is neither a file nor a folder here is looked up in the local Hugging Face cache only
        (offline, whatever the environment says): no name lookup, no retries, an error naming the missing path."""
        import socket

        import huggingface_hub.constants

        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        before = huggingface_hub.constants.HF_HUB_OFFLINE
        lookups: list[object] = []
        real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: lookups.append(a[0]) or real(*a, **k))
        assert main(["data", "build", "--source", "nosuch", "--splits", "train", "--out", "o"]) == 1
        err = capsys.readouterr().err
        assert f"no file or directory {tmp_path / 'nosuch'}" in err
        assert "ftkit never downloads" in err
        assert lookups == []
        assert huggingface_hub.constants.HF_HUB_OFFLINE is before  # offline for the load only
        assert not (tmp_path / "o").exists()

    def test_job_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        write_jsonl(tmp_path / "train_sft.jsonl", [good(i) for i in range(30)])
        job = tmp_path / "job.yaml"
        job.write_text(
            "name: t\nmodel: {name: m}\ndata: {source: train_sft.jsonl, score_split: null, test_split: train_sft}\n"
        )
        rc = main(["data", "build", str(job), "--splits", "train_sft"])
        assert rc == 0, capsys.readouterr().err
        assert (tmp_path / "data" / "train_sft.jsonl").is_file()


def test_lazy_public_names() -> None:
    """ChatDatasetBuilder is public on ftkit and loads lazily."""
    assert ftkit.ChatDatasetBuilder is ChatDatasetBuilder
    assert "ChatDatasetBuilder" in ftkit.__all__


def test_output_files_get_the_usual_mode(tmp_path: Path) -> None:
    """Atomic writes do not leave the temporary file's private 0600 mode on the result."""
    import os

    from ftkit.data.writer import atomic_path

    target = tmp_path / "out.jsonl"
    with atomic_path(target) as tmp:
        tmp.write_text("{}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


class TestFileQuirks:
    def test_jsonl_with_a_byte_order_mark_keeps_its_first_row(self, tmp_path: Path) -> None:
        """A JSONL file saved on Windows (UTF-8 with BOM): the first row is read like the others."""
        path = tmp_path / "train_sft.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(good(i)) + "\n" for i in range(3)).encode())
        build = ChatDatasetBuilder(path, splits=["train_sft"], out_dir=tmp_path / "o").build()
        (split,) = build.report.splits
        assert (split.rows_written, split.rows_rejected) == (3, 0)

    def test_single_file_builds_one_split_named_after_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``ftkit data build --source one.parquet`` without --splits writes that file as split ``one``."""
        source = tmp_path / "one.parquet"
        pq.write_table(pa.Table.from_pylist([good(i) for i in range(4)]), source)
        assert main(["data", "build", "--source", str(source), "--out", str(tmp_path / "D")]) == 0, (
            capsys.readouterr().err
        )
        assert (tmp_path / "D" / "one.jsonl").read_text(encoding="utf-8").count("\n") == 4

    def test_missing_split_names_the_ones_present_and_the_flag(self, tmp_path: Path) -> None:
        """Asking a source for a split it lacks lists the splits it has and how to choose them."""
        path = tmp_path / "one.jsonl"
        path.write_text(json.dumps(good(0)) + "\n", encoding="utf-8")
        with pytest.raises(DataSourceError) as info:
            ChatDatasetBuilder(path, splits=["train_sft", "test_sft"], out_dir=tmp_path / "o").build()
        text = str(info.value.render())
        assert "available: one" in text
        assert "--splits one" in text
