"""Receiver settings, the committer's group commit, and the watcher's decisions."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.dicom_net.errors import FailureStatus
from libs.dicom_net.models import Level, Match, Query
from services.dicom_receiver.config import ReceiverSettings
from services.pacs_watcher.config import WatcherSettings
from services.pacs_watcher.policy import next_backoff, query_window, to_retrieve


def test_allow_list_with_and_without_ip() -> None:
    s = ReceiverSettings(allowed_callers="CT1, MR1@10.0.0.5")  # type: ignore[arg-type]
    assert s.allows("CT1", "192.168.1.1")
    assert s.allows("MR1", "10.0.0.5")
    assert not s.allows("MR1", "10.0.0.6")
    assert not s.allows("OTHER", "10.0.0.5")
    assert ReceiverSettings().allows("ANYONE", "127.0.0.1")  # empty list: anyone


@pytest.mark.parametrize("bad", ["TOO_LONG_AE_TITLE_X", "CT@not-an-ip", "@10.0.0.1"])
def test_bad_callers_fail_fast(bad: str) -> None:
    with pytest.raises(ValidationError):
        ReceiverSettings(allowed_callers=bad)  # type: ignore[arg-type]


def test_tls_key_and_cert_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        ReceiverSettings(tls_cert=tmp_path / "c.pem")


def test_query_window_overlaps_the_watermark() -> None:
    today = date(2026, 3, 10)
    assert query_window(None, today, lookback=7, overlap=1) == "20260303-"
    assert query_window(date(2026, 3, 9), today, lookback=7, overlap=1) == "20260308-"


def test_only_new_or_grown_studies_are_retrieved() -> None:
    studies = [
        Match(level=Level.STUDY, study_uid="1.1", number_of_instances=10),
        Match(level=Level.STUDY, study_uid="1.2", number_of_instances=10),
        Match(level=Level.STUDY, study_uid="1.3", number_of_instances=None),
        Match(level=Level.STUDY, study_uid="1.4", number_of_instances=3),
    ]
    todo = to_retrieve(studies, {"1.1": 10, "1.2": 7, "1.3": 5})
    assert [m.study_uid for m in todo] == ["1.2", "1.3", "1.4"]


def test_backoff_doubles_to_a_ceiling() -> None:
    assert next_backoff(10, base=10, ceiling=60) == 20
    assert next_backoff(40, base=10, ceiling=60) == 60


def test_night_window_wraps_midnight() -> None:
    s = WatcherSettings(night_window="22:00-06:00")
    assert s.in_window(time(23, 0)) and s.in_window(time(5, 59))
    assert not s.in_window(time(12, 0))
    assert WatcherSettings().in_window(time(12, 0))
    with pytest.raises(ValidationError):
        WatcherSettings(night_window="late")


def test_query_identifiers() -> None:
    q = Query(level=Level.SERIES, study_uid="1.2", modality="CT")
    ds = q.identifier()
    assert ds.QueryRetrieveLevel == "SERIES" and ds.Modality == "CT" and "SeriesInstanceUID" in ds
    r = q.retrieve_identifier()
    assert set(r.dir()) == {"QueryRetrieveLevel", "StudyInstanceUID"}
    with pytest.raises(ValidationError):
        Query(study_date="2024-01-01")


def test_failure_status_names_code_and_meaning() -> None:
    err = FailureStatus("C-MOVE", 0xA801)
    assert str(err) == "C-MOVE failed with status 0xA801: Refused: move destination unknown"
