"""The client core's download against a real HTTP server with Starlette's Range/If-Range
(what the packager serves archives with), through a proxy that cuts connections: a part
file whose archive changed on the server (another ETag) restarts from zero and ends with the
new bytes; a matching one resumes with 206; a cancelled download keeps its bytes; progress
reports bytes, total and speed."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from dicomflow_client.download import Partial, download
from dicomflow_client.errors import Cancelled
from dicomflow_client.progress import Progress
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from clientkit import Proxy

from libs.tools.dev_broker import free_port
from tests.polling import eventually_sync


class Server:
    def __init__(self, path: Path) -> None:
        self.path, self.version = path, 1
        self.port = free_port()

        async def archive(request: Request) -> Response:
            return FileResponse(self.path, headers={"etag": f'"v{self.version}"'})

        app = Starlette(routes=[Route("/archive", archive, methods=["GET", "HEAD"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def publish(self, data: bytes, version: int) -> None:
        self.path.write_bytes(data)
        self.version = version


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "served.bin")
    s.publish(os.urandom(400_000), 1)
    s.thread.start()
    eventually_sync(lambda: s.server.started, 30, what="the server did not start")
    yield s
    s.server.should_exit = True
    s.thread.join(10)


def test_resume_matching_etag_and_restart_on_a_changed_archive(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "dl" / "a.part"
    reports: list[Progress] = []
    with Proxy(server.port) as proxy, httpx.Client() as http:
        url = f"{proxy.url}/archive"
        proxy.cut_after, proxy.cuts = 150_000, 1
        got = download(http, url, dest, progress=reports.append)
        assert dest.read_bytes() == server.path.read_bytes() and got.etag == '"v1"'
        assert "range: bytes=" in proxy.seen[1].head.lower()
        assert reports[-1].done == reports[-1].total == 400_000
        assert any(0 < r.done < 400_000 for r in reports)

        # Half of v1 on disk, then the archive changes: If-Range fails, 200, start again.
        data = dest.read_bytes()
        dest.write_bytes(data[:100_000])
        new = os.urandom(300_000)
        server.publish(new, 2)
        proxy.seen.clear()
        again = download(http, url, dest)
        assert again.etag == '"v2"' and dest.read_bytes() == new
        assert 'if-range: "v1"' in proxy.seen[0].head.lower()
        assert Partial(dest).meta()["etag"] == '"v2"'

        # A part file without its sidecar is never trusted.
        dest.write_bytes(new[:1000] + b"garbage")
        Partial(dest).meta_path.unlink()
        proxy.seen.clear()
        download(http, url, dest)
        assert dest.read_bytes() == new and "range:" not in proxy.seen[0].head.lower()


def test_cancel_keeps_the_bytes_and_the_next_call_resumes(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.part"
    cancel = threading.Event()
    with Proxy(server.port) as proxy, httpx.Client() as http:
        proxy.rate = 100_000.0
        url = f"{proxy.url}/archive"

        def stop_midway(p: Progress) -> None:
            if p.done > 50_000:
                cancel.set()

        with pytest.raises(Cancelled):
            download(http, url, dest, progress=stop_midway, cancel=cancel)
        kept = dest.stat().st_size
        assert 50_000 < kept < 400_000
        proxy.rate = None
        got = download(http, url, dest)
        assert got.resumed_from == kept
        assert dest.read_bytes() == server.path.read_bytes()
        assert f"range: bytes={kept}-" in proxy.seen[-1].head.lower()
