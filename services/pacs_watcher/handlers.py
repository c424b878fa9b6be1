"""What the watcher decides: which date window to query, and which studies to retrieve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta

from libs.dicom_net.models import Match


def query_window(watermark: date | None, today: date, *, lookback: int, overlap: int) -> str:
    """A C-FIND StudyDate range `YYYYMMDD-` starting `overlap` days before the watermark."""
    start = (watermark - timedelta(days=overlap)) if watermark else today - timedelta(lookback)
    return f"{start:%Y%m%d}-"


def to_retrieve(matches: Sequence[Match], indexed: Mapping[str, int]) -> list[Match]:
    """Studies upstream has more instances of than the index (unknown counts: retrieve)."""
    return [
        m
        for m in matches
        if m.study_uid
        and (m.number_of_instances is None or m.number_of_instances > indexed.get(m.study_uid, 0))
    ]


def next_backoff(current: float, *, base: float, ceiling: float) -> float:
    return min(ceiling, max(base, current * 2))
