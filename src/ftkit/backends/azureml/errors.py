"""The one place where azure-core and azure-ai-ml exceptions become ftkit errors.

:func:`map_azure_errors` wraps every SDK call of the azureml backend. The mapping (most specific first):

====================================================================  ==========================================
SDK exception                                                         ftkit error
====================================================================  ==========================================
``ClientAuthenticationError`` (incl. ``CredentialUnavailableError``),  :class:`~ftkit.exceptions.AuthError`
HTTP 401/403
quota: ``OutOfQuota``, ``InferencingClientCreateDeploymentFailed``,   :class:`~ftkit.exceptions.QuotaError`
``QuotaExceeded``, or "quota" in the message
liveness/readiness probe, ``ResourceNotReady``                        :class:`~ftkit.exceptions.ProbeFailedError`
``ResourceNotFoundError``/404; registry "does not exist"              :class:`~ftkit.exceptions.NotFoundError`
``ResourceExistsError``/409                                           :class:`~ftkit.exceptions.ConflictError`
``ServiceRequestError``/``ServiceResponseError``; 408/429/500/502/     :class:`~ftkit.exceptions.TransientBackendError`
503/504 (``Retry-After`` kept) — except while polling an LRO
a failed long-running operation (while polling)                       :class:`~ftkit.exceptions.DeploymentError` for
                                                                      endpoints, else
                                                                      :class:`~ftkit.exceptions.BackendError`
``ValidationException``                                               :class:`~ftkit.exceptions.ValidationError`
any other ``MlException``/``AzureError``/HTTP status                  :class:`~ftkit.exceptions.BackendError`
====================================================================  ==========================================

Only :class:`~ftkit.exceptions.TransientBackendError` is retried (by :func:`ftkit.retry.call`, around the
coarse operation); every ``MLClient`` is built with ``retry_total=0`` so azure-core does not retry as well.
Errors raised while polling a long-running operation are never transient: the operation was accepted, and
re-sending it would not undo whatever state the service reached.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from collections.abc import Iterator
from typing import Any

from ...exceptions import (
    AuthError,
    BackendError,
    ConflictError,
    DeploymentError,
    FtkitError,
    NotFoundError,
    ProbeFailedError,
    Problem,
    QuotaError,
    TransientBackendError,
    ValidationError,
)

__all__ = ["CREDENTIAL_HELP", "TRANSIENT_STATUS", "map_azure_errors", "translate"]

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
QUOTA_CODES = frozenset({"outofquota", "inferencingclientcreatedeploymentfailed", "quotaexceeded"})
PROBE_CODES = frozenset({"resourcenotready", "livenessprobefailed", "readinessprobefailed"})

CREDENTIAL_HELP = (
    "set up a credential: run `az login` (Azure CLI), or set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
    "AZURE_CLIENT_SECRET for a service principal (or use a managed/workload identity); the interactive browser "
    "login is used only when allowed (interactive=True) in a terminal outside CI"
)


@contextlib.contextmanager
def map_azure_errors(
    operation: str,
    *,
    polling: bool = False,
    endpoint: str | None = None,
    deployment: str | None = None,
    resource: str | None = None,
) -> Iterator[None]:
    """Translate azure-core / azure-ai-ml exceptions raised inside the block into ftkit errors.

    Args:
        operation: The ftkit operation, for messages and ``BackendError.operation``.
        polling: The block waits on a long-running operation: failures are terminal, never transient.
        endpoint: The endpoint concerned, for deployment errors.
        deployment: The deployment concerned.
        resource: A human name of the resource, for messages (e.g. ``compute gpu-cluster``).

    Yields:
        Nothing.

    Raises:
        FtkitError: The translated error, with the SDK's exception as ``__cause__``.
    """
    try:
        yield
    except FtkitError:
        raise
    except Exception as exc:
        mapped = translate(exc, operation, polling=polling, endpoint=endpoint, deployment=deployment, resource=resource)
        if mapped is None:
            raise
        raise mapped from exc


def translate(
    exc: BaseException,
    operation: str,
    *,
    polling: bool = False,
    endpoint: str | None = None,
    deployment: str | None = None,
    resource: str | None = None,
) -> FtkitError | None:
    """Return the ftkit error for an SDK exception, or ``None`` when it is not an Azure error.

    Args:
        exc: The exception.
        operation: The ftkit operation.
        polling: Whether it was raised while polling a long-running operation.
        endpoint: The endpoint concerned, if any.
        deployment: The deployment concerned, if any.
        resource: A human name of the resource, for messages.

    Returns:
        The ftkit error to raise from ``exc``, or ``None`` to let ``exc`` through unchanged.
    """
    from azure.ai.ml.exceptions import MlException, ValidationException
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    what = resource or operation
    status = getattr(exc, "status_code", None)
    code = _error_code(exc)
    text = _message(exc)
    kwargs: dict[str, Any] = {"operation": operation, "status_code": status, "code": code}

    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        reason = "the service refused the credential" if status in (401, 403) else "no credential worked"
        if status == 403:
            reason = "the credential lacks permission (a role assignment on the workspace)"
        return AuthError(f"{operation}: {reason}: {_first_line(text)}; {CREDENTIAL_HELP}", **kwargs)
    if _is_quota(code, exc, text):
        return QuotaError(
            f"{what}: not enough quota: {_first_line(text)}. Request more quota for this VM family "
            "(Azure portal > Quotas), or choose another instance type or region; ftkit does not retry this.",
            **kwargs,
        )
    if _is_probe(code, text):
        return ProbeFailedError(
            f"{what}: the container never became live: {_first_line(text)}. Read the deployment logs; raise "
            "deploy.liveness_initial_delay_s if the model needs longer to load, or pick a larger instance type.",
            endpoint=endpoint or "?",
            deployment=deployment,
        )
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFoundError(f"{what} does not exist: {_first_line(text)}", **kwargs)
    if isinstance(exc, ValidationException) and "does not exist" in text.lower():
        return NotFoundError(f"{what} does not exist: {_first_line(text)}", **kwargs)
    if isinstance(exc, ResourceExistsError) or status == 409:
        return ConflictError(f"{what}: conflict: {_first_line(text)}", **kwargs)
    if polling and isinstance(exc, AzureError):
        message = (
            f"{what}: the long-running operation failed: {_first_line(text)} (not retried; the service may have "
            "kept partial state: check it, then run again)"
        )
        if endpoint is not None:
            return DeploymentError(message, endpoint=endpoint, deployment=deployment)
        return BackendError(message, **kwargs)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientBackendError(f"{what}: connection failed: {_first_line(text)}", **kwargs)
    if isinstance(exc, HttpResponseError) and status in TRANSIENT_STATUS:
        return TransientBackendError(
            f"{what}: the service answered {status}: {_first_line(text)}", retry_after=_retry_after(exc), **kwargs
        )
    if isinstance(exc, ValidationException):
        return ValidationError([Problem(operation, _first_line(text))], f"azure-ai-ml rejected {what}")
    if isinstance(exc, MlException | AzureError):
        return BackendError(f"{what} failed: {_first_line(text)}", **kwargs)
    return None


def _error_code(exc: BaseException) -> str | None:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else None


def _detail_codes(exc: BaseException) -> list[str]:
    error = getattr(exc, "error", None)
    details = getattr(error, "details", None) or []
    return [str(getattr(d, "code", "")) for d in details]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _message(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None)
    text = str(message) if message else str(getattr(exc, "message", "") or exc)
    if message:
        # Azure ML answers a generic top-level UserError ("The request is invalid.") and puts what is wrong
        # in error.details (ModelNotFound, NoMatchingArtifactsFoundFromJob...): keep those on the same line.
        for detail in getattr(error, "details", None) or []:
            detail_message = str(getattr(detail, "message", "") or "")
            if detail_message and detail_message not in text:
                text += f" ({getattr(detail, 'code', None) or 'detail'}: {detail_message})"
    # azure-ai-ml colours its reformatted schema errors for terminals.
    text = _ANSI.sub("", text)
    return text.strip() or exc.__class__.__name__


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.lower().startswith("message:"):
            return line.split(":", 1)[1].strip()[:500]
    # Multi-line SDK messages (schema errors) say what is wrong after a heading: keep a few lines.
    useful = [line for line in lines if not line.lower().startswith("code:")]
    return " ".join(useful[:6])[:500] if useful else text[:500]


def _is_quota(code: str | None, exc: BaseException, text: str) -> bool:
    codes = {c.lower() for c in [code or "", *_detail_codes(exc)]}
    return bool(codes & QUOTA_CODES) or "quota" in text.lower()


def _is_probe(code: str | None, text: str) -> bool:
    lowered = text.lower()
    return (code or "").lower() in PROBE_CODES or "liveness probe" in lowered or "readiness probe" in lowered


def _retry_after(exc: BaseException) -> float | None:
    """Strictly private: the ``Retry-After`` of an HTTP error, in seconds (delta-seconds or an HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        with contextlib.suppress(ValueError):
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
