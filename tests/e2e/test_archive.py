"""A clinician downloads a study archive on the API's origin (the API relays it to the
packager): a download interrupted twice and resumed with Range equals a straight one, whose
files equal the stored instances, in each format (tar.zst; ZIP and TAR with a DICOMDIR that
pydicom's FileSet reads); HEAD, If-Range, 304, 416; pre-build of stable studies; streaming
while building; concurrent first requests build once; a changed study never serves its old
archive."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
import zstandard
from aiokafka import AIOKafkaConsumer
from pydicom import dcmread
from pydicom.fileset import FileSet
from trees import build_tree, uid

from libs.db.apikeys import create_key
from libs.dicom.synthetic import write_instance
from libs.storage import ObjectStore, instance_key, open_store
from load_test.process_stack import Stack
from tests.polling import eventually

HOSTILE = 'CON/..\\:*?"<>|\x07 ../../etc'
MEDIA = {"tar.zst": "application/zstd", "zip": "application/zip", "tar": "application/x-tar"}


def untar(data: bytes) -> dict[str, bytes]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def interrupted_download(c: httpx.AsyncClient, url: str, size: int, etag: str) -> bytes:
    """Three connections, the first two dropped part-way, each resumed from what arrived."""
    got = bytearray()
    for stop in (size // 3, 2 * size // 3, size):
        headers = {"Range": f"bytes={len(got)}-", "If-Range": etag} if got else {}
        async with c.stream("GET", url, headers=headers) as r:
            assert r.status_code == (206 if got else 200), r.status_code
            if got:
                assert r.headers["content-range"] == f"bytes {len(got)}-{size - 1}/{size}"
            async for chunk in r.aiter_raw(64 * 1024):
                got += chunk[: stop - len(got)]
                if len(got) >= stop:
                    break  # leaving the block drops the connection mid-transfer
    return bytes(got)


async def wait_builds(stack: Stack, count: float, timeout: float = 60.0) -> None:
    async def built() -> bool:
        return await builds(stack) >= count

    await eventually(built, timeout, what=f"fewer than {count} builds", interval=0.2)


async def builds(stack: Stack) -> float:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{stack.ports['packager']}/metrics")).text
    match = re.search(r"^dicomflow_packager_builds_total ([0-9.e+]+)$", text, re.M)
    assert match, text[:500]
    return float(match.group(1))


@pytest.mark.parametrize("storage_backend", ["file", "gs"])
async def test_archive_download_resume_revisions_and_single_flight(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    stack.env["PACKAGER_PREBUILD"] = "true"
    stack.start("packager")
    await stack.wait_ready(["packager"])
    tree = stack.root / "imports" / "study"
    expected = build_tree(tree, patients=1, series_per_study=2, per_series=12, extras=False)
    assert (await stack.wait_task(await stack.start_import(tree)))["status"] == "completed"
    await wait_builds(stack, 1)  # pre-built once the study became stable
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "clinician", "e2e-archive")
    originals = {sha(p.read_bytes()): p.read_bytes() for p in tree.rglob("*.dcm")}
    study = expected.study_uids[0]
    url = f"/v1/studies/{study}/archive"
    base = stack.api  # one origin: the API relays archives to the packager
    auth = {"Authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=60) as c:
        straight = await c.get(url)  # from the cache: pre-built
        assert straight.status_code == 200, straight.text
        assert straight.headers["content-type"] == "application/zstd"
        assert straight.headers["accept-ranges"] == "bytes"
        assert await builds(stack) == 1
        etag = straight.headers["etag"]
        assert 'filename="' in straight.headers["content-disposition"]
        body = straight.content
        head = await c.head(url)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(body)
        assert head.headers["etag"] == etag and "last-modified" in head.headers

        assert await interrupted_download(c, url, len(body), etag) == body
        files = untar(body)
        manifest = json.loads(next(v for k, v in files.items() if k.endswith("/manifest.json")))
        assert len(manifest["files"]) == len(originals) == 24
        for entry in manifest["files"]:
            assert files[entry["path"]] == originals[entry["sha256"]]

        assert (await c.get(url, headers={"If-None-Match": etag})).status_code == 304
        stale = await c.get(url, headers={"Range": "bytes=10-", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == body
        by_date = await c.get(
            url, headers={"Range": "bytes=10-19", "If-Range": head.headers["last-modified"]}
        )
        assert by_date.status_code == 206 and by_date.content == body[10:20]
        beyond = await c.get(url, headers={"Range": f"bytes={len(body)}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{len(body)}"

        # Concurrent first requests (ZIP waits for the build) share one build.
        before = await builds(stack)
        zips = await asyncio.gather(*(c.get(url, params={"format": "zip"}) for _ in range(4)))
        assert {z.status_code for z in zips} == {200}
        assert len({z.content for z in zips}) == 1
        assert await builds(stack) == before + 1
        with zipfile.ZipFile(io.BytesIO(zips[0].content)) as z:
            assert len([n for n in z.namelist() if "/DICOM/" in n]) == len(originals)

        # Not pre-built: the first request streams it while it is built, the same bytes.
        series = manifest["files"][0]["series_uid"]
        one = await c.get(f"/v1/studies/{study}/series/{series}/archive")
        assert one.status_code == 200
        assert one.headers.get("transfer-encoding") == "chunked"
        assert len(untar(one.content)) == 12 + 1
        again = await c.get(f"/v1/studies/{study}/series/{series}/archive")
        assert "content-length" in again.headers and again.content == one.content

        assert (await c.get("/v1/studies/1.2.3.4/archive")).status_code == 404
        assert (await c.get("/v1/studies/..%2Fetc/archive")).status_code in (404, 422)
        assert (await c.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401

        # The study changes (a new series with a hostile description): never the old archive.
        ds = dcmread(next(tree.rglob("*.dcm")))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid()
        ds.SeriesInstanceUID = uid()
        ds.SeriesDescription = HOSTILE
        more = stack.root / "imports" / "more"
        write_instance(more / "new.dcm", ds)
        assert (await stack.wait_task(await stack.start_import(more)))["status"] == "completed"
        resumed = await c.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
        assert resumed.status_code == 200  # the old revision is gone: the whole new archive
        assert resumed.headers["etag"] != etag
        new_files = untar(resumed.content)
        assert len(new_files) == len(files) + 1
        hostile = [p for p in new_files if p not in files]
        assert len(hostile) == 1
        parts = hostile[0].split("/")
        assert all(re.fullmatch(r"[\w.-]+", p) and p not in (".", "..") for p in parts), parts
        assert new_files[hostile[0]] == (more / "new.dcm").read_bytes()

        # Each workstation format: resumed download, DICOMDIR, files equal to storage.
        store = open_store(stack.env["STORAGE_URL"])
        for fmt in ("zip", "tar"):
            await workstation_archive(c, url, fmt, stack.root / f"unpacked-{fmt}", store, study)

    rows = await pool.fetch(
        "SELECT action, status_code FROM audit_log WHERE action LIKE 'archive.%'"
    )
    assert {r["action"] for r in rows} == {"archive.study", "archive.series"}

    def announced_both(events: list[dict[str, object]]) -> bool:
        return {(e["study_uid"], e["format"]) for e in events} >= {
            (study, "tar.zst"),
            (study, "zip"),
        } and etag.strip('"') in {e["revision"] for e in events}

    announced = await archive_events(stack.env["KAFKA_BOOTSTRAP_SERVERS"], announced_both)
    assert {(e["study_uid"], e["format"]) for e in announced} >= {
        (study, "tar.zst"),
        (study, "zip"),
    }
    assert etag.strip('"') in {e["revision"] for e in announced}


async def workstation_archive(
    c: httpx.AsyncClient, url: str, fmt: str, into: Path, store: ObjectStore, study: str
) -> None:
    head = await c.head(url, params={"format": fmt})
    assert head.status_code == 200, head.status_code
    etag, size = head.headers["etag"], int(head.headers["content-length"])
    assert head.headers["content-type"] == MEDIA[fmt]
    body = await interrupted_download(c, f"{url}?format={fmt}", size, etag)
    assert len(body) == size
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            assert z.testzip() is None
            z.extractall(into)
    else:
        with tarfile.open(fileobj=io.BytesIO(body)) as t:
            t.extractall(into, filter="data")
    [root] = list(into.iterdir())
    manifest = json.loads((root / "manifest.json").read_text())
    fs = FileSet(root / "DICOMDIR")
    assert len(fs) == len(manifest["files"]) == 25  # 24, and one added by the test
    for entry in manifest["files"]:
        stored = b"".join(
            [
                chunk
                async for chunk in store.read(
                    instance_key(study, entry["series_uid"], entry["sop_instance_uid"])
                )
            ]
        )
        got = (into / entry["path"]).read_bytes()
        assert sha(got) == sha(stored) == entry["sha256"], entry["path"]
    for instance in fs:
        assert Path(instance.path).is_file()
        assert instance.load().SOPInstanceUID == instance.SOPInstanceUID


async def archive_events(
    bootstrap: str, enough: Callable[[list[dict[str, object]]], bool]
) -> list[dict[str, object]]:
    """dicom.archive.v1 from the start, until the events read are `enough` (30 s at most)."""
    consumer = AIOKafkaConsumer(
        "dicom.archive.v1", bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    events: list[dict[str, object]] = []

    async def more() -> bool:
        for msgs in (await consumer.getmany(timeout_ms=300)).values():
            events.extend(json.loads(m.value) for m in msgs)
        return enough(events)

    try:
        await eventually(more, 30, what=lambda: f"dicom.archive.v1 holds {events}", interval=0)
    finally:
        await consumer.stop()
    return events
