"""multipart/related both ways and Accept parsing, for DICOMweb: parts split anywhere across
chunks (down to one byte) come out whole; what the writer frames, the reader takes back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.api.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    Part,
    PartHeaders,
    parse_accept,
    write_parts,
)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for n in range(0, len(data), size):
        yield data[n : n + size]


async def read_all(body: AsyncIterator[bytes], boundary: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    async def sink(headers: PartHeaders, chunks: AsyncIterator[bytes]) -> None:
        out.append((headers.content_type, b"".join([c async for c in chunks])))

    await MultipartReader(body, boundary).parts(sink)
    return out


BODIES = [b"", b"\r\n--x", b"--b0undary", b"\x00" * 5000 + b"\r\n--" + b"\xff" * 3]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
async def test_what_the_writer_frames_the_reader_takes_back(chunk: int) -> None:
    boundary = "b0undary-1234"

    async def parts() -> AsyncIterator[Part]:
        for n, body in enumerate(BODIES):
            yield Part(f"application/dicom; n={n}", chunked(body, 3))

    framed = b"".join([c async for c in write_parts(parts(), boundary)])
    got = await read_all(chunked(framed, chunk), boundary)
    assert got == [(f"application/dicom; n={n}", body) for n, body in enumerate(BODIES)]


async def test_a_sink_that_stops_early_does_not_lose_the_next_part() -> None:
    body = (
        b"--b\r\nContent-Type: a\r\n\r\n"
        + b"x" * 100
        + b"\r\n--b\r\nContent-Type: c\r\n\r\nyz\r\n--b--"
    )
    seen: list[bytes] = []

    async def sink(headers: PartHeaders, chunks: AsyncIterator[bytes]) -> None:
        if headers.content_type == "c":
            seen.append(b"".join([c async for c in chunks]))

    assert await MultipartReader(chunked(body, 5), "b").parts(sink) == 2
    assert seen == [b"yz"]


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary at all",
        b"--b\r\nContent-Type: a\r\n\r\nnever closed",
        b"--b\r\n" + b"h" * 20000,
    ],
)
async def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MultipartError):
        await read_all(chunked(body, 1000), "b")


def test_accept_is_parsed_with_quoted_parameters_and_q() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        "multipart/related; type=application/octet-stream, application/dicom+json"
    )
    assert [r.media_type for r in ranges] == [
        "multipart/related",
        "application/dicom+json",
        "multipart/related",
    ]
    assert ranges[0].params == {"type": "application/octet-stream"}
    assert ranges[2].params == {"type": "application/dicom", "transfer-syntax": "*"}
    assert parse_accept(None)[0].matches("image/jpeg")
    assert parse_accept("image/*")[0].matches("image/jpeg")
