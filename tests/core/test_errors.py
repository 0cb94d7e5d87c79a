"""The error tree and its messages."""

from __future__ import annotations

import ftkit
from ftkit.exceptions import (
    BackendError,
    JobFailedError,
    JobTimeoutError,
    MissingDependencyError,
    Problem,
    ValidationError,
    closest,
)


def test_every_error_is_an_ftkit_error() -> None:
    """Every exception class ftkit exports derives from FtkitError."""
    for name in ftkit.__all__:
        obj = getattr(ftkit, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, ftkit.FtkitError), name


def test_validation_error_lists_every_problem() -> None:
    """str() of a ValidationError shows the summary and each problem with file, line, key and hint."""
    err = ValidationError(
        [
            Problem("finetune.learning_rat", "unknown parameter", "did you mean learning_rate?", "job.yaml", 7),
            Problem("compute.size", "not offered", source="job.yaml"),
        ],
        "2 problems",
    )
    text = str(err)
    assert "job.yaml:7: finetune.learning_rat: unknown parameter; did you mean learning_rate?" in text
    assert "job.yaml: compute.size: not offered" in text
    assert isinstance(err, ValueError)


def test_closest_suggests_near_names_case_insensitively() -> None:
    """closest() finds near misses and keeps the valid spelling."""
    assert closest("learning_rat", ["learning_rate", "lr_scheduler_type"]) == ("learning_rate",)
    assert closest("standard_nc6S_V3", ["Standard_NC6s_v3"]) == ("Standard_NC6s_v3",)
    assert closest("zzz", ["learning_rate"]) == ()


def test_job_errors_carry_context() -> None:
    """Job errors keep the job name, status and Studio URL, and say so."""
    err = JobFailedError("job-1", "Failed", "https://ml.azure.com/runs/job-1", "OOM")
    assert (err.job_name, err.status) == ("job-1", "Failed")
    assert "https://ml.azure.com/runs/job-1" in str(err)
    timeout = JobTimeoutError("job-2", "Running", 3600.0)
    assert isinstance(timeout, JobFailedError)
    assert "still Running after 3600s" in str(timeout)


def test_backend_error_context_and_missing_dependency() -> None:
    """Backend errors keep status/code; a missing extra names the pip command."""
    err = BackendError("quota", operation="create_deployment", status_code=400, code="OutOfQuota")
    assert (err.operation, err.status_code, err.code) == ("create_deployment", 400, "OutOfQuota")
    missing = MissingDependencyError("torch", "local")
    assert isinstance(missing, ImportError)
    assert "pip install 'ftkit[local]'" in str(missing)


def test_a_job_s_storage_error_is_both_a_storage_error_and_a_job_failure() -> None:
    """JobStorageError: caught as StorageError (stage, errno, path) and as JobFailedError (job, status)."""
    import errno

    from ftkit.exceptions import JobStorageError, StorageError

    full = OSError(errno.ENOSPC, "No space left on device", "/h/jobs/ft-1/output/checkpoints/.checkpoint-4.tmp")
    err = JobStorageError("ft-1", "Failed", "finetune", full)
    assert isinstance(err, StorageError)
    assert isinstance(err, JobFailedError)
    assert (err.stage, err.errno, err.path) == ("finetune", errno.ENOSPC, full.filename)
    assert (err.job_name, err.status, err.studio_url) == ("ft-1", "Failed", None)
    assert str(err).startswith(str(StorageError("finetune", full)))
    assert str(err).endswith("(job ft-1 ended Failed; it resumes from its last checkpoint)")
