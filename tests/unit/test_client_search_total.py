"""A search total the server gives as a lower bound (`total_exact` false, beyond its
API_SEARCH_COUNT_LIMIT) in the clients: the client core pages on past it and reads it as
"1,000+", `dicomflow fetch` says "1,000+ studies match", and the desktop window (pytest-qt,
offscreen) says "1,000+ studies found (showing 500)". A fake server answers like the API:
1,200 studies, counted up to 1,000 or to the end of the page asked for."""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from dicomflow_client import Client, ClientError, SearchFilter, Total

from libs.tools.fetch_cli import _studies

MATCHES, COUNT_LIMIT = 1200, 1000


def study(n: int) -> dict[str, Any]:
    return {
        "study_uid": f"1.2.3.{n}",
        "study_date": "2024-01-02",
        "modalities": ["CT"],
        "patient": {"patient_id": f"P{n}", "patient_name": "DOE^JANE", "sex": "F"},
    }


def server(matches: int = MATCHES, *, old: bool = False) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        offset = int(request.url.params["offset"])
        cap = max(COUNT_LIMIT, offset + limit)
        body: dict[str, Any] = {
            "total": min(matches, cap),
            "limit": limit,
            "offset": offset,
            "items": [study(n) for n in range(offset, min(matches, offset + limit))],
        }
        if not old:
            body["total_exact"] = matches <= cap
        return httpx.Response(200, json=body)

    return httpx.MockTransport(answer)


def client(transport: httpx.MockTransport) -> Client:
    return Client("http://api.test", "dfk_key", transport=transport)


def test_total_reads_as_a_lower_bound() -> None:
    assert (str(Total(1000, exact=False)), f"{Total(1000, exact=False)}") == ("1,000+", "1,000+")
    assert f"{Total(1234)} studies" == "1,234 studies" and Total(6) == 6
    assert Total(1000, exact=False) > 999 and f"{Total(1000, exact=False):>6}" == "  1000"


def test_paging_goes_on_past_a_lower_bound() -> None:
    with client(server()) as c:
        total, found = c.search(SearchFilter(modality="CT"), limit=500)
        assert (total, total.exact, len(found)) == (1000, False, 500)
        # Asked for more than the server counts: it pages to the end, counted exactly there.
        total, found = c.search(SearchFilter(modality="CT"), limit=5000)
        assert (total, total.exact, len(found)) == (MATCHES, True, MATCHES)
        assert [s.study_uid for s in found] == [f"1.2.3.{n}" for n in range(MATCHES)]
    with client(server(matches=30)) as c:
        total, found = c.search(SearchFilter(), limit=500)
        assert (total, total.exact, len(found)) == (30, True, 30)
    with client(server(old=True)) as c:  # an older server: no total_exact, totals exact
        total, found = c.search(SearchFilter(), limit=5000)
        assert (total, total.exact, len(found)) == (1000, True, 1000)


def test_fetch_cli_says_how_many_match_as_a_lower_bound() -> None:
    args = argparse.Namespace(study_uids=[], limit=20)
    with client(server()) as c, pytest.raises(ClientError) as refused:
        _studies(c, args, SearchFilter(modality="CT"))
    assert str(refused.value) == (
        "1,000+ studies match; narrow the search or raise --limit (now 20)."
    )


def test_the_desktop_window_shows_a_lower_bound(qtbot: Any, tmp_path: Any) -> None:
    from dicomflow_desktop.settings import Settings, Store
    from dicomflow_desktop.window import MainWindow

    store = Store(tmp_path / "config")
    w = MainWindow(store, Settings(server_url="http://api.test", api_key="dfk_key"))
    qtbot.addWidget(w)
    w._client = lambda: client(server())  # type: ignore[method-assign]
    w.search()
    qtbot.waitUntil(lambda: "found" in w.count_label.text(), timeout=20_000)
    assert w.count_label.text() == "1,000+ studies found (showing 500)"
    assert w.table.rowCount() == 500
    w._client = lambda: client(server(matches=1))  # type: ignore[method-assign]
    w.search()
    qtbot.waitUntil(lambda: w.count_label.text() == "1 study found", timeout=20_000)


def test_the_client_core_pages_from_an_offset() -> None:
    with client(server()) as c:
        total, found = c.search(SearchFilter(modality="CT"), limit=500, offset=500)
        assert [s.study_uid for s in found] == [f"1.2.3.{n}" for n in range(500, 1000)]
        assert (total, total.exact) == (1100, False)  # counted to the end of the last page
        total, found = c.search(SearchFilter(modality="CT"), limit=500, offset=1000)
        assert [s.study_uid for s in found] == [f"1.2.3.{n}" for n in range(1000, MATCHES)]
        assert (total, total.exact) == (MATCHES, True)


def test_the_desktop_window_loads_more_studies_page_by_page(qtbot: Any, tmp_path: Any) -> None:
    """500 rows a search; "Load 500 more" adds the next page under them (the selection stays)
    until the server has no more; a new search starts from the first page again."""
    from dicomflow_desktop.settings import Settings, Store
    from dicomflow_desktop.window import MainWindow
    from PySide6.QtCore import Qt

    asked: list[tuple[str, str]] = []
    fake = server()

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.params["offset"], request.url.params.get("modality", "")))
        return fake.handle_request(request)

    w = MainWindow(Store(tmp_path / "config"), Settings(server_url="http://api.test", api_key="k"))
    qtbot.addWidget(w)
    w.show()
    w._client = lambda: client(httpx.MockTransport(answer))  # type: ignore[method-assign]
    w.modality.setCurrentText("CT")
    w.search()
    qtbot.waitUntil(lambda: w.more_button.isEnabled(), timeout=20_000)
    assert (w.table.rowCount(), w.count_label.text()) == (500, "1,000+ studies found (showing 500)")
    assert w.more_button.isVisible() and w.more_button.text() == "Load 500 more"
    w.table.selectRow(3)
    w.modality.setCurrentText("MR")  # edited, not searched: "Load more" goes on with CT

    asked.clear()
    qtbot.mouseClick(w.more_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: w.table.rowCount() == 1000 and w.more_button.isEnabled(), timeout=20_000
    )
    assert asked == [("500", "CT"), ("700", "CT"), ("900", "CT")]
    assert w.count_label.text() == "1,100+ studies found (showing 1,000)"
    assert [s.study_uid for s in w.selected()] == ["1.2.3.3"]  # the selection stays

    qtbot.mouseClick(w.more_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.table.rowCount() == MATCHES, timeout=20_000)
    qtbot.waitUntil(lambda: w.count_label.text() == "1,200 studies found", timeout=20_000)
    assert not w.more_button.isVisible()
    assert [s.study_uid for s in w.studies] == [f"1.2.3.{n}" for n in range(MATCHES)]
    last = w.table.item(MATCHES - 1, 0)
    assert last is not None and last.text() == "DOE JANE"

    w._client = lambda: client(server(matches=30))  # type: ignore[method-assign]
    w.search()
    qtbot.waitUntil(lambda: w.count_label.text() == "30 studies found", timeout=20_000)
    assert w.table.rowCount() == 30 and not w.more_button.isVisible()
