"""map_azure_errors on real azure-core / azure-ai-ml exceptions (no client involved)."""

from __future__ import annotations

import pytest
from azure.ai.ml.exceptions import ErrorTarget, ValidationException
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError

from ftkit.backends.azureml.errors import map_azure_errors
from ftkit.exceptions import (
    AuthError,
    BackendError,
    ConflictError,
    DeploymentError,
    NotFoundError,
    ProbeFailedError,
    QuotaError,
    TransientBackendError,
    ValidationError,
)
from ftkit.testing._http import make_response


def http_error(status: int, code: str = "Err", message: str = "boom", headers: dict[str, str] | None = None):
    from azure.core.pipeline.transport import HttpRequest

    request = HttpRequest("GET", "https://management.azure.com/x")
    response = make_response(request, status, {"error": {"code": code, "message": message}}, headers)
    return HttpResponseError(response=response)


def mapped(exc: BaseException, **kwargs) -> BaseException:
    with pytest.raises(Exception) as info, map_azure_errors("op", **kwargs):
        raise exc
    assert info.value.__cause__ is exc or info.value is exc
    return info.value


class TestMapping:
    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_transient_status(self, status: int) -> None:
        """Retryable statuses become TransientBackendError."""
        assert isinstance(mapped(http_error(status)), TransientBackendError)

    def test_retry_after_seconds(self) -> None:
        """Retry-After is carried in seconds."""
        err = mapped(http_error(429, headers={"Retry-After": "12"}))
        assert isinstance(err, TransientBackendError)
        assert err.retry_after == 12

    def test_retry_after_http_date(self) -> None:
        """An HTTP-date Retry-After is understood (and never negative)."""
        err = mapped(http_error(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
        assert isinstance(err, TransientBackendError)
        assert err.retry_after == 0

    @pytest.mark.parametrize("exc", [ServiceRequestError("reset"), ServiceResponseError("dropped")])
    def test_connection_errors(self, exc: Exception) -> None:
        """Connection failures are transient."""
        assert isinstance(mapped(exc), TransientBackendError)

    def test_polling_is_never_transient(self) -> None:
        """A 503 while polling an LRO is terminal, and a DeploymentError when an endpoint is concerned."""
        err = mapped(http_error(503), polling=True, endpoint="ep")
        assert type(err) is DeploymentError
        assert not isinstance(mapped(http_error(503), polling=True), TransientBackendError)

    @pytest.mark.parametrize(
        ("exc", "kind"),
        [
            (ClientAuthenticationError("no"), AuthError),
            (CredentialUnavailableError("no az login"), AuthError),
            (http_error(403), AuthError),
            (ResourceNotFoundError("gone"), NotFoundError),
            (http_error(404), NotFoundError),
            (ResourceExistsError("there"), ConflictError),
            (http_error(409), ConflictError),
            (http_error(400, "OutOfQuota", "Not enough quota"), QuotaError),
            (http_error(400, "BadRequest", "InferencingClientCreateDeploymentFailed: not enough quota"), QuotaError),
            (
                http_error(200, "ResourceNotReady", "User container has crashed: Liveness probe failed"),
                ProbeFailedError,
            ),
            (http_error(400, "BadRequest", "bad"), BackendError),
        ],
    )
    def test_kinds(self, exc: Exception, kind: type) -> None:
        """Each SDK error maps to its most specific ftkit error."""
        err = mapped(exc, endpoint="ep")
        assert type(err) is kind

    def test_quota_wins_over_polling(self) -> None:
        """OutOfQuota while polling is a QuotaError (what to do differs from other LRO failures)."""
        assert isinstance(mapped(http_error(200, "OutOfQuota", "quota"), polling=True, endpoint="e"), QuotaError)

    def test_registry_does_not_exist(self) -> None:
        """azure-ai-ml's ValidationException for a missing registry asset is a NotFoundError."""
        exc = ValidationException(
            message="Asset X does not exist in registry azureml",
            no_personal_data_message="x",
            target=ErrorTarget.MODEL,
        )
        assert isinstance(mapped(exc), NotFoundError)

    def test_other_validation(self) -> None:
        """Other client-side validation is a ValidationError, never retried."""
        exc = ValidationException(message="bad name", no_personal_data_message="x", target=ErrorTarget.MODEL)
        assert isinstance(mapped(exc), ValidationError)

    def test_non_azure_passes_through(self) -> None:
        """Non-Azure exceptions are not ftkit's to translate."""
        with pytest.raises(KeyError), map_azure_errors("op"):
            raise KeyError("k")
