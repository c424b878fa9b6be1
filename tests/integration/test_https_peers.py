"""HTTPS between services and to peers with a private CA: the API relays archive downloads to
an HTTPS packager (API_PACKAGER_CA_BUNDLE) and the orthanc-watcher reads an HTTPS Orthanc
(ORTHANC_CA_BUNDLE), each verifying against a CA made in the test and refusing without it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from libs.contracts.settings import HttpTls
from libs.http.proxy import ProxyTimeouts, upstream_client
from libs.runtime.probes import http_server
from libs.tools.dev_broker import free_port
from services.orthanc_watcher.client import OrthancClient
from tests.certs import Pki, make_pki
from tests.polling import eventually


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def https_peer(pki: Pki) -> AsyncIterator[str]:
    """A stand-in upstream on HTTPS: Orthanc's /system, a packager's archive route."""
    app = FastAPI()

    @app.get("/system")
    async def system() -> dict[str, str]:
        return {"Name": "ORTHANC"}

    @app.get("/v1/studies/{uid}/archive")
    async def archive(uid: str) -> dict[str, str]:
        return {"study": uid}

    port = free_port()
    server = http_server(app, "127.0.0.1", port, HttpTls(pki.server_cert, pki.server_key))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), 20)
    yield f"https://localhost:{port}"
    server.should_exit = True
    await task


async def test_orthanc_over_https_with_a_private_ca(https_peer: str, pki: Pki) -> None:
    client = OrthancClient(https_peer, ca_bundle=pki.ca)
    try:
        assert await client.alive()
    finally:
        await client.close()
    unverified = OrthancClient(https_peer)
    try:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await unverified.alive()
    finally:
        await unverified.close()


async def test_the_api_relays_to_an_https_packager(https_peer: str, pki: Pki) -> None:
    async with upstream_client(https_peer, ProxyTimeouts(), pki.ca) as packager:
        r = await packager.get("/v1/studies/1.2.3/archive")
        assert r.json() == {"study": "1.2.3"}
    async with upstream_client(https_peer, ProxyTimeouts()) as packager:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await packager.get("/v1/studies/1.2.3/archive")
