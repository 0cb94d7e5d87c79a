"""The workspace's MLflow tracking REST API: experiments, runs (jobs and their child steps), params, metrics.

An Azure ML job's MLflow run id is its name; a pipeline's steps (and the nested pipeline run of a registry
pipeline component) are runs of their own, tagged ``mlflow.rootRunId`` (the pipeline job) and
``mlflow.parentRunId``, as the azureml-examples notebooks expect when they call
``mlflow.search_runs(experiment_names=[...], filter_string="tags.mlflow.rootRunId='<job>'")``. Experiments are
the jobs' ``experiment_name`` s (plus ``Default``); an unknown name answers ``RESOURCE_DOES_NOT_EXIST``, which
mlflow's ``get_experiment_by_name`` turns into ``None``.

It answers on any host under ``/mlflow/v1.0/<workspace>/api/2.0/mlflow/``: through the transport (ftkit's own
metrics reader) and through the loopback server (plain ``mlflow`` with the workspace's tracking URI).

Strictly private; use :class:`ftkit.testing.FakeAzureML` (``fake.metrics[run_id]`` to change a run's metrics).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .._http import RecordedRequest
from .base import Reply
from .jobs import TERMINAL, JobRoutes, JobRun, Step

__all__ = ["MlflowRoutes", "parse_filter"]

STATUS = {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED", "NotStarted": "SCHEDULED"}
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z, the fake's job clock


def _not_found(message: str) -> Reply:
    return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": message}, {}


def _invalid(message: str) -> Reply:
    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": message}, {}


class MlflowRoutes(JobRoutes):
    """Strictly private: MLflow experiments, runs and metric history for jobs and their steps."""

    def _mlflow(self, record: RecordedRequest) -> Reply:
        path = record.path.rstrip("/")
        body = record.body if isinstance(record.body, dict) else {}
        if path.endswith("/experiments/get-by-name"):
            name = record.query.get("experiment_name") or str(body.get("experiment_name") or "")
            if name not in self._experiments():
                # mlflow's own stores word it so ("Could not find experiment with name '%s'"); mlflow's
                # RestStore.get_experiment_by_name returns None on RESOURCE_DOES_NOT_EXIST.
                return _not_found(f"Could not find experiment with name '{name}'")
            return 200, {"experiment": self._experiment(name)}, {}
        if path.endswith("/experiments/get"):
            wanted = record.query.get("experiment_id") or str(body.get("experiment_id") or "")
            found = next((n for n in self._experiments() if _experiment_id(n) == wanted), None)
            if found is None:
                return _not_found(f"No Experiment with id={wanted} exists")
            return 200, {"experiment": self._experiment(found)}, {}
        if path.endswith("/experiments/search"):
            return 200, {"experiments": [self._experiment(n) for n in self._experiments()]}, {}
        if path.endswith("/runs/search"):
            return self._search_runs(body)
        run_id = record.query.get("run_id") or record.query.get("run_uuid") or str(body.get("run_id") or "")
        run = self._mlflow_run(run_id)
        if run is None:
            return _not_found(f"Run '{run_id}' not found")
        if path.endswith("/runs/get"):
            return 200, {"run": run}, {}
        if path.endswith("/metrics/get-history"):
            points = self.metrics.get(run_id, {}).get(record.query.get("metric_key", ""), [])
            start = int(record.query.get("page_token") or 0)
            size = int(record.query.get("max_results") or 25000)
            page = points[start : start + size]
            out: dict[str, Any] = {
                "metrics": [
                    {"key": record.query["metric_key"], "value": v, "timestamp": ts, "step": s} for s, v, ts in page
                ]
            }
            if start + size < len(points):
                out["next_page_token"] = str(start + size)
            return 200, out, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"the fake serves no MLflow route {path}"}, {}

    # ---------------------------------------------------------------- experiments

    def _experiments(self) -> list[str]:
        return list(dict.fromkeys(["Default", *(r.experiment for r in self._runs.values())]))

    def _experiment(self, name: str) -> dict[str, Any]:
        return {
            "experiment_id": _experiment_id(name),
            "name": name,
            "lifecycle_stage": "active",
            "artifact_location": f"azureml://experiments/{name}",
            "creation_time": T0,
            "last_update_time": T0,
        }

    # ---------------------------------------------------------------- runs

    def _search_runs(self, body: Mapping[str, Any]) -> Reply:
        wanted = {str(e) for e in body.get("experiment_ids") or []}
        try:
            matches = parse_filter(str(body.get("filter") or ""))
        except ValueError as exc:
            return _invalid(str(exc))
        runs = [
            r
            for job in list(self._runs.values())
            if _experiment_id(job.experiment) in wanted
            for r in self._runs_of(job)
            if all(m(r) for m in matches)
        ]
        order = [str(o) for o in body.get("order_by") or []] or ["attributes.start_time DESC"]
        for clause in reversed(order):  # stable sorts, last key first
            key, _, direction = clause.strip().partition(" ")
            getter = _getter(key)
            runs.sort(key=lambda r: _sort_key(getter(r)), reverse=direction.strip().upper() == "DESC")
        start = int(body.get("page_token") or 0)
        size = int(body.get("max_results") or 1000)
        out: dict[str, Any] = {"runs": runs[start : start + size]}
        if start + size < len(runs):
            out["next_page_token"] = str(start + size)
        return 200, out, {}

    def _runs_of(self, job: JobRun) -> list[dict[str, Any]]:
        """The job's MLflow runs: the job, its nested pipeline runs, its steps."""
        out = [self._run_entity(job, None, None)]
        if job.pipeline:
            for group in dict.fromkeys(s.group for s in job.steps if s.group is not None):
                out.append(self._run_entity(job, None, group))
            out += [self._run_entity(job, step, None) for step in job.steps]
        return [r for r in out if r is not None]

    def _mlflow_run(self, run_id: str) -> dict[str, Any] | None:
        found = self._find_run(run_id)
        if found is None:
            return None
        return self._run_entity(*found)

    def _run_entity(self, job: JobRun, step: Step | None, group: str | None) -> dict[str, Any]:
        stored = self.job(job.name) or {"properties": {}}
        props = stored["properties"]
        if step is not None:
            run_id, name, status = step.run_id, step.name, step.status
            parent: str | None = f"{job.name}-{step.group}" if step.group else job.name
            index = job.steps.index(step) + 1
            params: list[dict[str, str]] = []
        elif group is not None:
            run_id, name, parent, index = f"{job.name}-{group}", group, job.name, 0
            statuses = [s.status for s in job.steps if s.group == group]
            status = _group_status(statuses)
            params = []
        else:
            run_id, name, parent, index = job.name, str(props.get("displayName") or job.name), None, 0
            status = str(props.get("status", "Completed"))
            params = [
                {"key": str(k), "value": str(v.get("value"))}
                for node in (props.get("jobs") or {}).values()
                for k, v in (node.get("inputs") or {}).items()
                if isinstance(v, dict) and v.get("job_input_type", v.get("jobInputType")) == "literal"
            ]
        history = self.metrics.get(run_id) or {}
        latest = [
            {"key": k, "value": pts[-1][1], "timestamp": pts[-1][2], "step": pts[-1][0]}
            for k, pts in history.items()
            if pts
        ]
        mlflow_status = STATUS.get(status, "RUNNING")
        info: dict[str, Any] = {
            "run_id": run_id,
            "run_uuid": run_id,
            "run_name": name,
            "experiment_id": _experiment_id(job.experiment),
            "user_id": "tester@example.com",
            "status": mlflow_status,
            "start_time": T0 + index * 60_000,
            "artifact_uri": f"azureml://{self.location}.api.azureml.ms/artifacts/ExperimentRun/dcid.{run_id}",
            "lifecycle_stage": "active",
        }
        if status in TERMINAL:
            info["end_time"] = T0 + 1_200_000 + index * 60_000
        tags = {"mlflow.runName": name, "mlflow.rootRunId": job.name, "mlflow.user": "tester@example.com"}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
            tags["azureml.nodeid"] = name
        return {
            "info": info,
            "data": {"metrics": latest, "params": params, "tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }


def _group_status(statuses: list[str]) -> str:
    """A nested pipeline run's status from its steps' (as the run history's ``_group_body`` words it)."""
    if all(x == "Completed" for x in statuses):
        return "Completed"
    if all(x == "NotStarted" for x in statuses):
        return "NotStarted"
    return next((x for x in ("Failed", "Canceled") if x in statuses), "Running")


def _experiment_id(name: str) -> str:
    # Azure ML experiment ids are GUIDs; a name-based one keeps them stable across runs of a test.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ftkit-fake-experiment/{name}"))


# ---------------------------------------------------------------- the filter grammar

_ENTITIES = {
    "tags": "tags",
    "tag": "tags",
    "attributes": "attributes",
    "attribute": "attributes",
    "attr": "attributes",
    "run": "attributes",
    "metrics": "metrics",
    "metric": "metrics",
    "params": "params",
    "param": "params",
    "parameter": "params",
    "parameters": "params",
}
_ATTRIBUTES = {
    "run_id": "run_id",
    "run_uuid": "run_id",
    "run_name": "run_name",
    "status": "status",
    "start_time": "start_time",
    "end_time": "end_time",
    "user_id": "user_id",
    "artifact_uri": "artifact_uri",
    "lifecycle_stage": "lifecycle_stage",
    "created": "start_time",
    "Created": "start_time",
}
_CLAUSE = re.compile(
    r"""\s*(?P<key>[A-Za-z_]+\.(?:`[^`]+`|"[^"]+"|[\w.\-]+)|[A-Za-z_]+)
        \s*(?P<op>!=|>=|<=|=|>|<|NOT\s+ILIKE|NOT\s+LIKE|ILIKE|LIKE|NOT\s+IN|IN)
        \s*(?P<value>'(?:[^']|'')*'|"[^"]*"|\([^)]*\)|[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*""",
    re.IGNORECASE | re.VERBOSE,
)


def parse_filter(text: str) -> list[Callable[[Mapping[str, Any]], bool]]:
    """Parse MLflow's search filter (clauses joined by ``AND``) into predicates over a run entity.

    Supported: ``tags.``/``params.`` (string comparisons, ``LIKE``/``ILIKE``), ``metrics.`` (numbers),
    ``attributes.`` (``run_id``, ``run_name``, ``status``, times...; ``IN``/``NOT IN`` lists), with
    backquoted or double-quoted keys, as mlflow's own ``SearchUtils`` grammar.

    Raises:
        ValueError: The filter is not in that grammar (worded like mlflow's error).
    """
    out: list[Callable[[Mapping[str, Any]], bool]] = []
    if not text.strip():
        return out
    for clause in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        m = _CLAUSE.fullmatch(clause)
        if m is None:
            raise ValueError(f"Invalid clause(s) in filter string: '{clause.strip()}'")
        entity, _, key = m["key"].partition(".")
        if not key:
            raise ValueError(
                f"Invalid identifier '{m['key']}': prefix it with one of tags., params., metrics., attributes."
            )
        if entity.lower() not in _ENTITIES:
            raise ValueError(f"Invalid entity type '{entity}'. Valid values are {sorted(set(_ENTITIES.values()))}")
        kind = _ENTITIES[entity.lower()]
        key = key.strip('`"')
        if kind == "attributes" and key not in _ATTRIBUTES:
            raise ValueError(f"Invalid attribute key '{key}' specified. Valid keys are {sorted(set(_ATTRIBUTES))}")
        out.append(_predicate(f"{kind}.{_ATTRIBUTES.get(key, key) if kind == 'attributes' else key}", m))
    return out


def _predicate(key: str, m: re.Match[str]) -> Callable[[Mapping[str, Any]], bool]:
    op = re.sub(r"\s+", " ", m["op"].upper())
    raw = m["value"].strip()
    getter = _getter(key)
    if op in ("IN", "NOT IN"):
        if not raw.startswith("("):
            raise ValueError(f"'{op}' needs a parenthesised list of quoted values, got {raw}")
        items = {_unquote(v.strip()) for v in raw[1:-1].split(",") if v.strip()}
        return lambda r: (str(getter(r)) in items) == (op == "IN")
    numeric = key.startswith("metrics.") or key in ("attributes.start_time", "attributes.end_time")
    value: Any = float(raw) if numeric and not raw.startswith(("'", '"')) else _unquote(raw)
    if numeric and isinstance(value, str):
        raise ValueError(f"Expected a numeric value for {key}, got {raw}")
    if not numeric and not raw.startswith(("'", '"')):
        raise ValueError(f"Expected a quoted string value for {key}, got {raw}")

    def test(r: Mapping[str, Any]) -> bool:
        have = getter(r)
        if have is None:
            return False
        if "LIKE" in op:
            pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(value))
            flags = re.IGNORECASE | re.DOTALL if "ILIKE" in op else re.DOTALL
            hit = re.fullmatch(pattern, str(have), flags) is not None
            return hit != op.startswith("NOT")
        if numeric:
            return _compare(op, float(have), float(value))
        return _compare(op, str(have), str(value))

    return test


def _compare(op: str, a: Any, b: Any) -> bool:
    return bool(
        {
            "=": lambda: a == b,
            "!=": lambda: a != b,
            ">": lambda: a > b,
            ">=": lambda: a >= b,
            "<": lambda: a < b,
            "<=": lambda: a <= b,
        }[op]()
    )


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1].replace("''", "'")
    return raw


def _getter(key: str) -> Callable[[Mapping[str, Any]], Any]:
    kind, _, name = key.partition(".")
    kind = _ENTITIES.get(kind.lower(), kind)
    name = name.strip('`"')
    if kind == "attributes":
        field = _ATTRIBUTES.get(name, name)
        return lambda r: r["info"].get(field)
    section = {"tags": "tags", "params": "params", "metrics": "metrics"}.get(kind)
    if section is None:
        return lambda _run: None
    return lambda r: next((x["value"] for x in r["data"][section] if x["key"] == name), None)


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (1, 0)
    return (0, value) if isinstance(value, int | float) else (0, str(value))
