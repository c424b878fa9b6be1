"""A clinician in headless Chromium: signs in with a key, finds a Cyrillic demo patient,
sees thumbnails, opens the study, changes the window and sees the image change, downloads
the study with progress and gets exactly the stored files, signs out; when the session ends
mid-use the next call leads back to sign-in and then to the same page. No console error, no
failed request, nothing fetched from another host. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
import zstandard
from browser import ARTIFACTS, Browser, chromium
from playwright.async_api import Page, expect

from libs.db.apikeys import create_key
from libs.dicom.synthetic import generate_demo_set
from libs.storage.local import path_from_file_url
from load_test.process_stack import Stack

pytestmark = pytest.mark.timeout(900)
IVANOV_ID = "DEMO0001"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_files(data: bytes, fmt: str) -> dict[str, bytes]:
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


async def center_grey(page: Page) -> float:
    """Mean grey level of the middle of the preview, read back from the pixels on screen."""
    value = await page.evaluate(
        """() => {
            const img = document.getElementById("preview");
            const c = document.createElement("canvas");
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const g = c.getContext("2d");
            g.drawImage(img, 0, 0);
            const w = Math.max(1, Math.floor(c.width / 8));
            const d = g.getImageData(c.width / 2 - w / 2, c.height / 2 - w / 2, w, w).data;
            let sum = 0;
            for (let i = 0; i < d.length; i += 4) sum += d[i];
            return sum / (d.length / 4);
        }"""
    )
    return float(value)


async def all_images_loaded(page: Page, selector: str) -> list[int]:
    """naturalWidth of every image matched, once each has finished loading."""
    await page.wait_for_function(
        """(sel) => [...document.querySelectorAll(sel)].length > 0 &&
                    [...document.querySelectorAll(sel)].every((i) => i.complete)""",
        arg=selector,
    )
    widths: list[int] = await page.eval_on_selector_all(
        selector, "(imgs) => imgs.map((i) => i.naturalWidth)"
    )
    return widths


async def test_a_clinician_finds_views_and_downloads_a_study_in_the_browser(
    stack: Stack, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    stack.start("packager")
    await stack.wait_ready(["packager"], timeout=180)
    demo = stack.root / "imports" / "demo"
    count = generate_demo_set(demo)  # what `make up` seeds
    task = await stack.wait_task(await stack.start_import(demo))
    assert task["counters"]["new_instances"] == count, task
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "clinician", "Dr. Петрова")
    study = await pool.fetchrow(
        """SELECT s.study_uid, s.size_bytes FROM studies s JOIN patients p ON p.id = s.patient_pk
            WHERE p.patient_id = $1""",
        IVANOV_ID,
    )
    stored = {
        sha(path_from_file_url(r["storage_url"]).read_bytes())
        for r in await pool.fetch(
            "SELECT storage_url FROM instances WHERE study_uid = $1", study["study_uid"]
        )
    }
    assert len(stored) == 10

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Downloads go to the API's own origin with the session cookie (the API relays them).
    async with chromium(tmp_path / "chromium") as b:
        page = b.page
        await sign_in_from_a_bookmark(b, stack, key)
        await search_in_cyrillic(b, study["size_bytes"])
        await page.screenshot(path=ARTIFACTS / "web-search.png", full_page=True)
        await open_the_study_and_window_it(b)
        await cancel_a_download(b)
        # The tar.zst is not cached yet: streamed while it is built, without a length.
        for fmt in ("tar.zst", "zip"):
            data = await download(b, fmt, tmp_path, slow=True)
            files = archive_files(data, fmt)
            # The instances, beside the manifest.json (and the ZIP's DICOMDIR).
            extras = {k for k in files if k.endswith(("manifest.json", "DICOMDIR"))}
            assert len(extras) == (2 if fmt == "zip" else 1), (fmt, sorted(extras))
            dicoms = {sha(v) for k, v in files.items() if k not in extras}
            assert dicoms == stored, fmt
        await page.screenshot(path=ARTIFACTS / "web-study.png", full_page=True)
        assert b.problems == [] and b.elsewhere == []
        await sign_out(b, stack)
        assert b.problems == [] and b.elsewhere == []
        await an_ended_session_leads_back_to_the_same_page(b, stack, key, pool)
        assert b.elsewhere == []
    async with chromium(tmp_path / "chromium-ops") as b:
        await a_de_identified_copy(b, stack, pool, study["study_uid"], tmp_path)
        assert b.problems == [] and b.elsewhere == []


async def a_de_identified_copy(
    b: Browser, stack: Stack, pool: asyncpg.Pool, study_uid: str, tmp_path: Path
) -> None:
    """Someone from operations makes a de-identified ZIP of the study from its page: the
    progress, then a link; the ZIP holds the 10 images without the patient's ID or the
    study's UID anywhere, and the manifest."""
    page = b.page
    async with pool.acquire() as conn:
        _, key = await create_key(conn, "ops", "Research office")
    await page.goto(f"{stack.api}/studies/{study_uid}")
    await page.get_by_label("Access key").fill(key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Иванов Иван")).to_be_visible()
    await page.get_by_text("De-identified copy").click()
    await page.get_by_role("button", name="Make a de-identified ZIP").click()
    await expect(page.locator("#deid-status")).to_have_text(
        re.compile(r"^Ready: 10 of 10 images, [0-9.]+ kB\.$"), timeout=120_000
    )
    await page.screenshot(path=ARTIFACTS / "web-deid.png", full_page=True)
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download the de-identified ZIP").click()
    got = await info.value
    target = tmp_path / got.suggested_filename
    await got.save_as(target)
    # Chromium reports the navigation a download replaces as aborted: not a failure.
    handed_over = [
        p for p in b.problems if "/archive net::ERR_ABORTED" in p and "/v1/exports/" in p
    ]
    assert len(handed_over) <= 1, b.problems
    for p in handed_over:
        b.problems.remove(p)
    assert got.suggested_filename.startswith("deid-") and got.suggested_filename.endswith(".zip")
    files = archive_files(target.read_bytes(), "zip")
    assert len([n for n in files if n.endswith(".dcm")]) == 10 and "manifest.json" in files
    for name, data in files.items():
        assert IVANOV_ID.encode() not in data and study_uid.encode() not in data, name


async def sign_in_from_a_bookmark(b: Browser, stack: Stack, key: str) -> None:
    page = b.page
    await page.goto(f"{stack.api}/")
    await expect(page).to_have_url(f"{stack.api}/signin?next=%2F")
    await expect(page.get_by_role("heading", name="dicomflow")).to_be_visible()
    await page.screenshot(path=ARTIFACTS / "web-signin.png")
    await page.get_by_label("Access key").fill(key)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{stack.api}/")
    await expect(page.get_by_text("Signed in as")).to_contain_text("Dr. Петрова (clinician)")
    await expect(page.locator("#status")).to_have_text("6 studies, newest first.")
    assert len(await all_images_loaded(page, "#table img.thumb")) == 6
    await page.goto(f"{stack.api}/?limit=4")  # (each page's thumbnails load before leaving it)
    await expect(page.locator("#range")).to_have_text("1–4 of 6")
    await expect(page.get_by_role("link", name="← Previous")).to_be_hidden()
    assert len(await all_images_loaded(page, "#table img.thumb")) == 4
    await page.get_by_role("link", name="Next →").click()
    await expect(page.locator("#range")).to_have_text("5–6 of 6")
    await expect(page.locator("#table tbody tr")).to_have_count(2)
    await expect(page.get_by_role("link", name="Next →")).to_be_hidden()
    assert len(await all_images_loaded(page, "#table img.thumb")) == 2
    await page.get_by_role("link", name="← Previous").click()
    await expect(page.locator("#range")).to_have_text("1–4 of 6")
    assert len(await all_images_loaded(page, "#table img.thumb")) == 4
    await page.goto(f"{stack.api}/")
    assert len(await all_images_loaded(page, "#table img.thumb")) == 6


async def search_in_cyrillic(b: Browser, size_bytes: int) -> None:
    page = b.page
    await page.get_by_label("Patient name").fill("Иванов Иван")
    await page.get_by_label("Sex").select_option(label="Male")
    await page.get_by_label("Study year").fill("2024")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#status")).to_have_text("1 study found.")
    query = dict(parse_qsl(urlsplit(page.url).query))
    assert query == {"patient_name": "Иванов Иван", "sex": "M", "year": "2024"}
    row = page.locator("#table tbody tr")
    await expect(row).to_have_count(1)
    cells = [c.strip() for c in await row.locator("td").all_inner_texts()]
    assert cells[1] == "Иванов Иван\nID DEMO0001", cells
    assert cells[2:9] == ["12 Mar 1965", "Male", "15 Jan 2024", "Demo CT study", "CT", "1", "10"]
    assert cells[9] == f"{size_bytes / 1000:.0f} kB", (cells[9], size_bytes)
    widths = await all_images_loaded(page, "#table img.thumb")
    assert widths and all(w > 0 for w in widths), widths


async def open_the_study_and_window_it(b: Browser) -> None:
    page = b.page
    await page.get_by_role("link", name="Иванов Иван").click()
    await expect(page.get_by_role("heading", name="Иванов Иван")).to_be_visible()
    await expect(page).to_have_title("Иванов Иван · 15 Jan 2024 · dicomflow")
    await expect(page.locator("#patient-facts")).to_contain_text("12 Mar 1965")
    await expect(page.get_by_role("link", name="Open in viewer")).to_be_hidden()  # no /viewer
    await expect(page.get_by_text("De-identified copy")).to_be_hidden()  # ops and admin only
    series = await all_images_loaded(page, ".series-card img.thumb")
    assert series and all(w > 0 for w in series), series
    caption = page.locator("#preview-caption")
    await expect(caption).to_have_text("Image 1 of 10 · window as stored in the image")
    assert (await page.eval_on_selector("#preview", "i => i.naturalWidth")) == 64
    stored = await center_grey(page)
    await page.get_by_label("Lung").check()
    await expect(caption).to_contain_text("window Lung, centre -600, width 1500")
    lung = await center_grey(page)
    assert lung - stored > 50, (stored, lung)  # soft tissue at 40 HU: mid grey, then bright
    await page.get_by_label("Width (WW)").fill("4000")
    await page.get_by_role("button", name="Apply").click()
    await expect(caption).to_contain_text("centre -600, width 4000")
    assert abs(await center_grey(page) - lung) > 10
    await page.get_by_label("Brain").check()
    await expect(caption).to_contain_text("window Brain, centre 40, width 80")
    slider = page.get_by_label("Image number")
    await slider.focus()
    await page.keyboard.press("ArrowRight")
    await expect(caption).to_have_text("Image 2 of 10 · window Brain, centre 40, width 80")
    await expect(page.locator("#instances button[aria-current]")).to_have_attribute(
        "aria-label", "Image 2"
    )
    strip = await all_images_loaded(page, "#instances img")
    assert len(strip) == 10 and all(w > 0 for w in strip)


async def download(b: Browser, fmt: str, tmp_path: Path, *, slow: bool) -> bytes:
    """`slow`: at 25 kB/s (8 kB/s for the smaller tar.zst), so the progress shows part of the
    bytes, the total and the speed. A tar.zst streamed while it is built has no length: its
    scale is the study's size (X-Archive-Instance-Bytes), shown as "of about"."""
    page = b.page
    await throttle(b, (8_000 if fmt == "tar.zst" else 25_000) if slow else -1)
    of = "of about" if fmt == "tar.zst" else "of"
    async with page.expect_download() as info:
        await page.get_by_role("button", name=f"Download {fmt.upper()}").click()
        if slow:
            await expect(page.locator("#download-text")).to_have_text(
                re.compile(rf"^[0-9.]+ kB {of} [0-9.]+ kB · [0-9.]+ kB/s · about [0-9]+ s left$")
            )
            part = await page.eval_on_selector("#download-bar", "b => [b.value, b.max]")
            assert 0 < part[0] < part[1], part
            await throttle(b, -1)  # seen mid-way: the rest at full speed (it took ~20 s)
    got = await info.value
    await throttle(b, -1)
    assert got.suggested_filename.endswith(f".{fmt}"), got.suggested_filename
    assert "Иванов" in got.suggested_filename, got.suggested_filename
    target = tmp_path / got.suggested_filename
    await got.save_as(target)
    data = target.read_bytes()
    await expect(page.locator("#download-label")).to_have_text(f"Saved {got.suggested_filename}")
    text = await page.locator("#download-text").inner_text()
    assert re.fullmatch(r"[0-9.]+ (kB|MB) in [0-9.]+ s \([0-9.]+ (kB|MB|GB)/s\)", text), text
    return data


async def throttle(b: Browser, rate: int) -> None:
    """Bytes per second the page may receive (-1: no limit)."""
    cdp = await b.context.new_cdp_session(b.page)
    await cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": rate, "uploadThroughput": -1},
    )


async def cancel_a_download(b: Browser) -> None:
    page = b.page
    downloads: list[object] = []
    page.on("download", lambda d: downloads.append(d))
    await throttle(b, 10_000)
    await page.get_by_role("button", name="Download ZIP").click()
    await expect(page.locator("#download-text")).to_contain_text(" kB of ")
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#download-label")).to_have_text("Download cancelled.")
    await expect(page.get_by_role("button", name="Download ZIP")).to_be_enabled()
    await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    await throttle(b, -1)
    assert downloads == []  # nothing saved
    aborted = [p for p in b.problems if p.startswith("failed: GET") and "/archive?" in p]
    assert len(aborted) == 1 and "ERR_ABORTED" in aborted[0], b.problems
    b.problems.remove(aborted[0])  # the cancel itself


async def sign_out(b: Browser, stack: Stack) -> None:
    page = b.page
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#message")).to_have_text("You have signed out.")
    await page.goto(f"{stack.api}/studies/1.2.3")
    await expect(page).to_have_url(f"{stack.api}/signin?next=%2Fstudies%2F1.2.3")


async def an_ended_session_leads_back_to_the_same_page(
    b: Browser, stack: Stack, key: str, pool: asyncpg.Pool
) -> None:
    """The session ends on the server while a search is on screen: the next call is a 401,
    the page goes to sign-in, and signing in again brings the same search back."""
    page = b.page
    await page.goto(f"{stack.api}/?patient_name=%D0%9F%D0%B5%D1%82%D1%80%D0%BE%D0%B2%D0%B0")
    await page.get_by_label("Access key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#status")).to_have_text("1 study found.")
    await expect(page.get_by_role("link", name="Петрова Анна Сергеевна")).to_be_visible()
    assert len(await all_images_loaded(page, "#table img.thumb")) == 1
    await page.get_by_role("link", name="Петрова Анна Сергеевна").click()
    await expect(page.locator("#preview-caption")).to_contain_text("Image 1 of 8")
    assert len(await all_images_loaded(page, ".series-card img.thumb, #instances img")) == 9
    await pool.execute("UPDATE api_sessions SET expires_at = now() - interval '1 second'")
    b.expected_statuses.add(401)
    await page.get_by_label("Bone").check()  # the preview is refused: back to sign-in
    await expect(page.locator("#message")).to_have_text(
        "Your session has ended. Sign in again to continue where you were."
    )
    assert "/signin?next=%2Fstudies%2F" in page.url and "reason=expired" in page.url
    await page.get_by_label("Access key").fill(key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Петрова Анна Сергеевна")).to_be_visible()
    assert urlsplit(page.url).path.startswith("/studies/")
    unexpected = [p for p in b.problems if "401" not in p]
    assert unexpected == [], unexpected
    assert json.dumps(b.problems, ensure_ascii=False).count("401") >= 1
