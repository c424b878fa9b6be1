"""DICOMweb queries over the index: QIDO-RS matching at the study, series and instance
levels, and the instances (with their stored DICOM JSON) a WADO-RS request names.

Matching follows PS3.4 C.2.2.2 as the index allows: single values (equality, so the btree
indexes are used), wildcards `*` and `?` (LIKE; a leading wildcard cannot use an index),
UID lists, date ranges, and person names through the index's folded `name_search` key
(libs/dicom/names.py), so `PatientName` matching is case and accent insensitive and
`fuzzymatching` also finds a name by the start of any of its words. The SQL is built from
fixed fragments only; every value travels as a parameter (`search.Where`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from libs.db import Conn
from libs.db.search import Where
from libs.dicom.names import search_key, search_patterns


@dataclass(frozen=True)
class QidoFilter:
    """Every field is optional; the ones given are combined with AND."""

    patient_name: str | None = None
    fuzzy: bool = False
    patient_id: str | None = None
    birth_date: tuple[date | None, date | None] | None = None  # inclusive range
    sex: str | None = None
    study_date: tuple[date | None, date | None] | None = None  # inclusive range
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    modalities_in_study: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    sop_uids: list[str] = field(default_factory=list)
    sop_class_uids: list[str] = field(default_factory=list)
    instance_number: int | None = None


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern (escape `\\`): `*` → `%`, `?` → `_`."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text(w: Where, column: str, value: str, *, fold: bool = False) -> None:
    """Single value or wildcard matching; a lone `*` matches everything (no condition)."""
    if value == "*" or value == "":
        return
    if "*" in value or "?" in value:
        op = "ILIKE" if fold else "LIKE"
        w.add(f"{column} {op} {{}} ESCAPE '\\'", like_pattern(value))
    elif fold:
        w.add(f"lower({column}) = lower({{}})", value)
    else:
        w.add(f"{column} = {{}}", value)


def _range(w: Where, column: str, bounds: tuple[date | None, date | None] | None) -> None:
    if bounds is None:
        return
    low, high = bounds
    if low is not None and low == high:
        w.add(f"{column} = {{}}", low)
        return
    if low is not None:
        w.add(f"{column} >= {{}}", low)
    if high is not None:
        w.add(f"{column} <= {{}}", high)


def _patient_name(w: Where, value: str, fuzzy: bool) -> None:
    if value.strip("*") == "":
        return
    if fuzzy:  # the start of the name or of any of its words, like the API's search
        prefix, word_start = search_patterns(value)
        w.add(
            r"p.name_search LIKE {} ESCAPE '\' OR p.name_search LIKE {} ESCAPE '\'",
            prefix,
            word_start,
        )
        return
    key = search_key(value)
    if "*" in key or "?" in key:
        w.add(r"p.name_search LIKE {} ESCAPE '\'", like_pattern(key))
    else:
        w.add("p.name_search = {}", key)


def _where(f: QidoFilter) -> Where:
    w = Where()
    if f.patient_name is not None:
        _patient_name(w, f.patient_name, f.fuzzy)
    if f.patient_id is not None:
        _text(w, "p.patient_id", f.patient_id)
    _range(w, "p.birth_date", f.birth_date)
    if f.sex is not None:
        _text(w, "p.sex", f.sex)
    _range(w, "s.study_date", f.study_date)
    if f.accession_number is not None:
        _text(w, "s.accession_number", f.accession_number)
    if f.study_id is not None:
        _text(w, "s.study_id", f.study_id)
    if f.study_description is not None:
        _text(w, "s.study_description", f.study_description, fold=True)
    if f.modalities_in_study:  # overlap, so the GIN index on modalities is used
        w.add("s.modalities && {}::text[]", f.modalities_in_study)
    if f.study_uids:
        w.add("s.study_uid = ANY({}::text[])", f.study_uids)
    if f.series_uids:
        w.add("se.series_uid = ANY({}::text[])", f.series_uids)
    if f.modality is not None:
        _text(w, "se.modality", f.modality)
    if f.series_number is not None:
        w.add("se.series_number = {}", f.series_number)
    if f.series_description is not None:
        _text(w, "se.series_description", f.series_description, fold=True)
    if f.sop_uids:
        w.add("i.sop_instance_uid = ANY({}::text[])", f.sop_uids)
    if f.sop_class_uids:
        w.add("i.sop_class_uid = ANY({}::text[])", f.sop_class_uids)
    if f.instance_number is not None:
        w.add("i.instance_number = {}", f.instance_number)
    return w


_PATIENT = "p.patient_id, p.patient_name, p.birth_date, p.sex"
_STUDY = f"""s.study_uid, s.study_date, s.study_time, s.accession_number, s.study_description,
    s.study_id, s.referring_physician, s.modalities, s.series_count, s.instance_count,
    s.size_bytes, {_PATIENT}"""
_SERIES = """se.series_uid, se.modality, se.series_number, se.series_description,
    se.body_part, se.instance_count AS series_instance_count, se.size_bytes AS series_size"""
_INSTANCE = """i.sop_instance_uid, i.sop_class_uid, i.instance_number, i.transfer_syntax_uid,
    i.rows, i.columns, i.number_of_frames, i.size_bytes AS instance_size"""
_FROM_STUDY = "studies s JOIN patients p ON p.id = s.patient_pk"
_FROM_SERIES = f"series se JOIN {_FROM_STUDY} ON s.study_uid = se.study_uid"
_FROM_INSTANCE = f"instances i JOIN {_FROM_SERIES} ON se.series_uid = i.series_uid"
_BY_STUDY = "s.study_date DESC NULLS LAST, s.study_uid"
_BY_SERIES = "se.series_number NULLS LAST, se.series_uid"
_BY_INSTANCE = "i.instance_number NULLS LAST, i.sop_instance_uid"


def _sql(
    select: str, source: str, order: str, f: QidoFilter, limit: int, offset: int
) -> tuple[str, list[Any]]:
    w = _where(f)
    n = len(w.args)
    sql = f"SELECT {select} FROM {source} {w.sql()} ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}"
    return sql, [*w.args, limit, offset]


def study_query(f: QidoFilter, *, limit: int, offset: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of a study search (the bench EXPLAINs it)."""
    return _sql(_STUDY, _FROM_STUDY, _BY_STUDY, f, limit, offset)


async def find_studies(
    conn: Conn, f: QidoFilter, *, limit: int, offset: int
) -> list[dict[str, Any]]:
    sql, args = study_query(f, limit=limit, offset=offset)
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def find_series(
    conn: Conn, f: QidoFilter, *, limit: int, offset: int
) -> list[dict[str, Any]]:
    order = _BY_SERIES if f.study_uids else f"{_BY_STUDY}, {_BY_SERIES}"
    sql, args = _sql(f"{_STUDY}, {_SERIES}", _FROM_SERIES, order, f, limit, offset)
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def find_instances(
    conn: Conn, f: QidoFilter, *, limit: int, offset: int
) -> list[dict[str, Any]]:
    order = _BY_INSTANCE if f.series_uids else f"{_BY_STUDY}, {_BY_SERIES}, {_BY_INSTANCE}"
    select = f"{_STUDY}, {_SERIES}, {_INSTANCE}"
    sql, args = _sql(select, _FROM_INSTANCE, order, f, limit, offset)
    return [dict(r) for r in await conn.fetch(sql, *args)]


@dataclass(frozen=True)
class StoredInstance:
    """An instance a WADO request names: where its bytes are, and its stored header."""

    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    number_of_frames: int | None
    dicom_json: str | None
    revision_key: str | None = None  # the latest header correction's bytes (ADR 0025)


async def stored_instances(
    conn: Conn,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    *,
    with_json: bool = False,
) -> list[StoredInstance]:
    """The instances of a study, series or one instance, in series then instance order
    (the instances index, or the primary key, is used)."""
    w = Where()
    w.add("i.study_uid = {}", study_uid)
    if series_uid is not None:
        w.add("i.series_uid = {}", series_uid)
    if sop_uid is not None:
        w.add("i.sop_instance_uid = {}", sop_uid)
    column = "i.dicom_json" if with_json else "NULL::text AS dicom_json"
    rows = await conn.fetch(
        f"""SELECT i.study_uid, i.series_uid, i.sop_instance_uid AS sop_uid,
                   i.transfer_syntax_uid, i.size_bytes, i.number_of_frames, {column},
                   i.revision_key
              FROM instances i JOIN series se ON se.series_uid = i.series_uid
             {w.sql()} ORDER BY {_BY_SERIES}, {_BY_INSTANCE}""",
        *w.args,
    )
    return [StoredInstance(**dict(r)) for r in rows]
