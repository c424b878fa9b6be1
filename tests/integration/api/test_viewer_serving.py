"""The OHIF Viewer at /viewer: the installed build (deploy/dev/ohif.sh), served behind the
browser session, with our app-config.js, MIME types, cache and security headers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.runtime.probes import Readiness
from services.api.app import create_app
from services.api.viewer import ViewerFiles, ViewerNotInstalled

ORIGIN = {"Origin": "http://api.test"}


@pytest.fixture
def app(pool: asyncpg.Pool, publisher, viewer_dist: Path) -> FastAPI:
    viewer = ViewerFiles.load(viewer_dist)
    return create_app(pool, publisher.publish, CollectorRegistry(), Readiness(), viewer=viewer)


@pytest.fixture
async def signed_in(client: httpx.AsyncClient, keys) -> AsyncIterator[httpx.AsyncClient]:
    response = await client.post(
        "/v1/session", json={"key": keys.plain["clinician"]}, headers=ORIGIN
    )
    assert response.status_code == 200, response.text
    yield client


@pytest.mark.parametrize(
    ("path", "next_"),
    [
        ("/viewer", "/viewer"),
        ("/viewer/", "/viewer/"),
        ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/viewer%3FStudyInstanceUIDs%3D1.2.3"),
    ],
)
async def test_without_a_session_the_viewer_sends_the_browser_to_sign_in(client, path, next_):
    response = await client.get(path)
    assert response.status_code == 302
    assert response.headers["location"] == f"/signin?next={next_}"
    assert response.headers["cache-control"] == "no-store"


async def test_a_revoked_or_unknown_session_is_sent_to_sign_in(client):
    client.cookies.set("dicomflow_session", "dfs_" + "x" * 43)
    response = await client.get("/viewer/")
    assert response.status_code == 302


async def test_signed_in_the_viewer_page_and_its_routes_are_ohif_index(signed_in, audit_rows):
    for path in ("/viewer", "/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/local"):
        response = await signed_in.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        assert 'window.PUBLIC_URL="/viewer/"' in html
        assert 'src="/viewer/app-config.js"' in html
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
        assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    rows = await audit_rows("viewer.open")
    assert [(r["status_code"], r["role"]) for r in rows][-4:] == [(200, "clinician")] * 4


async def test_the_csp_allows_exactly_the_inline_scripts_of_the_page(signed_in):
    response = await signed_in.get("/viewer/")
    csp = dict(
        d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";")
    )
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", response.text, re.DOTALL)
    assert len(inline) == 2  # OHIF's PUBLIC_URL and browserImportFunction
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline
    }
    assert set(csp["script-src"].split()) == {"'self'", "'wasm-unsafe-eval'", *hashes}
    assert csp["default-src"] == "'self'" and csp["object-src"] == "'none'"
    assert "unsafe-eval'" not in csp["script-src"].replace("wasm-unsafe-eval", "")
    assert "http" not in response.headers["content-security-policy"]


async def test_static_files_have_their_media_types_and_cache_lifetimes(signed_in, viewer_dist):
    bundle = next(viewer_dist.glob("app.bundle.*.js")).name
    wasm = next(viewer_dist.glob("*.wasm")).name
    expected = {
        bundle: ("text/javascript", "public, max-age=31536000, immutable"),
        wasm: ("application/wasm", "public, max-age=31536000, immutable"),
        "app.bundle.css": ("text/css", "no-cache"),
        "manifest.json": ("application/json", "no-cache"),
        "assets/favicon-16x16.png": ("image/png", "no-cache"),
    }
    for name, (media_type, cache) in expected.items():
        response = await signed_in.get(f"/viewer/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] == media_type, name
        assert response.headers["cache-control"] == cache, name
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == (viewer_dist / name).read_bytes()
    etag = (await signed_in.get(f"/viewer/{bundle}")).headers["etag"]
    again = await signed_in.get(f"/viewer/{bundle}", headers={"If-None-Match": etag})
    assert again.status_code == 304


async def test_the_build_is_served_to_anyone_but_only_the_build(client, viewer_dist):
    bundle = next(viewer_dist.glob("app.bundle.*.js")).name
    assert (await client.get(f"/viewer/{bundle}")).status_code == 200  # OHIF's code, no data
    for path in (
        "/viewer/missing.bundle.0123456789abcdef.js",  # a missing file is a 404, not the page
        "/viewer/.dicomflow-installed",
        "/viewer/..%2F..%2Fpyproject.toml",
        "/viewer/assets/../../../pyproject.toml",
    ):
        assert (await client.get(path)).status_code == 404, path


async def test_the_build_is_prepared_for_viewer(viewer_dist):
    """Chunks, workers and wasm are loaded from /viewer/, the font from /viewer/ too."""
    bundle = next(viewer_dist.glob("app.bundle.*.js")).read_text()
    assert '__webpack_require__.p = "/viewer/";' in bundle
    assert '__webpack_require__.p = "/";' not in bundle
    assert "url(/viewer/" in (viewer_dist / "app.bundle.css").read_text()
    assert not (viewer_dist / "app-config.js").exists()  # ours is served instead


async def test_app_config_points_ohif_at_our_dicomweb_on_the_same_origin(client):
    response = await client.get("/viewer/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    # Run it as the browser would (Node is installed with npm for deploy/dev/ohif.sh).
    script = (
        "globalThis.window={location:{origin:'http://127.0.0.1:8000',pathname:'/viewer/',search:''}};"
        f"{response.text}\n"
        "process.stdout.write(JSON.stringify(window.config));"
    )
    out = subprocess.run(["node", "-e", script], check=True, capture_output=True, text=True)
    config = json.loads(out.stdout)
    assert config["routerBasename"] == "/viewer"
    assert config["defaultDataSourceName"] == "dicomflow"
    (source,) = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    c = source["configuration"]
    assert c["qidoRoot"] == c["wadoRoot"] == "http://127.0.0.1:8000/dicom-web"
    assert c["wadoUriRoot"] == "http://127.0.0.1:8000/dicom-web/wado"
    assert c["supportsFuzzyMatching"] is True and c["supportsWildcard"] is True
    assert c["imageRendering"] == "wadors" and c["staticWado"] is False
    assert "https://" not in response.text


async def test_a_missing_or_foreign_build_fails_at_start(tmp_path, viewer_dist):
    with pytest.raises(ViewerNotInstalled, match=r"deploy/dev/ohif\.sh"):
        ViewerFiles.load(tmp_path)
    (tmp_path / "index.html").write_bytes((viewer_dist / "index.html").read_bytes())
    (tmp_path / ".dicomflow-installed").write_text("@ohif/app@3.13.2 sha512-x /")
    with pytest.raises(ViewerNotInstalled, match="not prepared for /viewer/"):
        ViewerFiles.load(tmp_path)
