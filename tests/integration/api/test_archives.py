"""Archives on the API's origin: the API relays /v1/studies/{uid}/archive to a real packager
(its own HTTP server on a loopback port, a real index and local storage) and the answers are
the packager's own: bytes, ETag, Range/If-Range/206/416, HEAD, 304, 401/404, the audit row
with the client's address, and a 503 when the packager is down."""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.db.archives import archive_listing
from libs.db.index import index_instance
from libs.dicom.synthetic import make_dataset, write_instance
from libs.http.proxy import ProxyTimeouts, upstream_client
from libs.runtime.probes import Readiness, http_server
from libs.storage.local import LocalStore
from libs.tools.dev_broker import free_port
from services.api.app import create_app as create_api
from services.api.config import ApiLimits
from services.packager.app import create_app as create_packager
from services.packager.cache import ArchiveCache
from services.packager.packager import Encoding, Packager
from tests.integration.test_jpg_converter_service import put_canonical
from tests.polling import eventually

STUDY = "1.2.826.0.1.3680043.10.2.1"
SERIES = [f"{STUDY}.{n}" for n in (1, 2)]
CLIENT = "10.1.2.3"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("storage").as_uri())


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sources")
    paths = []
    for n in range(6):
        ds = make_dataset(
            patient_id="DEMO0001",
            patient_name="Иванов^Иван",
            study_uid=STUDY,
            series_uid=SERIES[n // 3],
            sop_uid=f"{SERIES[n // 3]}.{n + 1}",
            series_number=n // 3 + 1,
            instance_number=n % 3 + 1,
            rows=128,
            columns=128,
            pixel_seed=n,
        )
        write_instance(root / f"{n}.dcm", ds)
        paths.append(root / f"{n}.dcm")
    return paths


@pytest.fixture(autouse=True)
async def seeded(pool: asyncpg.Pool, store: LocalStore, sources: list[Path]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE instances")
        if await conn.fetchval("SELECT count(*) FROM instances"):
            return
        for file_id, path in enumerate(sources, start=1):
            await index_instance(conn, await put_canonical(store, path, file_id))


class Upstream:
    """The packager on its own loopback port, as `dicomflow up` runs it."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.port = port
        self.server = http_server(app, "127.0.0.1", port)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(
            lambda: self.server.started, 20, what="the packager did not start", interval=0.02
        )

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


@pytest.fixture
async def packager(
    pool: asyncpg.Pool, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Upstream]:
    """Trusting every proxy address, as in docker-compose.yml (internal network only)."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")

    async def listings(study: str, series: str | None):  # type: ignore[no-untyped-def]
        async with pool.acquire() as conn:
            return await archive_listing(conn, study, series)

    async def publish(*_: object) -> None:
        return None

    cache = ArchiveCache(tmp_path / "archives", 1 << 30)
    cache.prepare()
    core = Packager(
        store=store, cache=cache, listings=listings, publish=publish, encoding=Encoding(3, 0)
    )
    upstream = Upstream(create_packager(pool, core, CollectorRegistry(), Readiness()), free_port())
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def relay(packager: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    client = upstream_client(f"http://127.0.0.1:{packager.port}", ProxyTimeouts(read=60))
    yield client
    await client.aclose()


@pytest.fixture
def app(pool: asyncpg.Pool, registry: CollectorRegistry, relay: httpx.AsyncClient) -> FastAPI:
    async def publish(event: object) -> None:
        raise AssertionError("archives publish nothing")

    return create_api(pool, publish, registry, Readiness(), limits=ApiLimits(), packager=relay)


@pytest.fixture
async def direct(packager: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{packager.port}") as c:
        yield c


URL = f"/v1/studies/{STUDY}/archive"
SAME = ("etag", "last-modified", "content-type", "content-disposition", "accept-ranges")


@pytest.mark.parametrize(
    ("fmt", "media"),
    [("tar.zst", "application/zstd"), ("zip", "application/zip"), ("tar", "application/x-tar")],
)
async def test_the_api_answers_what_the_packager_answers(
    client, direct, keys, audit_rows, sources, fmt, media
):
    auth = keys.headers("clinician")
    params = {"format": fmt}
    spoof = {**auth, "X-Forwarded-For": "192.0.2.66"}  # a caller cannot choose its address
    first = await client.get(URL, params=params, headers=spoof)  # built (or streamed) now
    assert first.status_code == 200, first.text
    body = first.content
    straight = await direct.get(URL, params=params, headers=auth)  # cached by now
    assert straight.content == body
    again = await client.get(URL, params=params, headers=auth)
    assert again.status_code == 200 and again.content == body
    assert again.headers["content-type"] == media
    assert int(again.headers["content-length"]) == len(body)
    for name in SAME:
        assert again.headers[name] == straight.headers[name], name
    etag, size = again.headers["etag"], len(body)

    head = await client.head(URL, params=params, headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["x-archive-instances"]) == 6
    payload = sum(p.stat().st_size for p in sources)
    assert int(head.headers["x-archive-instance-bytes"]) == payload
    assert head.headers["etag"] == etag and int(head.headers["content-length"]) == size

    # Resume: a range with the ETag it started with; a stale ETag gets the whole archive.
    cut = size // 3
    rest = await client.get(
        URL, params=params, headers={**auth, "Range": f"bytes={cut}-", "If-Range": etag}
    )
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert body[:cut] + rest.content == body
    stale = await client.get(
        URL, params=params, headers={**auth, "Range": "bytes=5-", "If-Range": '"old"'}
    )
    assert stale.status_code == 200 and stale.content == body
    beyond = await client.get(URL, params=params, headers={**auth, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"

    # Conditional: unchanged -> 304 with the ETag, no body.
    same = await client.get(URL, params=params, headers={**auth, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    other = await client.get(URL, params=params, headers={**auth, "If-None-Match": '"x"'})
    assert other.status_code == 200 and other.content == body
    since = await client.get(
        URL, params=params, headers={**auth, "If-Modified-Since": head.headers["last-modified"]}
    )
    assert since.status_code == 304

    # Audited once per request, by the packager, with the client's own address.
    rows = [r for r in await audit_rows("archive.study") if r["query"].get("format") == fmt]
    via_api = [r for r in rows if r["client"] == CLIENT]
    assert len(via_api) == 9 and len(rows) == 10  # one request went straight to the packager
    assert {r["role"] for r in rows} == {"clinician"}
    assert not [r for r in rows if r["client"] == "192.0.2.66"]
    assert {r["status_code"] for r in via_api} == {200, 206, 304, 416}


async def test_series_archive_and_errors_come_through(client, keys, sources):
    auth = keys.headers("clinician")
    one = await client.get(
        f"/v1/studies/{STUDY}/series/{SERIES[1]}/archive", params={"format": "zip"}, headers=auth
    )
    assert one.status_code == 200, one.text
    with zipfile.ZipFile(io.BytesIO(one.content)) as z:
        stored = {hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if "/DICOM/" in n}
    assert stored == {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources[3:]}

    nokey = await client.get(URL)
    assert nokey.status_code == 401 and nokey.headers["www-authenticate"] == "Bearer"
    bad = await client.get(URL, headers={"Authorization": "Bearer dfk_nope"})
    assert bad.status_code == 401
    unknown = await client.get("/v1/studies/1.2.3.4/archive", headers=auth)
    assert unknown.status_code == 404 and "no such study" in unknown.json()["detail"]
    assert (await client.head("/v1/studies/1.2.3.4/archive", headers=auth)).status_code == 404
    assert (await client.get("/v1/studies/1.2.x/archive", headers=auth)).status_code == 422
    wrong = await client.get(URL, params={"format": "rar"}, headers=auth)
    assert wrong.status_code == 422


async def test_a_signed_in_browser_downloads_with_its_session_cookie(client, keys, sources):
    """The web page has no key, only the session cookie: the relay passes that cookie (and
    no other) and the packager accepts it."""
    signed_in = await client.post(
        "/v1/session", json={"key": keys.plain["clinician"]}, headers={"Origin": "http://api.test"}
    )
    assert signed_in.status_code == 200, signed_in.text
    client.cookies.set("unrelated", "must-not-travel")
    response = await client.get(URL, params={"format": "zip"})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as z:
        names = [n for n in z.namelist() if "/DICOM/" in n]
    assert len(names) == len(sources)
    client.cookies.clear()
    assert (await client.get(URL)).status_code == 401


async def test_a_packager_that_is_down_is_a_503(client, keys, packager):
    await packager.stop()
    down = await client.get(URL, headers=keys.headers("clinician"))
    assert down.status_code == 503
    assert down.json() == {"detail": "archive service unavailable"}
