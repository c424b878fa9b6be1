"""Study search and study detail over the index (patients, studies, series).

The WHERE clause is assembled from fixed SQL fragments only; every value a caller
gives travels as a `$n` parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from libs.db import Conn
from libs.dicom.names import search_patterns


@dataclass(frozen=True)
class StudyFilter:
    """Every field is optional; the ones given are combined with AND."""

    patient_name: str | None = None  # matched on name_search: prefix or word start
    patient_id: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    year: int | None = None
    study_date_from: date | None = None  # inclusive
    study_date_to: date | None = None  # inclusive
    accession_number: str | None = None
    modality: str | None = None


@dataclass(frozen=True)
class PatientRow:
    patient_id: str
    patient_name: str
    birth_date: date | None
    sex: str


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    study_date: date | None
    study_time: str
    accession_number: str
    study_description: str
    modalities: list[str]
    series_count: int
    instance_count: int
    size_bytes: int
    stable: bool
    revision: int
    patient: PatientRow
    # The archive it was taken from no longer has it (our copy stays): when, which archive.
    source_deleted_at: datetime | None = None
    source_deleted_from: str | None = None
    # The study's representative image (search results only): first series, first image.
    thumbnail_series_uid: str | None = None
    thumbnail_sop_uid: str | None = None


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    instance_count: int
    size_bytes: int


@dataclass(frozen=True)
class CorrectionRow:
    """A header correction indexed for one of the study's instances (ADR 0025)."""

    sop_instance_uid: str
    revision: int
    patient_id: str
    patient_name: str
    indexed_at: datetime


@dataclass(frozen=True)
class StudyDetail:
    study: StudyRow
    series: list[SeriesRow]
    corrections: list[CorrectionRow] = field(default_factory=list)


_STUDY_COLUMNS = """s.study_uid, s.study_date, s.study_time, s.accession_number,
    s.study_description, s.modalities, s.series_count, s.instance_count, s.size_bytes,
    s.stable, s.revision, s.source_deleted_at, s.source_deleted_from, p.patient_id,
    p.patient_name, p.birth_date, p.sex"""
_FROM = "FROM studies s JOIN patients p ON p.id = s.patient_pk"
# An instance with Rows is an image; the lowest series number, then instance number, wins.
# Series by series, in that order, until one has an image (its first by instance number):
# a page of 50 costs 0.7 ms here, against 1.9 when every instance of each study was sorted
# and joined to its series (1M-instance bench index, 10 instances a study).
_THUMBNAIL = """LEFT JOIN LATERAL (
        SELECT se.series_uid AS thumbnail_series_uid, i.sop_instance_uid AS thumbnail_sop_uid
          FROM (SELECT series_uid, series_number FROM series
                 WHERE study_uid = s.study_uid
                 ORDER BY series_number NULLS LAST, series_uid) se
         CROSS JOIN LATERAL (
                SELECT i.sop_instance_uid FROM instances i
                 WHERE i.series_uid = se.series_uid AND i.rows IS NOT NULL
                 ORDER BY i.instance_number NULLS LAST, i.sop_instance_uid
                 LIMIT 1) i
         ORDER BY se.series_number NULLS LAST, se.series_uid
         LIMIT 1) t ON true"""


class _Where:
    """Collects fixed fragments; each `{}` in a fragment becomes the next `$n`."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, fragment: str, *values: Any) -> None:
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.clauses.append("(" + fragment.format(*marks) + ")")

    def sql(self) -> str:
        return "WHERE " + " AND ".join(self.clauses) if self.clauses else ""


Where = _Where  # shared with the DICOMweb queries (libs/db/dicomweb.py)


# A search counts its matches up to this many (or to the end of the page asked for, if
# further); beyond, its total is a lower bound. Counting every match was most of a broad
# search's time on the 1M-instance bench index: 4.7 ms of PostgreSQL for 10,000 studies of
# one modality, 6.9 for the 10,000 of a one-syllable name, 5-10 for all 100,000.
#
# Up to this many, the page is sorted out of the matches the count read (one statement);
# beyond, a page walks the date index and keeps the studies of the matching patients (a
# hashed semi-join) rather than looking up every one of them by patient and sorting:
# 10,000 studies of 5,000 patients took 31 ms that way, 2.4 this way. The crossover is near
# this limit: 2,000 studies of 1,000 patients took 3.0-4.4 ms walking against 5.6-8.5
# looked up, 1,000 studies 6.1-6.3 walking against 3.9-4.3 (pgbench, bench index).
COUNT_LIMIT = 1000


@dataclass(frozen=True)
class StudyMatches:
    total: int  # exact, or (exact False) a lower bound: at least this many match
    exact: bool
    rows: list[StudyRow]


def _where(f: StudyFilter, *, many: bool = False) -> _Where:
    """Conditions on studies only (no join): the patient's fields are matched once, in an
    InitPlan whose ids the studies are then looked up by (`studies_patient`), or, when
    `many` studies match, as a semi-join the planner can hash. Joined row by row instead, a
    page walked the date index probing patients for each study, and the count joined every
    patient: 50-280 ms on 100,000 studies instead of a few."""
    p = _Where()
    if f.patient_name is not None:
        prefix, word_start = search_patterns(f.patient_name)
        p.add(
            r"p.name_search LIKE {} ESCAPE '\' OR p.name_search LIKE {} ESCAPE '\'",
            prefix,
            word_start,
        )
    if f.patient_id is not None:
        p.add("p.patient_id = {}", f.patient_id)
    if f.birth_date is not None:
        p.add("p.birth_date = {}", f.birth_date)
    if f.sex is not None:
        p.add("p.sex = {}", f.sex)
    w = _Where()
    if p.clauses:
        patients = f"SELECT p.id FROM patients p {p.sql()}"
        w.clauses.append(
            f"(s.patient_pk IN ({patients}))"
            if many
            else f"(s.patient_pk = ANY(ARRAY({patients})))"
        )
        w.args.extend(p.args)
    if f.year is not None:  # a range, so the index on study_date is used
        w.add(
            "s.study_date >= {} AND s.study_date < {}", date(f.year, 1, 1), date(f.year + 1, 1, 1)
        )
    if f.study_date_from is not None:
        w.add("s.study_date >= {}", f.study_date_from)
    if f.study_date_to is not None:
        w.add("s.study_date <= {}", f.study_date_to)
    if f.accession_number is not None:
        w.add("s.accession_number = {}", f.accession_number)
    if f.modality is not None:  # containment, so the GIN index on modalities is used
        w.add("s.modalities @> ARRAY[{}]::text[]", f.modality)
    return w


def _study(row: Any) -> StudyRow:
    """Read by column position (`_STUDY_COLUMNS`, then the thumbnail's), not through
    `StudyRow(**dict(row))`: a page of 50 took 0.44 ms of CPU that way, 0.32 this way."""
    thumbnail = len(row) > 17
    return StudyRow(
        study_uid=row[0],
        study_date=row[1],
        study_time=row[2],
        accession_number=row[3],
        study_description=row[4],
        modalities=list(row[5]),
        series_count=row[6],
        instance_count=row[7],
        size_bytes=row[8],
        stable=row[9],
        revision=row[10],
        source_deleted_at=row[11],
        source_deleted_from=row[12],
        patient=PatientRow(
            patient_id=row[13], patient_name=row[14], birth_date=row[15], sex=row[16]
        ),
        thumbnail_series_uid=row[17] if thumbnail else None,
        thumbnail_sop_uid=row[18] if thumbnail else None,
    )


async def search_studies(
    conn: Conn, f: StudyFilter, *, limit: int, offset: int, count_limit: int = COUNT_LIMIT
) -> StudyMatches:
    """The matches counted up to `count_limit` (or to the end of this page, if further), and
    one page, ordered by study date, newest first, then study UID. The page is chosen on
    studies alone; only its rows are joined to their patient and thumbnail.

    One statement first: the matching studies' keys up to the limit and one more, their
    count, and, when that is all of them, the page sorted out of those. Only when more match
    does a second statement walk the dates for the page."""
    w = _where(f)
    cap = max(count_limit, offset + limit)
    n = len(w.args)
    rows = await conn.fetch(
        f"""WITH m AS MATERIALIZED (
                SELECT s.study_uid, s.study_date FROM studies s {w.sql()} LIMIT ${n + 1})
            SELECT page.*, c.counted
              FROM (SELECT count(*) AS counted FROM m) c
              LEFT JOIN LATERAL (
                SELECT {_STUDY_COLUMNS}, t.thumbnail_series_uid, t.thumbnail_sop_uid
                  FROM (SELECT m.study_uid FROM m
                         WHERE c.counted < ${n + 1}
                         ORDER BY m.study_date DESC NULLS LAST, m.study_uid
                         LIMIT ${n + 2} OFFSET ${n + 3}) k
                  JOIN studies s ON s.study_uid = k.study_uid
                  JOIN patients p ON p.id = s.patient_pk {_THUMBNAIL}) page ON true
             ORDER BY page.study_date DESC NULLS LAST, page.study_uid""",
        *w.args,
        cap + 1,
        limit,
        offset,
    )
    counted = rows[0]["counted"]
    if counted <= cap:
        return StudyMatches(counted, True, [_study(r) for r in rows if r[0] is not None])
    w = _where(f, many=True)
    rows = await conn.fetch(
        f"""SELECT {_STUDY_COLUMNS}, t.thumbnail_series_uid, t.thumbnail_sop_uid
              FROM (SELECT * FROM studies s {w.sql()}
                     ORDER BY s.study_date DESC NULLS LAST, s.study_uid
                     LIMIT ${n + 1} OFFSET ${n + 2}) s
              JOIN patients p ON p.id = s.patient_pk {_THUMBNAIL}
             ORDER BY s.study_date DESC NULLS LAST, s.study_uid""",
        *w.args,
        limit,
        offset,
    )
    return StudyMatches(cap, False, [_study(r) for r in rows])


async def get_study(conn: Conn, study_uid: str) -> StudyDetail | None:
    row = await conn.fetchrow(f"SELECT {_STUDY_COLUMNS} {_FROM} WHERE s.study_uid = $1", study_uid)
    if row is None:
        return None
    series = await conn.fetch(
        """SELECT series_uid, modality, series_number, series_description, body_part,
                  instance_count, size_bytes
             FROM series WHERE study_uid = $1
            ORDER BY series_number NULLS LAST, series_uid""",
        study_uid,
    )
    corrections = await conn.fetch(
        """SELECT sop_instance_uid, revision, header->'patient'->>'patient_id' AS patient_id,
                  header->'patient'->>'patient_name' AS patient_name, indexed_at
             FROM instance_revisions WHERE study_uid = $1
            ORDER BY indexed_at, sop_instance_uid, revision""",
        study_uid,
    )
    return StudyDetail(
        study=_study(row),
        series=[SeriesRow(**dict(r)) for r in series],
        corrections=[CorrectionRow(**dict(r)) for r in corrections],
    )
