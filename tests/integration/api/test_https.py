"""The API over HTTPS (API_HTTPS_CERTFILE/KEYFILE) with a certificate made in the test, and
the clients that verify it against the test's CA: the client core (`ca_bundle`) and
`dicomflow fetch --ca-bundle` through its real entry point. Without the CA the certificate
is refused with a sentence a person understands."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dicomflow_client import Client, SearchFilter, Unreachable
from fastapi import FastAPI

from libs.runtime.probes import http_server
from libs.tools.dev_broker import free_port
from services.api.config import ApiSettings
from tests.certs import Pki, make_pki
from tests.integration.api.conftest import Keys
from tests.polling import eventually

DICOMFLOW = Path(sys.executable).with_name("dicomflow")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def https_url(app: FastAPI, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("API_HTTPS_CERTFILE", str(pki.server_cert))
    monkeypatch.setenv("API_HTTPS_KEYFILE", str(pki.server_key))
    monkeypatch.setenv("API_PORT", str(free_port()))
    settings = ApiSettings()
    server = http_server(app, settings.ops_host, settings.ops_port, settings.http_tls)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), 20, what="uvicorn did not start")
    yield f"https://localhost:{settings.ops_port}"
    server.should_exit = True
    await task


async def test_the_api_answers_over_https_verified_against_the_ca(
    https_url: str, pki: Pki, keys: Keys
) -> None:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=pki.ca)) as c:
        r = await c.get(f"{https_url}/v1/studies", headers=keys.headers("clinician"))
        assert r.status_code == 200, r.text
        assert r.json()["total"] == 0
        assert r.url.scheme == "https"
    plain = https_url.replace("https://", "http://")
    async with httpx.AsyncClient() as c:
        with pytest.raises(httpx.HTTPError):  # no plain-HTTP answer on the HTTPS port
            (await c.get(f"{plain}/health")).raise_for_status()


async def test_the_client_core_verifies_the_server_with_its_ca_bundle(
    https_url: str, pki: Pki, keys: Keys
) -> None:
    key = keys.plain["clinician"]

    def search(**kwargs: object) -> int:
        with Client(https_url, key, **kwargs) as client:  # type: ignore[arg-type]
            return client.search(SearchFilter(patient_name="Nobody"))[0]

    assert await asyncio.to_thread(search, ca_bundle=pki.ca) == 0
    with pytest.raises(Unreachable, match="certificate"):
        await asyncio.to_thread(search)  # the system's CAs do not know the test CA


async def test_fetch_cli_takes_a_ca_bundle(
    https_url: str, pki: Pki, keys: Keys, tmp_path: Path
) -> None:
    async def fetch(*extra: str) -> tuple[int, str]:
        env = {**os.environ, "DICOMFLOW_API_KEY": keys.plain["clinician"]}
        env.pop("DICOMFLOW_CA_BUNDLE", None)
        proc = await asyncio.create_subprocess_exec(
            str(DICOMFLOW),
            *("fetch", "--url", https_url, "--patient-name", "Nobody", "--out", str(tmp_path)),
            *extra,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        return proc.returncode or 0, err.decode()

    # One run (each costs a Python start-up): the certificate refused without the CA is the
    # client core's message, checked above; the CLI prints it as its one line.
    code, err = await fetch("--ca-bundle", str(pki.ca))
    assert (code, err.strip()) == (1, "dicomflow fetch: no study matches the search."), err


async def test_import_cli_takes_a_ca_bundle(https_url: str, pki: Pki, keys: Keys) -> None:
    """`dicomflow imports stats` through the HTTPS API, verified with --ca-bundle: the API's
    own answer (no such task) comes back, not a certificate error."""
    proc = await asyncio.create_subprocess_exec(
        str(DICOMFLOW),
        *("imports", "stats", "00000000-0000-0000-0000-000000000000", "--url", https_url),
        *("--api-key", keys.plain["admin"], "--ca-bundle", str(pki.ca)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    assert err.decode().strip() == "dicomflow imports: no such import task."
