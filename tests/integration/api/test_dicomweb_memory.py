"""WADO-RS study retrieval streams: the API, run as its own process (`python -m services.api`),
sends a 50-instance, 400 MiB study while its peak resident memory (VmHWM) grows by a small
fraction of that. A server that built the multipart body in memory would grow by the study's
size."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from libs.contracts.events import FileRef, InstanceStored
from libs.db.index import index_instance
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage import instance_key
from libs.storage.local import LocalStore
from libs.tools.dev_broker import free_port
from tests.conftest import Broker
from tests.integration.api.conftest import Keys
from tests.polling import eventually

INSTANCES = 50
SIDE = 2048  # 2048 x 2048 x 16 bits: 8 MiB of pixels an instance
MAX_GROWTH = 64 << 20  # the study is 400 MiB; the chunks in flight are 4 MiB each


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of the process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


async def big_study(pool: asyncpg.Pool, store: LocalStore) -> tuple[str, list[str]]:
    """50 instances of one series written straight into storage and indexed; their SHA-256."""
    study, series = synthetic_uid("memory-study"), synthetic_uid("memory-series")
    digests = []
    async with pool.acquire() as conn:
        for n in range(INSTANCES):
            sop = synthetic_uid(f"memory-{n}")
            ds = make_dataset(
                patient_id="MEM-1",
                patient_name="Memory^Test",
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                rows=SIDE,
                columns=SIDE,
                instance_number=n + 1,
            )
            path = store.path_for(instance_key(study, series, sop))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_instance(path, ds)
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
            header, hashes = extract_file(str(path))
            await index_instance(
                conn,
                InstanceStored(
                    correlation_id=f"memory-{n}",
                    source="test",
                    file=FileRef(file_id=n + 1, uri=path.as_uri(), size=path.stat().st_size),
                    header=header,
                    hashes=hashes,
                    disposition="new",
                    storage_url=store.url_for(instance_key(study, series, sop)),
                ),
            )
    return study, sorted(digests)


@pytest.fixture
def api_process(
    database_url: str, pool: asyncpg.Pool, broker: Broker, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, LocalStore]]:
    store = LocalStore((tmp_path / "storage").as_uri())
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "STORAGE_URL": store.url,
        "API_PORT": str(port),
        "API_STOW_STAGING_DIR": str(tmp_path / "stow"),
        "API_EXPORT_DIR": str(tmp_path / "exports"),
        "LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc, f"http://127.0.0.1:{port}", store
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_a_400_mib_study_streams_with_bounded_memory(
    api_process: tuple[subprocess.Popen[bytes], str, LocalStore],
    pool: asyncpg.Pool,
    keys: Keys,
    tmp_path: Path,
) -> None:
    proc, api, store = api_process
    study, expected = await big_study(pool, store)

    async def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "api.log").read_text()[-2000:])
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"{api}/ready")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, 30, what="the API did not become ready")
    headers = {
        **keys.headers("clinician"),
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    }
    async with httpx.AsyncClient(base_url=api, timeout=60) as c:
        warm = await c.get(f"/dicom-web/studies/{study}/series", headers=keys.headers("clinician"))
        assert warm.status_code == 200, warm.text  # routes, pool and serializers loaded
        before = peak_rss(proc.pid)
        received, parts = 0, []
        async with c.stream("GET", f"/dicom-web/studies/{study}", headers=headers) as response:
            assert response.status_code == 200
            boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0]
            digest, tail = None, b""
            async for chunk in response.aiter_bytes():  # consumed as it comes, not kept
                received += len(chunk)
                data, tail = tail + chunk, b""
                # Hash each part's body between boundaries (a delimiter may straddle chunks).
                while True:
                    if digest is None:
                        start = data.find(b"\r\n\r\n")
                        if start < 0:
                            tail = data
                            break
                        digest, data = hashlib.sha256(), data[start + 4 :]
                    end = data.find(b"\r\n--" + boundary.encode())
                    if end < 0:
                        keep = len(boundary) + 4
                        digest.update(data[:-keep])
                        tail = data[-keep:]
                        break
                    digest.update(data[:end])
                    parts.append(digest.hexdigest())
                    digest, data = None, data[end + 2 :]
        after = peak_rss(proc.pid)
    assert sorted(parts) == expected  # every instance, byte for byte
    assert received > INSTANCES * SIDE * SIDE * 2
    growth = after - before
    print(f"study {received / 2**20:.0f} MiB; API VmHWM {before >> 20} -> {after >> 20} MiB")
    assert growth < MAX_GROWTH, f"peak RSS grew {growth >> 20} MiB for {received >> 20} MiB"
