"""GCS failing on its side (5xx answers, connections reset) for longer than the client's own
retries is an outage: the storage-writer holds and retries, turns not-ready, and dead-letters
nothing; every instance is stored once it answers again.

The faults come from a small HTTP proxy in front of the real GCS emulator: the real client,
the real consumer and handler, only the network between them misbehaves."""

from __future__ import annotations

import asyncio
import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from libs.contracts.errors import StorageUnavailable
from libs.contracts.events import Event, InstanceUnique
from libs.kafka.consumer import Route, is_outage
from libs.kafka.dlq import list_letters
from libs.kafka.producer import Producer
from libs.storage.gcs import GcsStore
from load_test.gcs import GcsEmulator
from services.storage_writer.handlers import handle_unique, storage_key
from tests.instances import unique_events
from tests.integration.test_transient_faults import stage_of
from tests.polling import eventually

pytestmark = pytest.mark.integration


class FaultyProxy(ThreadingHTTPServer):
    """Forwards to `upstream`; `mode` "503" answers 503 itself, "reset" resets the
    connection before answering, "pass" forwards."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = upstream
        self.mode = "pass"
        self.faults = 0

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Relay(BaseHTTPRequestHandler):
    server: FaultyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.mode == "503":
            self.server.faults += 1
            payload = b'{"error": {"code": 503, "message": "backend unavailable"}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.server.mode == "reset":
            self.server.faults += 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # RST, not FIN: "connection reset by peer"
            self.close_connection = True
            return
        up = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        up.request(self.command, self.path, body=body, headers=headers)
        r = up.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        up.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay


@pytest.fixture
def proxy(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    p = FaultyProxy(("127.0.0.1", gcs_emulator.port))
    thread = threading.Thread(target=p.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.host)
    yield p
    p.shutdown()
    p.server_close()


def events_for(tmp_path: Path, count: int) -> list[InstanceUnique]:
    return unique_events(tmp_path, count, f"gcs:{tmp_path}", 32)


@pytest.mark.parametrize("fault", ["503", "reset"])
async def test_gcs_failing_past_the_client_retries_is_an_outage(
    proxy: FaultyProxy, gcs_emulator: GcsEmulator, tmp_path: Path, fault: str
) -> None:
    store = GcsStore(gcs_emulator.url(), retry_timeout=0.5)  # gives up fast: the consumer holds
    src = tmp_path / "one"
    src.write_bytes(b"x")
    proxy.mode = fault
    with pytest.raises(StorageUnavailable) as raised:
        await store.size("studies/1/2/3.dcm")
    assert is_outage(raised.value), raised.value
    proxy.mode = "pass"
    assert await store.size("studies/1/2/3.dcm") is None


async def test_storage_writer_holds_through_a_gcs_outage(
    proxy: FaultyProxy,
    gcs_emulator: GcsEmulator,
    tmp_path: Path,
    broker: object,
    producer: Producer,
) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    events = events_for(tmp_path, 6)
    store = GcsStore(gcs_emulator.url(), retry_timeout=0.5)
    stored: list[Event] = []

    async def handler(event: InstanceUnique) -> list[Event]:
        out = await handle_unique(event, storage=store)
        stored.extend(out)
        return out

    stopping = asyncio.Event()
    topic = InstanceUnique.TOPIC
    stage = stage_of(bootstrap, producer, topic, Route(InstanceUnique, handler), stopping)
    proxy.mode = "503"  # GCS answers 503 to everything, then resets connections
    await producer.publish(*events)
    await stage.start()
    run = asyncio.create_task(stage.run())
    health: list[bool] = []

    def held_for(until: float) -> bool:  # samples readiness while the fault lasts
        assert not run.done(), "the stage stopped"
        health.append(stage.healthy)
        return time.monotonic() >= until

    try:
        # Far longer than the client's retries (0.5 s) and a poison message's (3 x 0.05 s).
        for mode in ("503", "reset"):
            proxy.mode = mode
            faults = proxy.faults
            await eventually(partial(held_for, time.monotonic() + 3), 10)
            assert proxy.faults > faults, f"no request met the {mode} fault"
        assert stored == [], "stored while GCS was failing"
        assert await list_letters(bootstrap, topic) == [], "a GCS outage was dead-lettered"
        proxy.mode = "pass"
        await eventually(lambda: len(stored) == len(events) or run.done(), 60)
        assert not run.done()
    finally:
        stopping.set()
        await run
        await stage.stop()
    not_ready_seen = not all(health)
    assert not_ready_seen, "the stage never reported not-ready during the outage"
    assert await list_letters(bootstrap, topic) == []
    for event in events:
        data = b"".join([c async for c in store.read(storage_key(event))])
        assert data == Path(event.file.uri.removeprefix("file://")).read_bytes()
