"""A central index for the publisher to talk to: a small FastAPI app over HTTPS (a CA made by
the test) in a thread on a free loopback port, with a database of received studies that
honours idempotency keys and can be told to fail, be slow, refuse the key or reject a study.
Plus the index data the publisher reads, and the publisher itself as a process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from libs.contracts.events import (
    DicomHeader,
    FileRef,
    Hashes,
    InstanceAttrs,
    InstanceStored,
    PatientAttrs,
    SeriesAttrs,
    StudyAttrs,
    StudyMetadata,
)
from libs.db.index import index_instance, study_snapshot
from libs.tools.dev_broker import free_port
from tests.polling import eventually, eventually_sync

API_KEY = "central-secret"
CENTER = "SITE-01"


@dataclass
class Received:
    """One request as the central index saw it."""

    key: str
    study_uid: str
    status: int
    at: float
    body: dict[str, Any]


@dataclass
class Rule:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    times: int | None = None  # None: every time


class Central:
    """State shared between the server thread and the test (guarded by a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.applied: list[str] = []  # idempotency keys, in the order they were applied
        self.studies: dict[str, dict[str, Any]] = {}  # the central database, by study UID
        self.down: Rule | None = None  # every request answered so (an outage)
        self.rules: dict[str, Rule] = {}  # per study UID
        self.slow: dict[str, float] = {}  # idempotency key -> seconds: applied, answered late
        self.api_key = API_KEY
        self.url = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/studies")
        async def receive(request: Request) -> JSONResponse:
            body = await request.json()
            key = request.headers.get("idempotency-key", "")
            study_uid = body.get("study_iuid") or body.get("study_uid") or ""
            answer, delay = self._answer(request, key, study_uid, body)
            with self.lock:
                self.requests.append(
                    Received(key, study_uid, answer.status_code, time.time(), body)
                )
            await asyncio.sleep(delay)  # the client may have given up meanwhile
            return answer

        return app

    def _answer(
        self, request: Request, key: str, study_uid: str, body: dict[str, Any]
    ) -> tuple[JSONResponse, float]:
        with self.lock:
            if request.headers.get("x-api-key") != self.api_key:
                return JSONResponse({"detail": "unknown API key"}, 401), 0
            rule = self.down or self.rules.get(study_uid)
            if rule is not None:
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0 and rule is self.down:
                        self.down = None
                    elif rule.times == 0:
                        self.rules.pop(study_uid)
                headers = {"Retry-After": rule.retry_after} if rule.retry_after else None
                return JSONResponse(rule.body, rule.status, headers=headers), 0
            if key in self.applied:
                return JSONResponse({"status": "duplicate", "key": key}), 0
            self.applied.append(key)
            self.studies[study_uid] = body
            return JSONResponse({"status": "stored", "key": key}, 201), self.slow.pop(key, 0.0)

    # --- what the tests read ------------------------------------------------------------

    def revisions(self, study_uid: str) -> list[int]:
        """Revisions of a study applied, in order (the key ends with the revision)."""
        with self.lock:
            return [int(k.rsplit(":", 1)[1]) for k in self.applied if f":{study_uid}:" in k]

    def requests_for(self, study_uid: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.study_uid == study_uid]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"))


def make_tls(d: Path) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (the publisher trusts only the CA)."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-days", "1", "-subj", "/CN=dicomflow test CA")  # fmt: skip
    _openssl("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
             "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.pem"),
             "-days", "1", "-extfile", str(d / "san.ext"))  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.fixture
def central(tls: dict[str, Path]) -> Iterator[Central]:
    with serve_central(tls) as state:
        yield state


@contextmanager
def serve_central(tls: dict[str, Path]) -> Iterator[Central]:
    """The central index served over HTTPS on a free loopback port while in the block."""
    state = Central()
    port = free_port()
    config = uvicorn.Config(
        state.app(),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(tls["cert"]),
        ssl_keyfile=str(tls["key"]),
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="central-index", daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the central index server did not start"
        return bool(server.started)

    eventually_sync(started, 20, what="the central index server did not start", interval=0.02)
    state.url = f"https://127.0.0.1:{port}/studies"
    yield state
    server.should_exit = True
    thread.join(10)


# --- the index the publisher reads ----------------------------------------------------------


async def index_study(
    conn: asyncpg.Connection, study_uid: str, patient_id: str, instances: int, start: int = 0
) -> list[StudyMetadata]:
    """Index `instances` new instances of a study; the metadata event of each revision."""
    events = []
    for n in range(start, start + instances):
        header = DicomHeader(
            patient=PatientAttrs(patient_id=patient_id, patient_name=f"DOE^{patient_id}"),
            study=StudyAttrs(
                study_uid=study_uid,
                study_date="20240301",
                study_time="101530.25",
                study_description="CT CHEST",
            ),
            series=SeriesAttrs(series_uid=f"{study_uid}.{n % 2 + 1}", modality=("CT", "SR")[n % 2]),
            instance=InstanceAttrs(sop_instance_uid=f"{study_uid}.9.{n}"),
        )
        await index_instance(
            conn,
            InstanceStored(
                correlation_id=f"c-{study_uid}-{n}",
                source="test",
                file=FileRef(file_id=1, uri=f"file:///nas/{study_uid}/{n}.dcm", size=100),
                header=header,
                hashes=Hashes(file_sha256="f" * 64, content_sha256=f"{n:064d}", has_pixels=True),
                disposition="new",
                storage_url=f"file:///storage/{study_uid}/{n}",
            ),
        )
        snapshot = await study_snapshot(conn, study_uid)
        assert snapshot is not None
        events.append(
            StudyMetadata(
                correlation_id=f"c-{study_uid}-{n}",
                source="indexer",
                correlation_ids=[f"c-{study_uid}-{n}"],
                **vars(snapshot),
            )
        )
    return events


# --- the publisher as a process ---------------------------------------------------------------


def publisher_env(
    database_url: str, bootstrap: str, central: Central, tls: dict[str, Path], **overrides: str
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INDEX_PUBLISHER_URL": central.url,
        "INDEX_PUBLISHER_CENTER": CENTER,
        "INDEX_PUBLISHER_API_KEY": API_KEY,
        "INDEX_PUBLISHER_CA_BUNDLE": str(tls["ca"]),
        "INDEX_PUBLISHER_TIMEOUT_SECONDS": "0.5",
        "INDEX_PUBLISHER_MAX_ATTEMPTS": "4",
        "INDEX_PUBLISHER_BACKOFF_SECONDS": "0.05",
        "INDEX_PUBLISHER_MAX_BACKOFF_SECONDS": "0.2",
        "INDEX_PUBLISHER_RETRY_BACKOFF_SECONDS": "0.05",
        "INDEX_PUBLISHER_OPS_PORT": str(free_port()),
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_TOPIC_PARTITIONS": "3",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


@dataclass
class Publisher:
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ops(self) -> str:
        return f"http://127.0.0.1:{self.env['INDEX_PUBLISHER_OPS_PORT']}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.index_publisher"],
            env={**os.environ, **self.env},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{self.ops}/ready", timeout=3)
        return r.status_code == 200, r.json()

    async def wait_ready(self, timeout: float = 120) -> None:
        # A deadline, not a speed target: on a loaded machine (two xdist workers each
        # starting processes) a start has taken over 30 s (the e2e stack waits 180 s).
        await eventually(self._ready_or_dead, timeout, what=self.tail)

    async def _ready_or_dead(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"exited:\n{self.tail()}"
        try:
            return (await self.ready())[0]
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Publisher]]:
    started: list[Publisher] = []

    def start(env: dict[str, str]) -> Publisher:
        p = Publisher(env, tmp_path / f"publisher-{len(started)}.log")
        p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as c:
        yield c
