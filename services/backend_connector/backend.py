"""The backend's REST API, as the connector uses it (docs/configuration.md#backend-connector):

    GET  {url}/patients?patient_id=ID       -> 200 [{"id": ..., "patient_id": ...}, ...]
    POST {url}/patients  {patient_id, name, sex, birth_date}
                                            -> 201 {"id": ...}; 409 when it exists
    POST {url}/patients/{id}/images  (JPEG or DICOM bytes; Idempotency-Key: SOPInstanceUID)
                                            -> 201; 409 when it has that image

Every request goes through the `Deliverer` shared with the index-publisher
(libs/http/delivery.py): bounded retries with backoff and `Retry-After`, an outage (nothing
accepted meanwhile) held rather than dead-lettered, a 4xx other than 401/403/408/409/429 a
rejection of the study. A 409 is the backend's uniqueness answering a request it already
applied (our record was lost between its success and the write, or a retry after an answer
that never arrived): taken as done.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from libs.contracts.errors import PermanentError
from libs.contracts.events import PatientAttrs
from libs.db.index import parse_da
from libs.http.delivery import (
    Answer,
    Backoff,
    Deliverer,
    DeliveryMetrics,
    ReceiverHealth,
    Sleep,
    parse_retry_after,
)
from libs.http.tls import tls_verify
from services.backend_connector.config import ConnectorSettings

USER_AGENT = "dicomflow-backend-connector/1"
MAX_JSON = 1 << 20
EXISTS = 409
CHUNK = 1 << 20
Body = bytes | Path


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


class Backend:
    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        health: ReceiverHealth,
        metrics: DeliveryMetrics,
        sleep: Sleep,
    ) -> None:
        self._base = settings.require_url()
        logging.getLogger("httpx").setLevel(logging.WARNING)
        headers = {"User-Agent": USER_AGENT}
        if settings.api_key is not None:
            headers[settings.auth_header] = settings.api_key.get_secret_value()
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_seconds),
            verify=tls_verify(settings.ca_bundle),
            follow_redirects=False,
        )
        self._options: dict[str, Any] = {
            "max_attempts": settings.max_attempts,
            "backoff": Backoff(
                settings.backoff_seconds,
                settings.max_backoff_seconds,
                settings.retry_after_max_seconds,
            ),
            "health": health,
            "metrics": metrics,
            "sleep": sleep,
        }

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(
        self, method: str, path: str, body: Body | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None) of the accepting answer; 409 is returned as is."""
        parsed: list[Any] = [None]
        statuses: list[int] = [0]

        async def send(_: bytes, extra: dict[str, str]) -> Answer:
            content: bytes | AsyncIterator[bytes] | None = None
            if isinstance(body, Path):  # streamed from the file, again on each attempt
                size = (await asyncio.to_thread(body.stat)).st_size
                extra = {**extra, "Content-Length": str(size)}
                content = _chunks(body)
            else:
                content = body
            try:
                r = await self._client.request(
                    method, f"{self._base}{path}", content=content, headers=extra
                )
            except httpx.TransportError as exc:
                return Answer(None, f"{type(exc).__name__}: {exc}".rstrip(": "))
            statuses[0] = r.status_code
            text = r.text[:MAX_JSON]
            if r.status_code == EXISTS:  # uniqueness: already applied
                return Answer(200, "exists")
            if 200 <= r.status_code < 300 and text:
                try:
                    parsed[0] = json.loads(text)
                except ValueError:
                    parsed[0] = None
            excerpt = " ".join(text[:1000].split())
            return Answer(r.status_code, excerpt, parse_retry_after(r.headers.get("Retry-After")))

        await Deliverer(send, **self._options).deliver(b"", headers)
        return statuses[0], parsed[0]

    async def find_patient(self, patient_id: str) -> str | None:
        _, found = await self._call("GET", f"/patients?patient_id={quote(patient_id)}", None, {})
        for item in found if isinstance(found, list) else []:
            if isinstance(item, dict) and item.get("patient_id") == patient_id and "id" in item:
                return str(item["id"])
        return None

    async def create_patient(self, patient: PatientAttrs, correlation_id: str) -> str | None:
        """The new patient's id; None when the backend already has one with this PatientID."""
        birth = parse_da(patient.birth_date)
        body = {
            "patient_id": patient.patient_id,
            "name": patient.patient_name,
            "sex": patient.sex,
            "birth_date": birth.isoformat() if birth else None,
        }
        status, created = await self._call(
            "POST",
            "/patients",
            json.dumps(body, ensure_ascii=False).encode(),
            {"Content-Type": "application/json", "X-Correlation-Id": correlation_id},
        )
        if status == EXISTS:
            return None
        if not isinstance(created, dict) or "id" not in created:
            raise PermanentError(f"the backend created a patient without an id: {created!r}")
        return str(created["id"])

    async def upload(
        self,
        backend_id: str,
        study_uid: str,
        sop_instance_uid: str,
        body: Body,
        media_type: str,
        correlation_id: str,
    ) -> None:
        await self._call(
            "POST",
            f"/patients/{quote(backend_id, safe='')}/images",
            body,
            {
                "Content-Type": media_type,
                "Idempotency-Key": sop_instance_uid,
                "X-SOP-Instance-UID": sop_instance_uid,
                "X-Study-Instance-UID": study_uid,
                "X-Correlation-Id": correlation_id,
            },
        )
