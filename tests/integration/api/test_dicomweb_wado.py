"""WADO-RS over a real index and local storage: instances byte for byte as stored, metadata
equal to what pydicom reads, frames as stored and decoded (JPEG-LS, JPEG 2000, RLE, big
endian, JPEG baseline), rendered JPEGs, bulk data, Accept negotiation."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tempfile
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import get_frame

from libs.runtime.probes import Readiness
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.dicomweb import DicomWebPorts
from services.api.previews import PreviewSource
from tests.integration.api.dicomweb_app import *  # noqa: F403 - the DICOMweb fixtures
from tests.integration.api.dicomweb_seed import Seeded
from tests.polling import most_files

pytestmark = pytest.mark.usefixtures("seeded")
DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAMES_RAW = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts, by plain splitting on the boundary (independent of the server's code)."""
    assert response.status_code == 200, response.text
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related")
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
    chunks = response.content.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        assert body.endswith(b"\r\n")
        parts.append((headers, body[:-2]))
    return parts


def url(f: Seeded, tail: str = "") -> str:
    return f"/dicom-web/studies/{f.study}/series/{f.series}/instances/{f.sop}{tail}"


def by_name(seeded: list[Seeded], name: str) -> Seeded:
    return next(f for f in seeded if f.path.name == name)


async def get(client: httpx.AsyncClient, keys: Any, path: str, accept: str) -> httpx.Response:
    return await client.get(path, headers={**keys.headers("clinician"), "Accept": accept})


async def test_a_study_comes_back_byte_identical(client, keys, seeded) -> None:
    codec_study = [f for f in seeded if f.study == seeded[-1].study]
    parts = split_multipart(
        await get(client, keys, f"/dicom-web/studies/{codec_study[0].study}", DICOM_ALL)
    )
    got = sorted(hashlib.sha256(body).hexdigest() for _, body in parts)
    assert got == sorted(hashlib.sha256(f.path.read_bytes()).hexdigest() for f in codec_study)
    assert all(
        h["Content-Type"].startswith("application/dicom; transfer-syntax=") for h, _ in parts
    )


async def test_series_and_instance_retrieval_and_accept(client, keys, seeded) -> None:
    f = by_name(seeded, "MR_small_jpeg_ls_lossless.dcm")
    series = f"/dicom-web/studies/{f.study}/series/{f.series}"
    [(_, body)] = split_multipart(await get(client, keys, series, DICOM_ALL))
    assert body == f.path.read_bytes()
    [(_, body)] = split_multipart(await get(client, keys, url(f), "*/*"))
    assert body == f.path.read_bytes()
    stored = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    assert (await get(client, keys, url(f), stored)).status_code == 200
    other = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    assert (await get(client, keys, url(f), other)).status_code == 406
    # dicomweb-client's default Accept names no syntax: the stored bytes, in the stored
    # syntax, which the part names (the deviation of ADR 0033; PS3.18 would say EVRLE).
    default = 'multipart/related; type="application/dicom"'
    [(headers, body)] = split_multipart(await get(client, keys, url(f), default))
    assert body == f.path.read_bytes()
    assert headers["Content-Type"] == 'application/dicom; transfer-syntax="1.2.840.10008.1.2.4.80"'
    assert (await get(client, keys, url(f), "application/zip")).status_code == 406
    missing = url(f).replace(f.sop, "1.2.3.4")
    assert (await get(client, keys, missing, DICOM_ALL)).status_code == 404


async def test_metadata_is_what_pydicom_reads_with_absolute_bulk_uris(client, keys, seeded) -> None:
    ivanov = [f for f in seeded if f.series == seeded[0].series]
    response = await get(
        client,
        keys,
        f"/dicom-web/studies/{ivanov[0].study}/series/{ivanov[0].series}/metadata",
        "application/dicom+json",
    )
    assert (
        response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"
    )
    items = response.json()
    assert [i["00080018"]["Value"][0] for i in items] == [f.sop for f in ivanov]
    for item, f in zip(items, ivanov, strict=True):
        expected = dcmread(f.path).to_json_dict(1024, lambda e: "x")
        pixel = item.pop("7FE00010")
        expected.pop("7FE00010")
        assert item == expected
        assert pixel["BulkDataURI"] == f"http://api.test{url(f)}/bulkdata/7FE00010"
    study = await get(client, keys, f"/dicom-web/studies/{ivanov[0].study}/metadata", "*/*")
    assert len(study.json()) == 4


async def test_metadata_of_an_instance_indexed_before_headers_were_kept(
    client, keys, seeded, pool
) -> None:
    f = by_name(seeded, "CT_small.dcm")
    await pool.execute("UPDATE instances SET dicom_json = NULL WHERE sop_instance_uid = $1", f.sop)
    [item] = (await get(client, keys, url(f, "/metadata"), "application/dicom+json")).json()
    assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Codec^Files"}]}
    assert item["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "examples_ybr_color.dcm",
    ],
)
async def test_frames_as_stored_and_decoded(client, keys, seeded, name) -> None:
    f = by_name(seeded, name)
    ds = dcmread(f.path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    wanted = [1, count] if count > 1 else [1]
    frames = ",".join(map(str, wanted))
    stored = split_multipart(await get(client, keys, url(f, f"/frames/{frames}"), FRAMES_STORED))
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        assert [b for _, b in stored] == [
            get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in wanted
        ]
    else:
        size = len(ds.PixelData) // count
        assert [b for _, b in stored] == [ds.PixelData[(n - 1) * size : n * size] for n in wanted]
    decoded = split_multipart(await get(client, keys, url(f, f"/frames/{frames}"), FRAMES_RAW))
    reference = ds.pixel_array if count > 1 else ds.pixel_array[np.newaxis]
    for (headers, body), n in zip(decoded, wanted, strict=True):
        assert (
            headers["Content-Type"]
            == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        )
        expected = reference[n - 1]
        got = np.frombuffer(body, dtype=expected.dtype.newbyteorder("<")).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected)


async def test_frame_errors(client, keys, seeded) -> None:
    f = by_name(seeded, "MR_small.dcm")
    assert (await get(client, keys, url(f, "/frames/2"), FRAMES_STORED)).status_code == 404
    assert (await get(client, keys, url(f, "/frames/0"), FRAMES_STORED)).status_code == 400
    assert (await get(client, keys, url(f, "/frames/x"), FRAMES_STORED)).status_code == 400
    jls = by_name(seeded, "MR_small_jpeg_ls_lossless.dcm")
    image = 'multipart/related; type="image/jls"'
    [(headers, _)] = split_multipart(await get(client, keys, url(jls, "/frames/1"), image))
    assert headers["Content-Type"].startswith("image/jls")
    assert (
        await get(client, keys, url(jls, "/frames/1"), 'multipart/related; type="image/jp2"')
    ).status_code == 406


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"],
)
async def test_rendered_and_thumbnail(client, keys, seeded, name) -> None:
    f = by_name(seeded, name)
    ds = dcmread(f.path)
    plain = await get(client, keys, url(f, "/rendered"), "image/jpeg")
    assert plain.status_code == 200, plain.text
    image = Image.open(io.BytesIO(plain.content))
    assert image.size == (ds.Columns, ds.Rows) and image.format == "JPEG"
    windowed = await get(client, keys, url(f, "/frames/1/rendered?window=100,50,linear"), "image/*")
    assert windowed.status_code == 200 and windowed.content != plain.content
    thumb = await get(client, keys, url(f, "/thumbnail"), "*/*")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert (await get(client, keys, url(f, "/rendered"), "image/png")).status_code == 406
    assert (await get(client, keys, url(f, "/rendered?window=1"), "image/jpeg")).status_code == 400


async def test_bulkdata_from_the_metadata_uri(client, keys, seeded) -> None:
    f = by_name(seeded, "MR_small_RLE.dcm")
    [item] = (await get(client, keys, url(f, "/metadata"), "application/dicom+json")).json()
    uri = item["7FE00010"]["BulkDataURI"].removeprefix("http://api.test")
    [(_, body)] = split_multipart(await get(client, keys, uri, FRAMES_STORED))
    assert body == dcmread(f.path).PixelData
    assert (await get(client, keys, url(f, "/bulkdata/00100010x"), "*/*")).status_code == 400
    assert (await get(client, keys, url(f, "/bulkdata/00091234"), "*/*")).status_code == 404


async def test_retrieval_is_audited_and_needs_a_key(client, keys, seeded, audit_rows) -> None:
    f = by_name(seeded, "MR_small.dcm")
    assert (await client.get(url(f))).status_code == 401
    split_multipart(await get(client, keys, url(f), DICOM_ALL))
    rows = await audit_rows("dicomweb.retrieve")
    assert (rows[-1]["status_code"], rows[-1]["result_count"]) == (200, 1)
    assert json.dumps(rows[-1]["query"]) == "{}"


@pytest.mark.parametrize("path", ["/wado", "/dicom-web/wado"])
async def test_wado_uri_gives_the_file_or_a_jpeg(client, keys, seeded, audit_rows, path) -> None:
    f = by_name(seeded, "MR_small_jp2klossless.dcm")
    params = {"requestType": "WADO", "studyUID": f.study, "seriesUID": f.series, "objectUID": f.sop}
    headers = keys.headers("clinician")
    dicom = await client.get(
        path, params={**params, "contentType": "application/dicom"}, headers=headers
    )
    assert dicom.status_code == 200 and dicom.content == f.path.read_bytes()
    assert dicom.headers["content-type"] == "application/dicom"
    rows = await audit_rows("dicomweb.wado-uri")
    assert (rows[-1]["status_code"], rows[-1]["result_count"]) == (200, 1)
    jpeg = await client.get(
        path,
        params={**params, "windowCenter": "600", "windowWidth": "1200"},
        headers=headers,
    )
    assert jpeg.status_code == 200 and Image.open(io.BytesIO(jpeg.content)).size == (64, 64)
    bad = await client.get(path, params={**params, "requestType": "X"}, headers=headers)
    assert bad.status_code == 400
    assert (
        await client.get(path, params={**params, "objectUID": "1.x"}, headers=headers)
    ).status_code == 400
    assert (await client.get(path, params=params)).status_code == 401


@pytest.mark.parametrize("path", ["/wado", "/dicom-web/wado"])
@pytest.mark.parametrize(
    ("drop", "extra", "reason"),
    [
        ("studyUID", {}, "studyUID: Field required"),
        (None, {"frameNumber": "0"}, "frameNumber: Input should be greater than or equal to 1"),
        (None, {"windowCenter": "wide"}, "windowCenter: Input should be a valid number"),
    ],
)
async def test_wado_uri_bad_requests_are_400_with_a_reason(
    client, keys, seeded, audit_rows, path, drop, extra, reason
) -> None:
    """PS3.18 answers a malformed request 400 with the reason, not FastAPI's 422; an unknown
    caller still gets 401, and the refusal is audited."""
    f = by_name(seeded, "MR_small.dcm")
    params = {"requestType": "WADO", "studyUID": f.study, "seriesUID": f.series, "objectUID": f.sop}
    params = {k: v for k, v in params.items() if k != drop} | extra
    response = await client.get(path, params=params, headers=keys.headers("clinician"))
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]
    assert (await audit_rows("request.rejected"))[-1]["status_code"] == 400
    assert (await client.get(path, params=params)).status_code == 401


async def test_outside_dicomweb_validation_errors_stay_422(client, keys) -> None:
    response = await client.get(
        "/v1/studies", params={"limit": "many"}, headers=keys.headers("clinician")
    )
    assert response.status_code == 422, response.text


class RemoteStore:
    """The test's local storage seen as remote (not a LocalStore): WADO has to copy an
    instance out of it before a worker can read it, as on gs://."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_copies_from_remote_storage_wait_for_a_render_slot(
    pool, registry, store, renderer, keys, seeded, tmp_path, monkeypatch
) -> None:
    """Frames and bulk data on remote storage copy the instance to the temporary folder only
    once one of the previews' slots is free (one at a time here, one waiting); a burst
    beyond the queue is answered 503 with Retry-After, instead of every request copying
    its instance to /tmp at once."""
    remote = RemoteStore(store)
    previews = PreviewSource(remote, renderer, concurrency=1, queue=1)  # type: ignore[arg-type]
    ports = DicomWebPorts(remote, previews, renderer.executor)  # type: ignore[arg-type]

    async def publish(event: object) -> None:
        raise AssertionError("WADO publishes nothing")

    app = create_app(pool, publish, registry, Readiness(), limits=ApiLimits(), dicomweb=ports)
    transport = httpx.ASGITransport(app, client=("10.1.2.3", 4567))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's copies only
    f = by_name(seeded, "MR_small_jp2klossless.dcm")
    headers = keys.headers("clinician")
    with most_files(tmp_path, "dicomweb-*") as copies:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            responses = await asyncio.gather(
                *(
                    c.get(url(f, "/frames/1"), headers={**headers, "Accept": FRAMES_RAW})
                    for _ in range(8)
                ),
                *(
                    c.get(url(f, "/bulkdata/7fe00010"), headers={**headers, "Accept": "*/*"})
                    for _ in range(4)
                ),
            )
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    busy = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 for r in busy)
    assert all("busy" in r.json()["detail"] for r in busy)
    assert copies.most == 1, f"{copies.most} instances copied out at once"
    assert not list(tmp_path.glob("dicomweb-*"))  # every copy removed
    # One at a time, the same requests all succeed, byte for byte.
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        frame = await c.get(url(f, "/frames/1"), headers={**headers, "Accept": FRAMES_RAW})
        [(_, pixels)] = split_multipart(frame)
        assert pixels == dcmread(f.path).pixel_array.astype("<u2").tobytes()
