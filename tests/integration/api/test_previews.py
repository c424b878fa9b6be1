"""GET .../instances/{sop}/preview.jpg and thumbnail.jpg, and the thumbnail link in search:
a real index (filled by the indexer's own upsert), local storage, isolated render workers."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client import CollectorRegistry
from pydicom import dcmread
from pydicom.data import get_testdata_file

from libs.db.index import index_instance
from libs.imaging.decode import decode_frame, read_header
from libs.imaging.isolated import IsolatedRenderer
from libs.imaging.jobs import RenderRequest
from libs.imaging.keys import preview_key
from libs.imaging.render import render
from libs.imaging.window import Window, preset
from libs.runtime.probes import Readiness
from libs.storage import instance_key
from libs.storage.local import LocalStore
from services.api.app import create_app
from services.api.config import ApiLimits
from services.api.previews import PreviewSource
from services.jpg_converter.handlers import handle_stored
from tests.integration.test_jpg_converter_service import put_canonical
from tests.polling import most_files

CT, MULTI, CORRUPT, PLAN = "693_J2KI.dcm", "examples_ybr_color.dcm", "JPEG-lossy.dcm", "rtplan.dcm"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("storage").as_uri())


@pytest.fixture(scope="module")
def renderer() -> Iterator[IsolatedRenderer]:
    r = IsolatedRenderer(workers=1, memory_limit_mb=1024, timeout_s=30)
    yield r
    r.close()


@pytest.fixture
def app(
    pool: asyncpg.Pool,
    registry: CollectorRegistry,
    store: LocalStore,
    renderer: IsolatedRenderer,
) -> FastAPI:
    async def publish(event: object) -> None:
        raise AssertionError("previews publish nothing")

    source = PreviewSource(store, renderer)
    return create_app(pool, publish, registry, Readiness(), limits=ApiLimits(), previews=source)


def header_uids_of(name: str) -> tuple[str, str, str]:
    ds = dcmread(get_testdata_file(name), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def key_of(uids: tuple[str, str, str]) -> str:
    return instance_key(*uids)


def url(name: str, kind: str = "preview") -> str:
    study, series, sop = header_uids_of(name)
    return f"/v1/studies/{study}/series/{series}/instances/{sop}/{kind}.jpg"


@pytest.fixture(autouse=True)
async def seeded(pool: asyncpg.Pool, store: LocalStore, renderer: IsolatedRenderer) -> None:
    """Store and index four instances once per module; only the CT gets converter previews."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE instances")
        if await conn.fetchval("SELECT count(*) FROM instances"):
            return
        events = [
            await put_canonical(store, name, file_id)
            for file_id, name in enumerate((CT, MULTI, CORRUPT, PLAN), start=1)
        ]
        for event in events:
            await index_instance(conn, event)
    await handle_stored(events[0], storage=store, renderer=renderer, request=RenderRequest())


def pixels(response: httpx.Response) -> np.ndarray[Any, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    return np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)


def expected(name: str, frame: int = 0, window: Window | None = None) -> np.ndarray[Any, Any]:
    path = Path(get_testdata_file(name) or name)
    ds = read_header(path)
    return render(decode_frame(path, ds, frame), ds, window).pixels.astype(np.int16)


async def test_the_converters_preview_is_served_as_stored(client, keys, store, audit_rows):
    uids = header_uids_of(CT)
    for kind in ("preview", "thumbnail"):
        response = await client.get(url(CT, kind), headers=keys.headers("clinician"))
        assert response.status_code == 200, response.text
        assert response.content == store.path_for(preview_key(*uids, kind)).read_bytes()
    rows = await audit_rows("instance.preview")
    assert [(r["status_code"], r["role"], r["result_count"]) for r in rows[-1:]] == [
        (200, "clinician", 1)
    ]
    assert (await audit_rows("instance.thumbnail"))[-1]["status_code"] == 200


@pytest.mark.parametrize(
    ("params", "window"),
    [({"preset": "lung"}, preset("lung")), ({"wc": "40", "ww": "400"}, Window(40, 400))],
)
async def test_a_window_renders_on_the_fly(client, keys, params, window):
    response = await client.get(url(CT), params=params, headers=keys.headers("clinician"))
    got = pixels(response)
    assert np.abs(got - expected(CT, window=window)).mean() < 2.0  # JPEG loss only
    assert np.abs(got - expected(CT)).mean() > 5.0  # not the file's own window


async def test_an_instance_not_yet_converted_renders_on_the_fly_any_frame(client, keys):
    response = await client.get(url(MULTI), params={"frame": 15}, headers=keys.headers("ops"))
    got = pixels(response)
    assert got.shape == (240, 320, 3)
    assert np.abs(got - expected(MULTI, 15)).mean() < 3.0
    thumb = pixels(await client.get(url(MULTI, "thumbnail"), headers=keys.headers("clinician")))
    assert thumb.shape == (192, 256, 3)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"wc": "40"}, "wc and ww go together"),
        ({"wc": "40", "ww": "0"}, "greater than or equal to 1"),
        ({"preset": "kidney"}, "lung"),
        ({"preset": "lung", "wc": "1", "ww": "2"}, "either preset"),
        ({"zoom": "2"}, "Extra inputs"),
    ],
)
async def test_bad_window_queries_are_422(client, keys, params, message):
    response = await client.get(url(CT), params=params, headers=keys.headers("clinician"))
    assert response.status_code == 422 and message in response.text, response.text


async def test_unrenderable_and_missing(client, keys):
    headers = keys.headers("clinician")
    corrupt = await client.get(url(CORRUPT), headers=headers)
    assert corrupt.status_code == 422 and "cannot be decoded" in corrupt.text
    frame = await client.get(url(MULTI), params={"frame": 30}, headers=headers)
    assert frame.status_code == 422 and "frame 30 does not exist" in frame.text
    study, _, sop = header_uids_of(CT)
    wrong = f"/v1/studies/{study}/series/1.2.3/instances/{sop}/preview.jpg"
    assert (await client.get(wrong, headers=headers)).status_code == 404
    assert (await client.get(url(CT))).status_code == 401
    bad_uid = f"/v1/studies/{study}/series/x..y/instances/{sop}/preview.jpg"
    assert (await client.get(bad_uid, headers=headers)).status_code == 422


async def test_search_results_carry_a_thumbnail_link(client, keys):
    response = await client.get("/v1/studies", headers=keys.headers("clinician"))
    assert response.status_code == 200, response.text
    links = {s["study_uid"]: s["thumbnail_url"] for s in response.json()["items"]}
    for name in (CT, MULTI, CORRUPT):
        assert links[header_uids_of(name)[0]] == url(name, "thumbnail")
    assert links[header_uids_of(PLAN)[0]] is None  # no image in that study
    thumb = pixels(await client.get(links[header_uids_of(CT)[0]], headers=keys.headers("admin")))
    assert thumb.shape == (256, 256)


async def test_renders_are_capped_and_a_burst_beyond_the_queue_is_told_to_retry(
    pool, registry, store, renderer, keys, tmp_path, monkeypatch
):
    """One render at a time, one waiting: the instance is copied out of storage only once a
    render slot is free (a burst no longer copies every instance to /tmp at once), and
    requests beyond the queue are answered 503 with Retry-After."""
    source = PreviewSource(store, renderer, concurrency=1, queue=1)

    async def publish(event: object) -> None:
        raise AssertionError("previews publish nothing")

    app = create_app(pool, publish, registry, Readiness(), limits=ApiLimits(), previews=source)
    transport = httpx.ASGITransport(app, client=("10.1.2.3", 4567))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's copies only
    with most_files(tmp_path, "api-preview-*") as copies:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            responses = await asyncio.gather(
                *(
                    c.get(
                        url(MULTI),
                        params={"frame": n, "wc": "128", "ww": "256"},
                        headers=keys.headers("clinician"),
                    )
                    for n in range(12)
                )
            )
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    busy = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 for r in busy)
    assert all(r.headers["content-type"] == "image/jpeg" for r in responses if r.status_code == 200)
    assert copies.most == 1, f"{copies.most} instances copied out at once"
