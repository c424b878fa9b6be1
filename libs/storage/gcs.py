"""Google Cloud Storage (`gs://bucket/prefix`): verified, never-overwriting, retried uploads.

How an object reaches its final name without ever being half-written or unverified there:
- Up to `MULTIPART_MAX` bytes: one multipart request that carries the CRC32C computed here;
  GCS checks it before the object exists, and `ifGenerationMatch=0` creates it only if the
  name is free. Creation is atomic, so a failed request leaves nothing behind.
- Larger files: a resumable upload (chunked, each chunk retried) to a temporary name under
  `<prefix>/.incoming/`, whose CRC32C (checked by the client) and MD5 (checked here) must
  match the local file; then a server-side rewrite to the final name with
  `ifGenerationMatch=0`, and the temporary object is deleted. The client only checks a
  resumable upload's checksum after the object is finalised, so finalising under the final
  name could expose a corrupt object for a moment; the temporary name never can.
Generation preconditions alone would not cover that window, and compose is not needed for a
single source; rewrite also copies objects of any size within a bucket.

The SHA-256 is kept in the object's custom metadata (`sha256`), so an idempotent re-put
compares hashes without downloading the object. Every call is blocking (the official client),
so each runs in a thread. Transient errors (429, 5xx, connection resets) are retried with
exponential backoff by `RETRY`; what still fails that way is raised as `StorageUnavailable`
(an outage: the consumer holds and retries it without limit, the service not ready), and only
the rest reaches the consumer's bounded retries and the DLQ.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import google_crc32c
import requests
from google.api_core import exceptions as gexc
from google.auth.exceptions import TransportError
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from libs.contracts.errors import PermanentError, StorageUnavailable
from libs.storage.base import StoredObject, check_key, register_backend

CHUNK = 1 << 20
MULTIPART_MAX = 8 << 20  # the client's own single-request limit
RESUMABLE_CHUNK = 16 << 20  # a multiple of 256 KiB, as GCS requires
RETRY = DEFAULT_RETRY.with_delay(initial=0.2, maximum=10.0, multiplier=2.0).with_timeout(120.0)
INCOMING = ".incoming"
# What GCS (or the way to it) answers when it is away or overloaded, not about the object.
TRANSIENT = (
    gexc.ServerError,  # 5xx
    gexc.TooManyRequests,
    gexc.RetryError,  # RETRY's deadline passed on one of the above
    requests.exceptions.ConnectionError,  # refused, reset, DNS
    requests.exceptions.Timeout,
    TransportError,  # google-auth could not reach its token endpoint
    ConnectionError,
)


@contextlib.contextmanager
def outage_on_transient(url: str) -> Iterator[None]:
    """Re-raise a transient failure as `StorageUnavailable` (see the module docstring)."""
    try:
        yield
    except TRANSIENT as exc:
        if isinstance(exc, StorageUnavailable):
            raise
        raise StorageUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5_b64: str
    crc32c_b64: str
    size: int


def file_digests(path: Path) -> Digests:
    """SHA-256 (ours), MD5 and CRC32C (GCS's, base64 as in its metadata) in one pass."""
    sha, md5, crc = hashlib.sha256(), hashlib.md5(usedforsecurity=False), google_crc32c.Checksum()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Digests(
        sha.hexdigest(),
        base64.b64encode(md5.digest()).decode(),
        base64.b64encode(crc.digest()).decode(),
        size,
    )


def parse_gs_url(url: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parts = urlsplit(url)
    if parts.scheme != "gs" or not parts.netloc:
        raise ValueError(f"not a gs://bucket[/prefix] URL: {url!r}")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
    return parts.netloc, prefix


class GcsStore:
    def __init__(
        self,
        url: str,
        client: Any = None,
        resumable_chunk: int = RESUMABLE_CHUNK,
        retry_timeout: float = 120.0,
    ) -> None:
        self.bucket_name, self.prefix = parse_gs_url(url)
        self.url = f"gs://{self.bucket_name}" + (f"/{self.prefix}" if self.prefix else "")
        # Credentials come from GOOGLE_APPLICATION_CREDENTIALS (or the metadata server);
        # STORAGE_EMULATOR_HOST points the client at an emulator with anonymous credentials.
        self._client = client or storage.Client()
        self._bucket = self._client.bucket(self.bucket_name)
        if resumable_chunk % (256 * 1024):
            raise ValueError("resumable_chunk must be a multiple of 256 KiB")
        self._resumable_chunk = resumable_chunk
        self._retry = RETRY.with_timeout(retry_timeout)

    def name_for(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url_for(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{self.name_for(key)}"

    async def put_file(self, key: str, source: Path, *, expected_sha256: str) -> StoredObject:
        with outage_on_transient(self.url):
            return await asyncio.to_thread(self._put_file, key, source, expected_sha256)

    def _put_file(self, key: str, source: Path, expected: str) -> StoredObject:
        name = self.name_for(key)
        digests = file_digests(source)
        if digests.sha256 != expected:
            raise PermanentError(
                f"source changed since it was extracted: SHA-256 {digests.sha256[:12]}… "
                f"!= {expected[:12]}…"
            )
        existing = self._bucket.get_blob(name, retry=self._retry)
        if existing is not None:
            return self._same_or_refuse(key, existing, digests)
        try:
            if digests.size <= MULTIPART_MAX:
                self._upload_multipart(name, source, digests)
            else:
                self._upload_via_incoming(name, source, digests)
        except gexc.PreconditionFailed:  # another writer created it first
            return self._same_or_refuse(
                key, self._bucket.get_blob(name, retry=self._retry), digests
            )
        return StoredObject(self.url_for(key), digests.size, digests.sha256, created=True)

    def _same_or_refuse(self, key: str, blob: Any, digests: Digests) -> StoredObject:
        if blob is None:
            raise RuntimeError(f"{key} vanished while it was being compared")
        theirs = (blob.metadata or {}).get("sha256")
        same = theirs == digests.sha256 if theirs else blob.md5_hash == digests.md5_b64
        if not same or blob.size != digests.size:
            raise PermanentError(f"refusing to overwrite {key}: it holds different content")
        return StoredObject(self.url_for(key), digests.size, digests.sha256, created=False)

    def _new_blob(self, name: str, digests: Digests, chunk_size: int | None = None) -> Any:
        blob = self._bucket.blob(name, chunk_size=chunk_size)
        blob.metadata = {"sha256": digests.sha256}
        blob.content_type = "application/dicom"
        return blob

    def _upload_multipart(self, name: str, source: Path, digests: Digests) -> None:
        blob = self._new_blob(name, digests)
        with source.open("rb") as f:
            blob.upload_from_file(
                f, size=digests.size, checksum="crc32c", if_generation_match=0, retry=self._retry
            )

    def _upload_via_incoming(self, name: str, source: Path, digests: Digests) -> None:
        tmp_name = "/".join(p for p in (self.prefix, INCOMING, uuid.uuid4().hex) if p)
        tmp = self._new_blob(tmp_name, digests, self._resumable_chunk)
        try:
            with source.open("rb") as f:
                # A fresh name, so the upload is idempotent and every chunk may be retried.
                tmp.upload_from_file(
                    f,
                    size=digests.size,
                    checksum="crc32c",
                    if_generation_match=0,
                    retry=self._retry,
                )
            if tmp.md5_hash and tmp.md5_hash != digests.md5_b64:
                raise RuntimeError(f"MD5 of the uploaded {name} differs from the local file")
            final = self._bucket.blob(name)
            token, _, _ = final.rewrite(tmp, if_generation_match=0, retry=self._retry)
            while token is not None:
                token, _, _ = final.rewrite(
                    tmp, token=token, if_generation_match=0, retry=self._retry
                )
        finally:
            with contextlib.suppress(gexc.NotFound):
                tmp.delete(retry=self._retry)

    async def size(self, key: str) -> int | None:
        with outage_on_transient(self.url):
            blob = await asyncio.to_thread(
                self._bucket.get_blob, self.name_for(key), retry=self._retry
            )
        return None if blob is None else int(blob.size)

    async def read(self, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        # Ranged reads, `chunk_size` at a time; objects are never replaced, so they agree.
        with outage_on_transient(self.url):
            blob = await asyncio.to_thread(
                self._bucket.get_blob, self.name_for(key), retry=self._retry
            )
            if blob is None:
                raise FileNotFoundError(self.url_for(key))
            reader = await asyncio.to_thread(
                blob.open, "rb", chunk_size=chunk_size, retry=self._retry
            )
            try:
                while chunk := await asyncio.to_thread(reader.read, chunk_size):
                    yield chunk
            finally:
                reader.close()

    async def keys(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[str]:
        # GCS lists names in ascending order; `start_offset` is inclusive, so the checkpoint
        # itself is dropped below. Pages are fetched one at a time (bounded memory).
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._bucket.list_blobs(
            prefix=base + prefix,
            start_offset=base + start_after if start_after else None,
            retry=self._retry,
        ).pages
        while True:
            with outage_on_transient(self.url):
                page = await asyncio.to_thread(lambda: list(next(pages, ())))
            if not page:
                return
            for blob in page:
                key = blob.name[len(base) :]
                if key > start_after and not key.startswith(INCOMING + "/"):
                    yield key


register_backend("gs", GcsStore)
