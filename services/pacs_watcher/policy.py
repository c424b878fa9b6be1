"""What the watcher decides: which date window to query, which studies to retrieve, and for
an on-demand retrieve whether a failure is worth another attempt and when."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta

from libs.dicom_net.models import Match
from libs.dicom_net.retry import transient


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


# -- on-demand retrieves ------------------------------------------------------------------


def plan(matches: Sequence[Match], indexed: Mapping[str, int]) -> tuple[list[Match], list[Match]]:
    """(to retrieve, already indexed): the poller's rule, so a human asking for a study the
    index already holds in full costs the PACS nothing; one answer per study UID."""
    unique = list({m.study_uid: m for m in matches if m.study_uid}.values())
    todo = to_retrieve(unique, indexed)
    wanted = {m.study_uid for m in todo}
    return todo, [m for m in unique if m.study_uid not in wanted]


def too_many(studies: int, limit: int) -> str | None:
    """Why a query may not run (it would flood the PACS), or None."""
    if studies <= limit:
        return None
    return (
        f"the query matched {studies} studies to retrieve, more than "
        f"WATCHER_RETRIEVE_MAX_STUDIES ({limit}): narrow it (a date range, a modality)"
    )


class Failed(Exception):
    """A retrieve task that cannot succeed; the message is its `error`."""


def give_up(exc: BaseException, *, pacs: str, attempts: int, max_attempts: int) -> str | None:
    """The error a retrieve task fails with after `attempts` failed attempts, or None to
    try again later."""
    if isinstance(exc, Failed):
        return str(exc)
    if not transient(exc):
        return f"PACS {pacs}: {exc}"
    if attempts >= max_attempts:
        return f"PACS {pacs} unreachable after {attempts} attempts: {exc}"
    return None
