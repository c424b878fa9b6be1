"""multipart/related (RFC 2387) both ways, in constant memory, and Accept negotiation.

`write_parts` frames parts whose bodies are async byte streams (WADO-RS answers);
`MultipartReader` splits a request body into parts as it arrives, handing each part's
bytes on in chunks, never a whole part (STOW-RS requests). `parse_accept` reads an Accept
header into media ranges with their parameters (PS3.18 §8.7.3: type, transfer-syntax).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

CRLF = b"\r\n"
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class MediaRange:
    """One Accept entry, e.g. multipart/related; type="application/dicom"; q=0.9."""

    media_type: str  # lower case, e.g. "multipart/related" or "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        if self.media_type in ("*/*", media_type):
            return True
        major = media_type.split("/")[0]
        return self.media_type == f"{major}/*"


def _split_params(text: str) -> list[str]:
    """Split on `;` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_media_type(text: str) -> MediaRange:
    head, *rest = _split_params(text)
    params: dict[str, str] = {}
    q = 1.0
    for item in rest:
        name, _, value = item.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        elif name:
            params[name] = value
    return MediaRange(head.strip().lower(), params, q)


def _split_accept(header: str) -> list[str]:
    """Split on `,` outside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i for i in (x.strip() for x in items) if i]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges, most preferred first; no header means anything (`*/*`)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(item) for item in _split_accept(header)]
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


def new_boundary() -> str:
    return f"dicomflow-{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Part:
    content_type: str
    body: AsyncIterator[bytes]
    location: str | None = None


async def write_parts(parts: AsyncIterator[Part], boundary: str) -> AsyncIterator[bytes]:
    """The multipart body: each part's headers, then its body as it streams."""
    async for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.location:
            head += f"Content-Location: {part.location}\r\n"
        yield (head + "\r\n").encode()
        async for chunk in part.body:
            yield chunk
        yield CRLF
    yield f"--{boundary}--\r\n".encode()


class MultipartError(ValueError):
    """The body is not the multipart it claims to be: the reason is for the caller."""


@dataclass
class PartHeaders:
    content_type: str
    raw: dict[str, str]


PartSink = Callable[[PartHeaders, AsyncIterator[bytes]], Awaitable[None]]


class MultipartReader:
    """Feeds each part of a multipart body to `sink(headers, chunks)`, one part at a time;
    the sink must consume the chunks. Memory: a chunk plus the delimiter's length."""

    def __init__(self, body: AsyncIterator[bytes], boundary: str) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("the Content-Type has no usable boundary")
        self._body = body
        self._buf = bytearray()
        self._eof = False
        self._first = b"--" + boundary.encode()
        self._delim = CRLF + self._first

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def parts(self, sink: PartSink) -> int:
        """Reads the whole body; returns the number of parts."""
        while (start := self._buf.find(self._first)) < 0 or len(self._buf) < start + len(
            self._first
        ) + 2:
            if not await self._fill():
                raise MultipartError("no multipart boundary in the body")
        del self._buf[: start + len(self._first)]
        count = 0
        while True:
            while len(self._buf) < 2 and await self._fill():
                pass
            if self._buf[:2] == b"--":
                return count  # the close delimiter
            headers = await self._headers()
            chunks = self._body_chunks()
            await sink(headers, chunks)
            async for _ in chunks:  # what the sink left (a refused part) is skipped
                pass
            count += 1

    async def _headers(self) -> PartHeaders:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES or not await self._fill():
                raise MultipartError("a part's headers are missing or too long")
        block = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        raw: dict[str, str] = {}
        for line in block.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                raw[name.strip().lower()] = value.strip()
        return PartHeaders(raw.get("content-type", ""), raw)

    async def _body_chunks(self) -> AsyncIterator[bytes]:
        keep = len(self._delim)
        while True:
            found = self._buf.find(self._delim)
            if found >= 0:
                if found:
                    yield bytes(self._buf[:found])
                del self._buf[: found + len(self._delim)]
                return
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                yield bytes(self._buf[:cut])
                del self._buf[:cut]
            if not await self._fill():
                raise MultipartError("the body ends inside a part (no closing boundary)")
