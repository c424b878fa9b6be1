"""The study browser's server side: pages only for a live session (else to sign-in, keeping
the address), `next` never leaves the site, strict headers and no inline script or outside
address in any page or asset, the viewer link only when a viewer is mounted, and the list of
a series' images the study page pages through."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from libs.db.index import index_instance
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage.local import LocalStore
from services.api.web.router import CSP, HERE, local_path
from tests.integration.test_jpg_converter_service import put_canonical

ORIGIN = {"Origin": "http://api.test"}
STUDY, SERIES = synthetic_uid("web-study"), synthetic_uid("web-series")
SOPS = [synthetic_uid(f"web-sop-{n}") for n in range(3)]


async def sign_in(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post("/v1/session", json={"key": key}, headers=ORIGIN)
    assert response.status_code == 200, response.text


def data_attribute(page: str, name: str) -> str:
    match = re.search(rf'data-{name}="([^"]*)"', page)
    assert match, page[:400]
    return match.group(1)


async def test_pages_need_a_session_and_sign_in_comes_back_to_the_same_address(client, keys):
    for path in ("/", "/?patient_name=%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2&offset=25",
                 f"/studies/{STUDY}"):  # fmt: skip
        response = await client.get(path)
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/signin?next={quote(path, safe='')}"
    signin = await client.get("/signin", params={"next": "/?patient_name=Иванов Иван"})
    assert signin.status_code == 200
    assert data_attribute(signin.text, "next") == "/?patient_name=Иванов Иван"

    await sign_in(client, keys.plain["clinician"])
    page = await client.get("/", params={"patient_name": "Иванов"})
    assert page.status_code == 200
    assert data_attribute(page.text, "role") == "clinician"
    assert data_attribute(page.text, "expires")  # the page leaves for sign-in when it ends
    assert (await client.get("/studies/not-a-uid")).status_code == 422

    await client.delete("/v1/session", headers=ORIGIN)
    assert (await client.get("/")).status_code == 303


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "/\\evil.example", "https://evil.example/", "javascript:alert(1)",
     "evil.example", "/\x00", "/a\nb", "", "/" + "a" * 3000],
)  # fmt: skip
def test_next_is_reduced_to_a_local_path(target):
    assert local_path(target) == "/"


async def test_the_sign_in_page_never_sends_a_person_elsewhere(client):
    for target in ("//evil.example/", "https://evil.example/", '/"><script>'):
        page = (await client.get("/signin", params={"next": target})).text
        assert data_attribute(page, "next") in ("/", "/&quot;&gt;&lt;script&gt;")
        assert "<script>" not in page.split("</head>", 1)[1]


async def test_pages_and_assets_carry_strict_headers_and_no_inline_script(client, keys):
    await sign_in(client, keys.plain["clinician"])
    pages = {p: await client.get(p) for p in ("/", f"/studies/{STUDY}", "/signin")}
    for path, response in pages.items():
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        html = response.text
        assert html.startswith("<!doctype html>") and '<meta charset="utf-8">' in html
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
        assert scripts and all('src="/static/' in attrs and not body for attrs, body in scripts)
        assert " style=" not in html and "<style" not in html
        assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
        for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert ref.startswith("/") or ref == "#results", (path, ref)
            if ref.startswith("/static/"):
                asset = await client.get(ref)
                assert asset.status_code == 200, ref
                assert asset.headers["content-security-policy"] == CSP
    for path in (HERE / "static").iterdir():  # nothing is fetched from another host
        text = path.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), path.name
        assert "innerHTML" not in text and "eval(" not in text, path.name


async def test_assets_revalidate_with_an_etag(client):
    first = await client.get("/static/app.css")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/css")
    assert first.headers["cache-control"] == "no-cache"
    again = await client.get("/static/app.css", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    js = await client.get("/static/study.js")
    assert js.headers["content-type"].startswith("text/javascript")
    for missing in ("/static/nope.js", "/static/..%2Frouter.py", "/static/%2E%2E/router.py"):
        assert (await client.get(missing)).status_code == 404, missing


async def test_the_viewer_link_appears_only_when_a_viewer_is_mounted(app: FastAPI, client, keys):
    await sign_in(client, keys.plain["clinician"])
    page = (await client.get(f"/studies/{STUDY}")).text
    assert data_attribute(page, "viewer") == ""
    presets = data_attribute(page, "presets")
    for label in ("Lung", "Bone", "Brain", "Soft tissue"):
        assert label in presets

    @app.get("/viewer/viewer", response_class=PlainTextResponse)
    async def viewer() -> str:
        return "viewer"

    page = (await client.get(f"/studies/{STUDY}")).text
    assert data_attribute(page, "viewer") == "/viewer/viewer"


async def test_the_images_of_a_series_in_instance_order(
    client, keys, pool: asyncpg.Pool, tmp_path: Path
):
    store = LocalStore((tmp_path / "storage").as_uri())
    events = []
    for n, (sop, number) in enumerate(zip(SOPS, (3, 1, 2), strict=True), start=1):
        ds = make_dataset(
            patient_id="WEB1",
            patient_name="Иванов^Иван",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid=sop,
            instance_number=number,
        )
        write_instance(tmp_path / f"{n}.dcm", ds)
        events.append(await put_canonical(store, tmp_path / f"{n}.dcm", 9000 + n))
    async with pool.acquire() as conn:
        for event in events:
            await index_instance(conn, event)
    url = f"/v1/studies/{STUDY}/series/{SERIES}/instances"
    response = await client.get(url, headers=keys.headers("clinician"))
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["instance_number"] for i in items] == [1, 2, 3]
    assert [i["sop_uid"] for i in items] == [SOPS[1], SOPS[2], SOPS[0]]
    base = f"/v1/studies/{STUDY}/series/{SERIES}/instances/{SOPS[1]}"
    assert items[0]["thumbnail_url"] == f"{base}/thumbnail.jpg"
    assert items[0]["preview_url"] == f"{base}/preview.jpg"
    assert items[0]["rows"] == 64 and items[0]["size_bytes"] > 64 * 64 * 2

    other = f"/v1/studies/{STUDY}/series/{synthetic_uid('nope')}/instances"
    assert (await client.get(other, headers=keys.headers("clinician"))).status_code == 404
    assert (await client.get(url)).status_code == 401
