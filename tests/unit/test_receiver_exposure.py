"""The DICOM receiver refuses to start listening beyond loopback with an empty calling-AE
allow-list, unless RECEIVER_ALLOW_ANY_CALLER says anyone may store."""

from __future__ import annotations

import pytest

from libs.contracts.settings import load_settings
from services.dicom_receiver.config import ReceiverSettings, is_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "pacs-gw.example"])
def test_open_to_anyone_beyond_loopback_stops_the_service(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECEIVER_HOST", host)
    with pytest.raises(SystemExit) as exc:
        load_settings(ReceiverSettings)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "RECEIVER_ALLOWED_CALLERS" in err and "RECEIVER_ALLOW_ANY_CALLER" in err
    assert host in err


def test_an_allow_list_or_an_explicit_setting_lets_it_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECEIVER_HOST", "0.0.0.0")
    monkeypatch.setenv("RECEIVER_ALLOWED_CALLERS", "CT1")
    assert load_settings(ReceiverSettings).allows("CT1", "10.1.1.1")
    monkeypatch.delenv("RECEIVER_ALLOWED_CALLERS")
    monkeypatch.setenv("RECEIVER_ALLOW_ANY_CALLER", "true")
    assert load_settings(ReceiverSettings).allows("ANYONE", "10.1.1.1")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_allow_list(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_loopback(host)
    monkeypatch.setenv("RECEIVER_HOST", host)
    assert load_settings(ReceiverSettings).allows("ANYONE", "127.0.0.1")
