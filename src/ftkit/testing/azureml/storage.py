"""The workspace's default blob datastore, and the hook that routes azure-storage-blob to the fake.

azure-ai-ml uploads local inputs (``Input(path="./train.jsonl")``, local model folders) with its own
``BlobServiceClient(account_url, credential)``, built without the MLClient's transport, for
``https://<account>.blob.core.windows.net`` (the URL is fixed by the cloud's storage suffix). A loopback HTTP
server cannot be reached at that https host without DNS and TLS tricks, so the fake routes the storage
client's pipeline instead: :func:`install_storage_hook` wraps azure-storage-blob's ``_create_pipeline`` so a
client for a fake's account (whose host does not exist anywhere) gets that fake's transport. Clients of any
other account are left untouched. The blob service answers what azure-ai-ml's upload uses: blob properties
(the hash-based "already uploaded" check), single-shot and block uploads, metadata (the upload
confirmation), listing and download.

Strictly private; use :class:`ftkit.testing.FakeAzureML` (``fake.blobs`` holds the uploaded bytes).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

import attrs

from .._http import RecordedRequest
from .base import FakeBase, Reply, request_bytes

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = ["StorageRoutes", "install_storage_hook"]

_FAKES: MutableMapping[str, FakeBase] = weakref.WeakValueDictionary()
_HOOK_LOCK = threading.Lock()
_HOOKED = False


@attrs.define
class Blob:
    """Strictly private: one stored blob."""

    data: bytes
    metadata: dict[str, str] = attrs.field(factory=dict)
    etag: str = ""


def install_storage_hook(fake: FakeBase, account: str) -> None:
    """Route azure-storage-blob clients of ``account`` to ``fake``'s transport (installed once per process)."""
    global _HOOKED
    _FAKES[f"{account}.blob.core.windows.net".lower()] = fake
    with _HOOK_LOCK:
        if _HOOKED:
            return
        try:
            from azure.storage.blob._shared import base_client
        except ImportError:  # azure-storage-blob absent: azure-ai-ml cannot upload anyway
            return
        original = getattr(base_client.StorageAccountHostsMixin, "_create_pipeline", None)
        if original is None:  # a future azure-storage-blob: say so rather than let uploads go to the network
            import warnings

            warnings.warn(
                "FakeAzureML cannot route this azure-storage-blob version's uploads; pass fake.upload as the "
                "uploader or use azureml:// inputs",
                RuntimeWarning,
                stacklevel=3,
            )
            return

        def _create_pipeline(self: Any, credential: Any = None, **kwargs: Any) -> Any:
            host = str((getattr(self, "_hosts", None) or {}).get("primary", "")).split("/")[0].lower()
            target = _FAKES.get(host)
            if target is not None and not kwargs.get("transport") and not kwargs.get("_pipeline"):
                kwargs["transport"] = target.transport
            return original(self, credential, **kwargs)

        base_client.StorageAccountHostsMixin._create_pipeline = _create_pipeline  # type: ignore[method-assign]
        _HOOKED = True


class StorageRoutes(FakeBase):
    """Strictly private: the blob service of the workspace's storage account."""

    storage_account: str
    _blobs: dict[str, Blob]
    _blocks: dict[str, dict[str, bytes]]
    _containers: set[str]  # the code-snapshot containers handed out by startPendingUpload

    @property
    def blobs(self) -> dict[str, bytes]:
        """The uploaded bytes, by ``azureml://datastores/workspaceblobstore/paths/<blob>`` URI."""
        return {f"azureml://datastores/workspaceblobstore/paths/{k}": v.data for k, v in self._blobs.items()}

    def _datastore_body(self) -> dict[str, Any]:
        return {
            "name": "workspaceblobstore",
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": self.storage_account,
                "containerName": "azureml-blobstore",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "None"},
            },
        }

    def _start_pending_upload(self, version_key: str) -> Reply:
        """``codes/{name}/versions/{v}/startPendingUpload``: a blob (with a SAS) for azure-ai-ml to upload into.

        azure-ai-ml asks for it before uploading a code folder (``command(code=...)``, ``CodeConfiguration``)
        and reads ``blobReferenceForConsumption.blobUri`` and ``.credential.sasUri``
        (azure/ai/ml/_utils/_asset_utils.py, ``get_storage_info_for_non_registry_asset``). The blob lies in the
        fake's own storage account, so the upload is routed here like any other.
        """
        name, _, version = version_key.rsplit("/", 3)[-3:]
        # A container of its own per code version, as Azure hands out (azure-ai-ml treats the URI as a
        # container URL and uploads the folder's files under it).
        container = "snapshot-" + hashlib.sha256(f"{name}/{version}".encode()).hexdigest()[:24]
        self._containers.add(container)
        blob_uri = f"https://{self.storage_account}.blob.core.windows.net/{container}"
        return (
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": blob_uri,
                    "storageAccountArmId": f"/subscriptions/{self.subscription_id}/resourceGroups/"
                    f"{self.resource_group}/providers/Microsoft.Storage/storageAccounts/{self.storage_account}",
                    "credential": {"credentialType": "SAS", "sasUri": f"{blob_uri}?sv=2021-08-06&sig=fake"},
                },
                "pendingUploadId": uuid.uuid4().hex,
                "pendingUploadType": "TemporaryBlobReference",
            },
            {},
        )

    def _storage(self, record: RecordedRequest, request: Any) -> Reply:
        container, _, blob = unquote(record.path.lstrip("/")).partition("/")
        base = ""  # the default container's blobs are keyed by their name; others' by "container/name"
        if container != "azureml-blobstore":
            if container not in self._containers:
                return _storage_error(404, "ContainerNotFound", "The specified container does not exist.")
            base = f"{container}/"
        comp = record.query.get("comp", "")
        method = record.method
        if not blob:
            if comp == "list":
                return self._list_blobs(record, base)
            return 200, None, {"ETag": '"0x1"', "Last-Modified": _HTTP_DATE}
        blob = base + blob
        stored = self._blobs.get(blob)
        if method == "PUT" and comp == "block":
            self._blocks.setdefault(blob, {})[record.query["blockid"]] = request_bytes(request)
            return 201, None, {"Content-MD5": ""}
        if method == "PUT" and comp == "blocklist":
            staged = self._blocks.pop(blob, {})
            ids = _block_ids(request_bytes(request))
            return self._store(blob, b"".join(staged.get(i, b"") for i in ids), request)
        if method == "PUT" and comp == "metadata":
            if stored is None:
                return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
            stored.metadata = _metadata(request)
            return 200, None, self._blob_headers(stored)
        if method == "PUT":
            return self._store(blob, request_bytes(request), request)
        if stored is None:
            return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
        if method == "HEAD":
            return 200, None, self._blob_headers(stored)
        if method == "GET":
            return 200, stored.data, {**self._blob_headers(stored), "Content-Type": "application/octet-stream"}
        if method == "DELETE":
            del self._blobs[blob]
            return 202, None, {}
        return _storage_error(405, "UnsupportedHttpVerb", f"{method} is not supported here.")

    def _store(self, blob: str, data: bytes, request: Any) -> Reply:
        etag = '"0x' + hashlib.sha256(data).hexdigest()[:16].upper() + '"'
        self._blobs[blob] = Blob(data, _metadata(request), etag)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        headers = {
            "ETag": etag,
            "Last-Modified": _HTTP_DATE,
            "Content-MD5": md5,
            "x-ms-request-server-encrypted": "true",
        }
        return 201, None, headers

    def _blob_headers(self, blob: Blob) -> dict[str, str]:
        headers = {
            "ETag": blob.etag,
            "Last-Modified": _HTTP_DATE,
            "x-ms-creation-time": _HTTP_DATE,
            "x-ms-blob-type": "BlockBlob",
            "Content-Length": str(len(blob.data)),
            "Accept-Ranges": "bytes",
        }
        headers.update({f"x-ms-meta-{k}": v for k, v in blob.metadata.items()})
        return headers

    def _list_blobs(self, record: RecordedRequest, base: str = "") -> Reply:
        prefix = base + record.query.get("prefix", "")
        delimiter = record.query.get("delimiter", "")
        items: list[str] = []
        prefixes: set[str] = set()
        for name in sorted(self._blobs):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add((prefix + rest.split(delimiter, 1)[0] + delimiter)[len(base) :])
                continue
            blob = self._blobs[name]
            meta = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in blob.metadata.items())
            items.append(
                f"<Blob><Name>{escape(name[len(base) :])}</Name><Properties><Last-Modified>{_HTTP_DATE}</Last-Modified>"
                f"<Etag>{blob.etag}</Etag><Content-Length>{len(blob.data)}</Content-Length>"
                f"<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType>"
                f"</Properties><Metadata>{meta}</Metadata></Blob>"
            )
        items += [f"<BlobPrefix><Name>{escape(p)}</Name></BlobPrefix>" for p in sorted(prefixes)]
        xml = (
            '<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="azureml-blobstore">'
            f"<Prefix>{escape(prefix[len(base) :])}</Prefix><Blobs>{''.join(items)}</Blobs>"
            "<NextMarker /></EnumerationResults>"
        )
        return 200, xml.encode("utf-8"), {"Content-Type": "application/xml"}


_HTTP_DATE = "Wed, 01 Jan 2025 00:00:00 GMT"


def _metadata(request: Any) -> dict[str, str]:
    return {k.lower()[len("x-ms-meta-") :]: v for k, v in request.headers.items() if k.lower().startswith("x-ms-meta-")}


def _block_ids(xml: bytes) -> list[str]:
    import re

    return re.findall(r"<(?:Latest|Committed|Uncommitted)>([^<]+)</", xml.decode("utf-8"))


def _storage_error(status: int, code: str, message: str) -> Reply:
    # The blob service answers errors in XML with the code in x-ms-error-code (azure-storage-blob reads both).
    xml = (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>'
    )
    return status, xml.encode("utf-8"), {"x-ms-error-code": code, "Content-Type": "application/xml"}
