"""Progress with no Content-Length: the first GET of a tar or tar.zst not cached yet is
streamed while the server builds it, so only `X-Archive-Instance-Bytes` (the study's size
before packing) gives a scale. The client core reports it as an estimate from the first
byte, never lets the count pass it, ends on the exact size, and saves the exact size for a
later resume; the fetch command's bar and the desktop window say "about"."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from dicomflow_client.download import Partial, download
from dicomflow_client.progress import Progress

from libs.tools.fetch_cli import bar_fields

ARCHIVE = os.urandom(150_000)


def streamed(instance_bytes: str | None, *, pause: float = 0.0) -> httpx.MockTransport:
    """Answers like the packager's first GET of a tar: chunked, no Content-Length."""

    def answer(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            for start in range(0, len(ARCHIVE), 50_000):
                yield ARCHIVE[start : start + 50_000]
                time.sleep(pause)

        headers = {"etag": '"rev1"'}
        if instance_bytes is not None:
            headers["x-archive-instance-bytes"] = instance_bytes
        return httpx.Response(200, headers=headers, content=body())

    return httpx.MockTransport(answer)


def run(transport: httpx.MockTransport, dest: Path) -> list[Progress]:
    reports: list[Progress] = []
    with httpx.Client(transport=transport) as http:
        got = download(http, "http://archive.test/a?format=tar", dest, progress=reports.append)
    assert dest.read_bytes() == ARCHIVE and got.size == len(ARCHIVE)
    return reports


def test_a_streamed_archive_is_scaled_by_the_instance_bytes(tmp_path: Path) -> None:
    # The tar is larger than the instances it holds (a header per file): 120,000 < 150,000.
    reports = run(streamed("120000", pause=0.25), tmp_path / "a.part")
    first, last = reports[0], reports[-1]
    assert (first.done, first.total, first.estimated) == (0, 120_000, True)
    assert first.fraction == 0.0 and first.eta is None
    middle = [r for r in reports[1:-1] if r.stage == "download"]
    assert middle and all(r.estimated and r.total == max(120_000, r.done) for r in middle)
    assert all(r.fraction is not None and r.fraction <= 1.0 for r in reports)
    assert (last.done, last.total, last.estimated) == (len(ARCHIVE), len(ARCHIVE), False)
    # The exact size is known once the stream ended: a later resume checks against it.
    assert Partial(tmp_path / "a.part").meta()["size"] == len(ARCHIVE)


@pytest.mark.parametrize("header", [None, "", "0", "many", "-5"])
def test_without_a_usable_instance_bytes_header_the_size_is_unknown(
    tmp_path: Path, header: str | None
) -> None:
    first = run(streamed(header), tmp_path / "a.part")[0]
    assert (first.total, first.estimated, first.fraction) == (None, False, None)


def test_an_exact_content_length_wins_over_the_estimate(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"etag": '"r"', "content-length": str(len(ARCHIVE))}
        headers["x-archive-instance-bytes"] = "999"
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(ARCHIVE))

    first = run(httpx.MockTransport(answer), tmp_path / "a.part")[0]
    assert (first.total, first.estimated) == (len(ARCHIVE), False)


def test_the_fetch_bar_says_about_for_an_estimate() -> None:
    estimate = bar_fields(Progress(10_000, 120_000, 5_000.0, estimated=True))
    assert estimate == {"completed": 10_000, "total": 120_000, "description": "download (about)"}
    exact = bar_fields(Progress(10_000, 150_000, 5_000.0))
    assert exact == {"completed": 10_000, "total": 150_000, "description": "download"}
    unknown = bar_fields(Progress(10_000, None, 5_000.0))
    assert unknown == {"completed": 10_000, "total": None, "description": "download"}
    assert bar_fields(Progress(5, 9, 0.0, stage="unpack"))["description"] == "unpack"


def test_the_desktop_window_shows_an_estimated_total(qtbot: Any, tmp_path: Path) -> None:
    from dicomflow_desktop.settings import Settings, Store
    from dicomflow_desktop.window import MainWindow

    w = MainWindow(Store(tmp_path / "config"), Settings(api_key="dfk_key"))
    qtbot.addWidget(w)
    w._current = "Study 1 of 1"
    w._progress(Progress(1 << 20, 4 << 20, float(1 << 20), estimated=True))
    assert (w.progress.minimum(), w.progress.maximum(), w.progress.value()) == (0, 1000, 250)
    assert w.progress_label.text() == (
        "Study 1 of 1: 1.0 MB of about 4.0 MB · 1.0 MB/s · about 0:03 left"
    )
    w._progress(Progress(2 << 20, 4 << 20, float(1 << 20)))
    assert w.progress_label.text() == "Study 1 of 1: 2.0 MB of 4.0 MB · 1.0 MB/s · 0:02 left"
    w._progress(Progress(1 << 20, None, float(1 << 20)))
    assert w.progress.maximum() == 0  # busy bar: no scale at all
    assert w.progress_label.text() == "Study 1 of 1: 1.0 MB so far · 1.0 MB/s"
