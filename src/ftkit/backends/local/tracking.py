"""MLflow tracking for local runs: a SQLite store and an artifact folder under the ftkit home.

:class:`MlflowStore` names where runs and registered models live (``sqlite:///{home}/mlflow.db`` and
``{home}/mlruns`` by default; any MLflow tracking URI works). :class:`RunLogger` is what the training loop
writes through: params, metrics by step (batched) and artifacts. :func:`read_metrics` reads a run's metric
history back as a :class:`~ftkit.backends.base.MetricsTable` (Azure ML workspaces speak MLflow too, so the
same review code serves both backends).

mlflow is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ...exceptions import BackendError, MissingDependencyError, NotFoundError
from ..base import MetricPoint, MetricsTable

__all__ = ["MlflowStore", "RunLogger", "client", "ensure_experiment", "read_metrics", "using_store"]

# MLflow rejects param values longer than this; longer ones are cut (the full set is in an artifact).
_MAX_PARAM_LEN = 6000


@attrs.frozen
class MlflowStore:
    """Where MLflow keeps runs, metrics and registered models.

    Attributes:
        tracking_uri: The tracking (and registry) store URI, e.g. ``sqlite:////home/me/.ftkit/mlflow.db``.
        artifact_root: The folder new experiments keep their artifacts in.
    """

    tracking_uri: str
    artifact_root: Path

    @classmethod
    def at(cls, home: str | Path, tracking_uri: str | None = None) -> MlflowStore:
        """Return the store under an ftkit home (the directory is not created here).

        Args:
            home: The ftkit home.
            tracking_uri: Another tracking URI to use instead of the home's SQLite file.

        Returns:
            The store.
        """
        home = Path(home).expanduser().absolute()
        return cls(tracking_uri or f"sqlite:///{home / 'mlflow.db'}", home / "mlruns")


def _mlflow() -> Any:
    """Strictly private: import mlflow or say which extra brings it."""
    try:
        import mlflow
    except ImportError:
        raise MissingDependencyError("mlflow", "local") from None
    # MLflow logs every schema migration at INFO on first use of a new SQLite file; that is noise here.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


# SQLite stores this process has created or migrated already (under the lock, once per process).
_READY: set[str] = set()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Strictly private: an exclusive ``flock`` on ``path`` (across processes)."""
    import fcntl

    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def client(store: MlflowStore) -> Any:
    """Return an ``MlflowClient`` on ``store`` (tracking and registry), creating the SQLite file's folder.

    The first use of a SQLite store in a process creates its tables, or runs MLflow's (alembic) schema
    migrations, under an inter-process lock beside the database: two runs starting at once in a fresh ftkit
    home would otherwise both migrate one file, and one of them die of it.

    Raises:
        MissingDependencyError: mlflow is not installed.
    """
    mlflow = _mlflow()
    if not store.tracking_uri.startswith("sqlite:///") or store.tracking_uri in _READY:
        return mlflow.MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    db = Path(store.tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(db.with_name(f"{db.name}.lock")):
        try:
            # The client opens the database; both stores initialise (create or migrate the schema) on first call.
            c = mlflow.MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
            c.search_experiments(max_results=1)
            c.search_registered_models(max_results=1)
        except Exception:
            damage = _sqlite_damage(db)
            if damage is None:
                raise
            raise BackendError(
                f"the MLflow store {db} is damaged ({damage}); restore it from a backup, or move it away to "
                "start an empty one (its runs and registered models are then lost to ftkit)",
                operation="open_mlflow_store",
            ) from None
    _READY.add(store.tracking_uri)
    return c


def _sqlite_damage(db: Path) -> str | None:
    """Strictly private: why ``db`` is not a sound SQLite database (truncated, overwritten), or ``None``."""
    import sqlite3

    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    verdict = str(rows[0][0]) if rows else "no answer"
    return None if verdict == "ok" else verdict


@contextlib.contextmanager
def using_store(store: MlflowStore) -> Iterator[Any]:
    """Point mlflow's global (fluent) API at ``store`` for a block, then restore the previous URIs.

    ``mlflow.transformers.load_model("models:/name/1")`` and ``mlflow.pyfunc`` read the global URIs; this
    keeps a library call from changing them for the rest of the process.

    Yields:
        The mlflow module.
    """
    mlflow = _mlflow()
    previous = (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    old_tracking = mlflow.get_tracking_uri()
    old_registry = mlflow.get_registry_uri()
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(old_tracking)
        mlflow.set_registry_uri(old_registry)
        for key, value in zip(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"), previous, strict=True):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_experiment(store: MlflowStore, name: str) -> str:
    """Return the id of experiment ``name``, creating it (artifacts under ``store.artifact_root``) if absent."""
    c = client(store)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    store.artifact_root.mkdir(parents=True, exist_ok=True)
    try:
        return str(c.create_experiment(name, artifact_location=store.artifact_root.as_uri()))
    except Exception:  # another process created it first: read it back
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


class RunLogger:
    """Writes one MLflow run: parameters, metrics by step, tags and artifacts.

    Metrics are buffered and sent in batches (one SQLite transaction per flush), so logging every step costs
    little. Reopening a run (after an interrupted job resumes) continues the same run.

    Args:
        store: The MLflow store.
        run_id: The run to write to.
    """

    def __init__(self, store: MlflowStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._client = client(store)
        self._pending: list[Any] = []

    @classmethod
    def start(
        cls, store: MlflowStore, experiment: str, *, run_name: str, tags: Mapping[str, str] | None = None
    ) -> RunLogger:
        """Create a run in ``experiment`` and return its logger.

        Args:
            store: The MLflow store.
            experiment: The experiment's name (created if absent).
            run_name: The run's name.
            tags: Tags to set on the run.

        Returns:
            The logger.
        """
        c = client(store)
        run = c.create_run(ensure_experiment(store, experiment), run_name=run_name, tags=dict(tags or {}))
        return cls(store, str(run.info.run_id))

    def reopen(self) -> None:
        """Mark the run running again (a resumed job continues its run)."""
        self._client.update_run(self.run_id, status="RUNNING")

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log parameters, skipping any the run already has (a resumed run logs them again)."""
        mlflow = _mlflow()
        existing = self._client.get_run(self.run_id).data.params
        new = [
            mlflow.entities.Param(k, str(v)[:_MAX_PARAM_LEN])
            for k, v in sorted(params.items())
            if k not in existing and v is not None
        ]
        for i in range(0, len(new), 100):  # MLflow's per-batch limit on params
            self._client.log_batch(self.run_id, params=new[i : i + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run."""
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values at ``step`` (sent by :meth:`flush`)."""
        mlflow = _mlflow()
        now = int(time.time() * 1000)
        self._pending.extend(mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items())

    def flush(self) -> None:
        """Send the buffered metrics."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):
            self._client.log_batch(self.run_id, metrics=pending[i : i + 1000], synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or folder into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Flush and mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.flush()
        self._client.set_terminated(self.run_id, status=status)


def read_metrics(store: MlflowStore, run_id: str) -> MetricsTable:
    """Read every metric's full history of a run.

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps its latest value.

    Args:
        store: The MLflow store.
        run_id: The run.

    Returns:
        The metrics, ordered by key then step.

    Raises:
        NotFoundError: The run does not exist.
        BackendError: The store could not be read.
    """
    mlflow = _mlflow()
    c = client(store)
    try:
        run = c.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(f"no MLflow run {run_id!r} in {store.tracking_uri}", operation="read_metrics") from exc
    points: list[MetricPoint] = []
    try:
        for key in sorted(run.data.metrics):
            latest: dict[int, Any] = {}
            for m in c.get_metric_history(run_id, key):
                if m.step not in latest or m.timestamp >= latest[m.step].timestamp:
                    latest[m.step] = m
            points.extend(
                MetricPoint(key, step, float(latest[step].value), latest[step].timestamp) for step in sorted(latest)
            )
    except mlflow.exceptions.MlflowException as exc:
        raise BackendError(f"cannot read the metrics of run {run_id}: {exc}", operation="read_metrics") from exc
    return MetricsTable(run_id=run_id, points=tuple(points))
