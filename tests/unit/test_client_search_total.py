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
