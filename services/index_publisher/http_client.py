"""The HTTP side: one POST per attempt with httpx, its answer reduced to status, a body
excerpt and `Retry-After`. Transport failures (refused connection, TLS verification, timeouts)
become an answer without a status, so the retry policy sees every failure the same way."""

from __future__ import annotations

import logging

import httpx

from libs.http.delivery import Answer, parse_retry_after
from libs.http.tls import tls_verify
from services.index_publisher.config import IndexPublisherSettings

EXCERPT_BYTES = 1000
USER_AGENT = "dicomflow-index-publisher/1"


class CentralIndexClient:
    def __init__(self, settings: IndexPublisherSettings) -> None:
        self._url = settings.require_target()
        # httpx logs every request at INFO; ours are counted in metrics and logged per study.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        if settings.api_key is not None:
            headers[settings.auth_header] = settings.api_key.get_secret_value()
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_seconds),
            verify=tls_verify(settings.ca_bundle),
            follow_redirects=False,  # a redirect is a misconfigured URL, reported as such
        )

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            async with self._client.stream("POST", self._url, content=body, headers=headers) as r:
                excerpt = await _excerpt(r)
                return Answer(
                    r.status_code, excerpt, parse_retry_after(r.headers.get("Retry-After"))
                )
        except httpx.TransportError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}".rstrip(": "))

    async def close(self) -> None:
        await self._client.aclose()


async def _excerpt(response: httpx.Response) -> str:
    """The first EXCERPT_BYTES of the body, on one line: enough to say why, never a flood."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= EXCERPT_BYTES:
            break
    text = b"".join(chunks)[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    return " ".join(text.split())
