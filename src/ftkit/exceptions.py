"""The one error tree of ftkit.

Every error ftkit raises derives from :class:`FtkitError`, so ``except ftkit.FtkitError`` catches them all;
SDK errors (azure-core, azure-ai-ml, mlflow, torch) are translated at the backend boundary and kept as
``__cause__``. Each error names what failed and, where there is one, what to do about it.

::

    FtkitError
    ├── ValidationError (ValueError)          every problem at once, as Problem values
    │   ├── JobFileError                      the YAML job file (file, line, key)
    │   ├── ParameterError                    finetune parameters vs. the component's declared inputs
    │   ├── ComputeValidationError            the cluster vs. the model's allow-list and the SKU list
    │   ├── DatasetValidationError            chat rows rejected in strict mode
    │   └── TagError                          a malformed model tag (allow-lists, model_specific_defaults)
    ├── MissingDependencyError (ImportError)  an optional extra is not installed
    ├── BackendError                          a service call failed
    │   ├── TransientBackendError             worth retrying: connection, 408/429/5xx (carries retry_after)
    │   ├── AuthError                         no or bad credentials; says which were tried
    │   ├── NotFoundError                     the named resource does not exist
    │   ├── ConflictError                     the named resource already exists / is in the wrong state
    │   └── QuotaError                        not enough quota (never retried)
    ├── JobFailedError                        a fine-tuning job ended Failed/Canceled (job name, status, URL)
    │   ├── JobTimeoutError                   waiting for a job ran past its deadline
    │   └── JobStorageError (StorageError)    the job failed on its file system (a full disk): stage and path
    ├── DeploymentError                       an endpoint or deployment failed (endpoint, deployment, logs)
    │   └── ProbeFailedError                  the container never became live/ready
    ├── ScoringError                          a scoring request was answered with an error
    ├── EvaluationError                       tuned vs base could not be compared
    │   └── EvaluationGateError               the tuned model did not meet evaluate.require
    └── StorageError                          the file system said no (full disk, permissions): stage and path

The retry policy (:mod:`ftkit.retry`) retries :class:`TransientBackendError` and nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import attrs

__all__ = [
    "AuthError",
    "BackendError",
    "ComputeValidationError",
    "ConflictError",
    "DatasetValidationError",
    "DeploymentError",
    "EvaluationError",
    "EvaluationGateError",
    "FtkitError",
    "JobFailedError",
    "JobFileError",
    "JobStorageError",
    "JobTimeoutError",
    "MissingDependencyError",
    "NotFoundError",
    "ParameterError",
    "ProbeFailedError",
    "Problem",
    "QuotaError",
    "ScoringError",
    "StorageError",
    "TagError",
    "TransientBackendError",
    "ValidationError",
    "closest",
]


def closest(name: str, choices: Iterable[str], *, n: int = 3) -> tuple[str, ...]:
    """Return up to ``n`` names from ``choices`` that look like ``name`` (for "did you mean" hints).

    Args:
        name: The name that was given.
        choices: The valid names.
        n: How many suggestions at most.

    Returns:
        The closest valid names, best first; empty when nothing is close.
    """
    pool = list(choices)
    lowered = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return tuple(lowered[h] for h in hits)


@attrs.frozen
class Problem:
    """One thing wrong with an input, located as precisely as ftkit can.

    Attributes:
        where: The field or key path, e.g. ``finetune.learning_rate`` or ``messages[2].role``.
        message: What is wrong, in one sentence.
        suggestion: What to do instead (valid choices, the closest name), if known.
        source: The file the problem is in, if any.
        line: The 1-based line in ``source``, if known.
    """

    where: str
    message: str
    suggestion: str | None = None
    source: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        loc = ""
        if self.source is not None:
            loc = f"{self.source}:{self.line}: " if self.line is not None else f"{self.source}: "
        text = f"{loc}{self.where}: {self.message}" if self.where else f"{loc}{self.message}"
        if self.suggestion:
            text += f"; {self.suggestion}"
        return text


class FtkitError(Exception):
    """Base of every error ftkit raises."""


class ValidationError(FtkitError, ValueError):
    """Input failed validation; carries every problem found, not just the first.

    Args:
        problems: The problems, in the order they were found.
        summary: One line saying what was validated.
    """

    def __init__(self, problems: Sequence[Problem], summary: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.summary = summary or f"{len(self.problems)} problem(s) found"
        super().__init__(self.render())

    def render(self) -> str:
        """Return the summary and one line per problem."""
        return "\n".join([f"{self.summary}:", *(f"  - {p}" for p in self.problems)])


class JobFileError(ValidationError):
    """The job file is missing, not YAML, or has bad keys or values."""


class ParameterError(ValidationError):
    """Finetune parameters do not match the component's declared inputs."""


class ComputeValidationError(ValidationError):
    """The compute cluster cannot run this fine-tuning job.

    Args:
        problems: The failed checks.
        available_sizes: The VM sizes the workspace offers, for the message and for callers.
        summary: One line saying what was validated.
    """

    def __init__(
        self, problems: Sequence[Problem], available_sizes: Sequence[str] = (), summary: str | None = None
    ) -> None:
        self.available_sizes = tuple(available_sizes)
        super().__init__(problems, summary)


class DatasetValidationError(ValidationError):
    """Chat rows were rejected while building a dataset in strict mode."""


class TagError(ValidationError):
    """A model tag that drives the flow could not be parsed."""


class MissingDependencyError(FtkitError, ImportError):
    """An optional dependency is not installed.

    Args:
        package: The import that failed.
        extra: The ftkit extra that brings it.
        install: The install command to suggest, where it is not ``pip install 'ftkit[EXTRA]'``.
    """

    def __init__(self, package: str, extra: str, install: str | None = None) -> None:
        self.package = package
        self.extra = extra
        command = install or f"pip install 'ftkit[{extra}]'"
        super().__init__(f"{package} is not installed: {command}")


class BackendError(FtkitError):
    """A backend (Azure ML or local) call failed.

    Args:
        message: What failed and what to do.
        operation: The ftkit operation, e.g. ``get_compute``.
        status_code: The HTTP status, when the failure was an HTTP answer.
        code: The service's error code (e.g. ``OutOfQuota``), when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
    ) -> None:
        self.operation = operation
        self.status_code = status_code
        self.code = code
        super().__init__(message)


class TransientBackendError(BackendError):
    """A failure that may go away on its own: retried by the retry policy.

    Args:
        message: What failed.
        retry_after: Seconds the service asked us to wait (``Retry-After``), if any.
        **kwargs: As for :class:`BackendError`.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class AuthError(BackendError):
    """No usable credential, or the service refused it."""


class NotFoundError(BackendError):
    """The named resource does not exist."""


class ConflictError(BackendError):
    """The resource exists already, or is in a state that forbids the operation."""


class QuotaError(BackendError):
    """The subscription lacks quota for the requested VM size or count; never retried."""


class JobFailedError(FtkitError):
    """A fine-tuning job ended without completing.

    Args:
        job_name: The job's name.
        status: Its final status (``Failed``, ``Canceled``...).
        studio_url: Where to read its logs, if known.
        message: Extra detail from the service.
    """

    def __init__(self, job_name: str, status: str, studio_url: str | None = None, message: str | None = None) -> None:
        self.job_name = job_name
        self.status = status
        self.studio_url = studio_url
        text = f"job {job_name} ended {status}"
        if message:
            text += f": {message}"
        if studio_url:
            text += f" (logs: {studio_url})"
        super().__init__(text)


class JobTimeoutError(JobFailedError):
    """Waiting for a job ran past its deadline; the job itself may still be running.

    Args:
        job_name: The job's name.
        status: Its last seen status.
        waited_s: How long ftkit waited.
        studio_url: Where to watch it.
    """

    def __init__(self, job_name: str, status: str, waited_s: float, studio_url: str | None = None) -> None:
        self.waited_s = waited_s
        super().__init__(
            job_name,
            status,
            studio_url,
            f"still {status} after {waited_s:.0f}s; re-attach with its name or cancel it",
        )


class DeploymentError(FtkitError):
    """Creating, updating or using an online endpoint or deployment failed.

    Args:
        message: What failed and what to do.
        endpoint: The endpoint's name.
        deployment: The deployment's name, if the failure is about one.
        logs: The deployment's container logs, when ftkit could fetch them.
    """

    def __init__(self, message: str, *, endpoint: str, deployment: str | None = None, logs: str | None = None) -> None:
        self.endpoint = endpoint
        self.deployment = deployment
        self.logs = logs
        super().__init__(message)


class ProbeFailedError(DeploymentError):
    """The deployment's container did not pass its liveness/readiness probe."""


class ScoringError(FtkitError):
    """The endpoint answered a scoring request with an error.

    Args:
        message: What the endpoint said.
        status_code: The HTTP status.
        endpoint: The endpoint's name.
        deployment: The deployment that answered, if known.
    """

    def __init__(self, message: str, *, status_code: int, endpoint: str, deployment: str | None = None) -> None:
        self.status_code = status_code
        self.endpoint = endpoint
        self.deployment = deployment
        super().__init__(message)


class EvaluationError(FtkitError):
    """The evaluation of a tuned model against its base could not be completed."""


class EvaluationGateError(EvaluationError):
    """The tuned model did not meet ``evaluate.require``: the run fails and no deployment is kept.

    Args:
        message: Which requirement failed, with the measured value.
        result: The evaluation (its report is written before this is raised).
    """

    def __init__(self, message: str, *, result: object = None) -> None:
        self.result = result
        super().__init__(message)


class StorageError(FtkitError):
    """Writing or reading ftkit's files failed (a full disk, no permission): one message with the stage and path.

    Args:
        stage: The run's stage (``data``, ``finetune``, ``register``...) or the operation.
        error: The operating system's error.
    """

    def __init__(self, stage: str, error: OSError) -> None:
        self.stage = stage
        self.errno = error.errno
        self.path = error.filename
        super().__init__(_storage_message(stage, error))


def _storage_message(stage: str, error: OSError) -> str:
    """Strictly private: a :class:`StorageError`'s text: the stage, the system's reason, the path, what to do."""
    import errno

    reason = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    hint = {
        errno.ENOSPC: "free some space on that disk and run again",
        errno.EDQUOT: "free some space within your quota and run again",
        errno.EACCES: "check the permissions of that path",
        errno.EROFS: "the file system is read-only; point FTKIT_HOME elsewhere",
    }.get(error.errno or 0, "fix the file system problem and run again")
    return f"{stage}: {reason}{where}; {hint}"


class JobStorageError(StorageError, JobFailedError):
    """A fine-tuning job failed because its file system said no (a full disk while it wrote a checkpoint).

    Both a :class:`StorageError` (``stage``, ``errno``, ``path``: what filled) and a :class:`JobFailedError`
    (``job_name``, ``status``), so ``except StorageError`` and ``except JobFailedError`` both catch it. The job's
    worker ran in another process; its record carried the failure here (see ``JobHandle.storage``).

    Args:
        job_name: The job's name.
        status: Its final status (``Failed``).
        stage: The stage that failed (``finetune``).
        error: The operating system's error, with the path that filled.
        studio_url: Where to read its logs, if known.
    """

    def __init__(self, job_name: str, status: str, stage: str, error: OSError, studio_url: str | None = None) -> None:
        # Neither base's __init__: each would pass its own text up the MRO to the other's.
        self.stage, self.errno, self.path = stage, error.errno, error.filename
        self.job_name, self.status, self.studio_url = job_name, status, studio_url
        FtkitError.__init__(
            self,
            f"{_storage_message(stage, error)} (job {job_name} ended {status}; it resumes from its last checkpoint)",
        )
