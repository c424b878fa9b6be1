"""The compose TLS proxy's own Caddyfile (deploy/caddy/Caddyfile), run by Debian's caddy in
front of the real API app: HTTPS with a certificate made in the test and verified against
its CA, the API's answer relayed, HSTS set, plain HTTP refused on the HTTPS port."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from libs.runtime.probes import http_server
from libs.tools.dev_broker import free_port
from load_test.peers import require_binary
from tests.certs import Pki, make_pki
from tests.integration.api.conftest import Keys
from tests.polling import eventually

CADDYFILE = Path(__file__).resolve().parents[3] / "deploy" / "caddy" / "Caddyfile"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _local(caddyfile: str, api_port: int, https_port: int, admin_port: int) -> str:
    """The compose file's proxy on this host: the API, HTTPS and admin on free ports."""
    out = caddyfile
    for old, new in (
        ("reverse_proxy api:8000", f"reverse_proxy 127.0.0.1:{api_port}"),
        ("{$PROXY_SITE}:443 {", f"{{$PROXY_SITE}}:{https_port} {{"),
        ("admin 127.0.0.1:2019", f"admin 127.0.0.1:{admin_port}"),
    ):
        assert old in out, f"the Caddyfile no longer has {old!r}"
        out = out.replace(old, new)
    return out


@pytest.fixture
async def proxy_url(app: FastAPI, tmp_path: Path) -> AsyncIterator[tuple[str, Pki]]:
    pki = make_pki(tmp_path / "pki")
    api_port, https_port, admin_port = free_port(), free_port(), free_port()
    server = http_server(app, "127.0.0.1", api_port)
    api = asyncio.create_task(server.serve())
    config = tmp_path / "Caddyfile"
    config.write_text(_local(CADDYFILE.read_text("utf-8"), api_port, https_port, admin_port))
    env = {
        **os.environ,
        "PROXY_SITE": "localhost",
        "PROXY_TLS": f"{pki.server_cert} {pki.server_key}",
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HOME": str(tmp_path),
    }
    log = (tmp_path / "caddy.log").open("wb")
    caddy = await asyncio.create_subprocess_exec(
        require_binary("caddy"), "run", "--config", str(config), "--adapter", "caddyfile",
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        await eventually(
            lambda: caddy.returncode is None and _listening(https_port),
            30,
            what=lambda: (tmp_path / "caddy.log").read_text(errors="replace")[-2000:],
        )
        yield f"https://localhost:{https_port}", pki
    finally:
        caddy.terminate()
        await caddy.wait()
        log.close()
        server.should_exit = True
        await api


async def test_the_proxy_serves_the_api_over_verified_https(
    proxy_url: tuple[str, Pki], keys: Keys
) -> None:
    url, pki = proxy_url
    ctx = ssl.create_default_context(cafile=pki.ca)
    async with httpx.AsyncClient(verify=ctx) as c:
        r = await c.get(f"{url}/v1/studies", headers=keys.headers("clinician"))
        assert r.status_code == 200, r.text
        assert r.json()["total"] == 0
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert "server" not in r.headers
        assert (await c.get(f"{url}/v1/studies")).status_code == 401  # no key, no data
        # The API sees the proxy's X-Forwarded-Proto: the session cookie is Secure.
        signed = await c.post(f"{url}/v1/session", json={"key": keys.plain["clinician"]})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie
    async with httpx.AsyncClient() as c:  # the system's CAs do not know the test CA
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await c.get(f"{url}/health")
    plain = url.replace("https://", "http://")
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{plain}/health")
        assert r.status_code == 400  # Caddy: "Client sent an HTTP request to an HTTPS server"
