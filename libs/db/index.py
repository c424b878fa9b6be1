"""The index: idempotent upserts of patients, studies, series, instances and their sources.

An instance is inserted once (by SOPInstanceUID); only a real insert changes the
study's counters and bumps its `revision`, so redelivery never counts twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from libs.contracts.events import (
    DicomHeader,
    InstanceDuplicated,
    InstanceStored,
    PatientAttrs,
    SeriesAttrs,
    StudyAttrs,
    StudySnapshot,
)
from libs.db import Conn, ledger
from libs.dicom.names import search_key
from libs.storage.base import study_prefix

STAGE = "indexer"
PREAMBLE_ZEROED = "preamble zeroed"  # instances.modifications


def parse_da(value: str) -> date | None:
    """DICOM DA (YYYYMMDD) to a date; anything else (empty, partial, invalid) is None."""
    value = value.strip().replace("-", "").replace(".", "")
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def format_da(value: date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def patient_key(p: PatientAttrs) -> str:
    """Patients are identified by (issuer, id); without an id, by name and birth date."""
    if p.patient_id.strip():
        return f"id:{p.issuer_of_patient_id.strip()}\x1f{p.patient_id.strip()}"
    return f"name:{p.patient_name.strip()}\x1f{p.birth_date.strip()}"


async def _upsert_hierarchy(conn: Conn, h: DicomHeader, file_id: int | None) -> None:
    await upsert_levels(conn, h.patient, h.study, h.series, file_id)


async def upsert_levels(
    conn: Conn, p: PatientAttrs, s: StudyAttrs, se: SeriesAttrs, file_id: int | None = None
) -> None:
    """Patient, study and series in one round trip (the study takes the patient's id from
    RETURNING; the series' foreign key is checked at the end of the statement). `file_id`:
    the discovered file behind it, kept as the patient's first when the patient is new."""
    await conn.execute(
        """WITH patient AS (
               INSERT INTO patients (patient_key, patient_id, issuer, patient_name, name_search,
                                     birth_date, sex, first_file_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $21::bigint)
               ON CONFLICT (patient_key) DO UPDATE
                  SET patient_name = EXCLUDED.patient_name, name_search = EXCLUDED.name_search,
                      birth_date = coalesce(EXCLUDED.birth_date, patients.birth_date),
                      sex = CASE WHEN EXCLUDED.sex <> '' THEN EXCLUDED.sex ELSE patients.sex END,
                      updated_at = now()
               RETURNING id
           ), study AS (
               INSERT INTO studies (study_uid, patient_pk, study_date, study_time,
                                    accession_number, study_description, study_id,
                                    referring_physician, storage_prefix)
               SELECT $8::text, patient.id, $9::date, $10::text, $11::text, $12::text,
                      $13::text, $14::text, $15::text
                 FROM patient
               ON CONFLICT (study_uid) DO NOTHING
           )
           INSERT INTO series (series_uid, study_uid, modality, series_number,
                               series_description, body_part)
           VALUES ($16, $8, $17, $18, $19, $20) ON CONFLICT (series_uid) DO NOTHING""",
        patient_key(p),
        p.patient_id,
        p.issuer_of_patient_id,
        p.patient_name,
        search_key(p.patient_name),
        parse_da(p.birth_date),
        p.sex,
        s.study_uid,
        parse_da(s.study_date),
        s.study_time,
        s.accession_number,
        s.study_description,
        s.study_id,
        s.referring_physician,
        study_prefix(s.study_uid),
        se.series_uid,
        se.modality,
        se.series_number,
        se.series_description,
        se.body_part,
        file_id,
    )


INSTANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sop_instance_uid", "text"),
    ("series_uid", "text"),
    ("study_uid", "text"),
    ("sop_class_uid", "text"),
    ("instance_number", "int"),
    ("transfer_syntax_uid", "text"),
    ("specific_character_set", "text"),
    ("rows", "int"),
    ("columns", "int"),
    ("number_of_frames", "int"),
    ("size_bytes", "bigint"),
    ("file_sha256", "text"),
    ("content_sha256", "text"),
    ("storage_url", "text"),
    ("same_content_as", "text"),
    ("first_file_id", "bigint"),
    ("dicom_json", "text"),
    ("modifications", "text"),  # '|'-joined here (unnest flattens arrays), text[] in the table
)


def instance_values(value: Callable[[str], str]) -> str:
    """The INSERT's value list for INSTANCE_COLUMNS, `value(name)` being where each comes
    from (a placeholder, an unnested column); `modifications` goes from '|'-joined text to
    the table's text[]."""
    out = [value(name) for name, _ in INSTANCE_COLUMNS]
    at = [name for name, _ in INSTANCE_COLUMNS].index("modifications")
    out[at] = f"COALESCE(string_to_array({out[at]}, '|'), '{{}}'::text[])"
    return ", ".join(out)


def instance_row(ev: InstanceStored) -> tuple[object, ...]:
    h, i = ev.header, ev.header.instance
    return (
        i.sop_instance_uid,
        h.series.series_uid,
        h.study.study_uid,
        i.sop_class_uid,
        i.instance_number,
        i.transfer_syntax_uid,
        i.specific_character_set,
        i.rows,
        i.columns,
        i.number_of_frames,
        ev.file.size,
        ev.hashes.file_sha256,
        ev.hashes.content_sha256,
        ev.storage_url,
        ev.related_sop_instance_uid,
        ev.file.file_id,
        h.dicom_json,
        PREAMBLE_ZEROED if ev.hashes.preamble_zeroed else None,
    )


_POSITION = {name: n for n, (name, _) in enumerate(INSTANCE_COLUMNS, 1)}


async def revised_instances(conn: Conn, uids: list[str]) -> set[str]:
    """Those of `uids` indexed with a header correction (ADR 0025): their original, indexed
    again (a redelivery, a rebuild), must not put its patient, study and series back."""
    rows = await conn.fetch(
        "SELECT sop_instance_uid FROM instances WHERE sop_instance_uid = any($1) AND revision > 1",
        uids,
    )
    return {r["sop_instance_uid"] for r in rows}


async def index_instance(conn: Conn, ev: InstanceStored) -> float | None:
    """Index a stored instance (or record a conflict); idempotent. Returns the seconds since
    the file's discovery when this call recorded its outcome (see `ledger.mark_outcome`)."""
    h, i = ev.header, ev.header.instance
    async with conn.transaction():
        await _record_source(conn, ev)
        if ev.disposition == "conflict":
            await conn.execute(
                """INSERT INTO conflicts (sop_instance_uid, content_sha256, study_uid, storage_url,
                                          file_id, source, uri)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
                i.sop_instance_uid,
                ev.hashes.content_sha256,
                h.study.study_uid,
                ev.storage_url,
                ev.file.file_id,
                ev.source,
                ev.file.uri,
            )
            return await _outcome(conn, ev, "conflict", "same SOPInstanceUID, different content")
        if not await revised_instances(conn, [i.sop_instance_uid]):  # else keep the correction
            await _upsert_hierarchy(conn, h, ev.file.file_id)
        columns = ", ".join(name for name, _ in INSTANCE_COLUMNS)  # fixed names, never input
        values = instance_values(lambda name: f"${_POSITION[name]}")
        inserted = await conn.fetchval(
            f"""INSERT INTO instances ({columns}) VALUES ({values})
                ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING true""",
            *instance_row(ev),
        )
        if inserted:
            await _count_instance(conn, h, ev.file.size)
        reason = "same_content_other_uid" if ev.disposition == "same_content_other_uid" else None
        return await _outcome(conn, ev, "indexed", reason)


async def _count_instance(conn: Conn, h: DicomHeader, size: int) -> None:
    """Only for a real insert: the counters, modalities and a new revision, in one trip."""
    await conn.execute(
        """WITH counted AS (
               UPDATE series SET instance_count = instance_count + 1,
                                 size_bytes = size_bytes + $2
                WHERE series_uid = $4
           )
           UPDATE studies
              SET instance_count = instance_count + 1, size_bytes = size_bytes + $2,
                  series_count = (SELECT count(*) FROM series WHERE study_uid = $1),
                  modalities = CASE WHEN $3 = '' OR $3 = ANY (modalities) THEN modalities
                                    ELSE ARRAY(SELECT m FROM unnest(array_append(modalities, $3))
                                                      AS x(m) ORDER BY m COLLATE "C") END,
                  revision = revision + 1, stable = false, last_instance_at = now(),
                  updated_at = now()
            WHERE study_uid = $1""",
        h.study.study_uid,
        size,
        h.series.modality,
        h.series.series_uid,
    )


async def record_duplicate(conn: Conn, ev: InstanceDuplicated) -> float | None:
    async with conn.transaction():
        await _record_source(conn, ev)
        return await _outcome(conn, ev, "duplicate", None)


async def _record_source(conn: Conn, ev: InstanceStored | InstanceDuplicated) -> None:
    await conn.execute(
        """INSERT INTO instance_sources (sop_instance_uid, source, uri, file_id, content_sha256)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (sop_instance_uid, source, uri)
           DO UPDATE SET file_id = EXCLUDED.file_id, content_sha256 = EXCLUDED.content_sha256,
                         seen_at = now()""",
        ev.header.instance.sop_instance_uid,
        ev.source,
        ev.file.uri,
        ev.file.file_id,
        ev.hashes.content_sha256,
    )


async def _outcome(
    conn: Conn,
    ev: InstanceStored | InstanceDuplicated,
    status: str,
    reason: str | None,
) -> float | None:
    return await ledger.mark_outcome(
        conn,
        ev.file.file_id,
        status,
        stage=STAGE,
        reason=reason,
        sop_instance_uid=ev.header.instance.sop_instance_uid,
        study_uid=ev.header.study.study_uid,
        task_id=ev.file.task_id,
    )


async def study_snapshot(conn: Conn, study_uid: str) -> StudySnapshot | None:
    row = await conn.fetchrow(
        """SELECT s.*, p.patient_id, p.issuer, p.patient_name, p.birth_date, p.sex
             FROM studies s JOIN patients p ON p.id = s.patient_pk WHERE s.study_uid = $1""",
        study_uid,
    )
    return _snapshot(row) if row else None


def _snapshot(row: Any) -> StudySnapshot:
    return StudySnapshot(
        study_uid=row["study_uid"],
        revision=row["revision"],
        stable=row["stable"],
        patient=PatientAttrs(
            patient_id=row["patient_id"],
            issuer_of_patient_id=row["issuer"],
            patient_name=row["patient_name"],
            birth_date=format_da(row["birth_date"]),
            sex=row["sex"],
        ),
        study_date=format_da(row["study_date"]),
        study_time=row["study_time"],
        accession_number=row["accession_number"],
        study_description=row["study_description"],
        modalities=list(row["modalities"]),
        series_count=row["series_count"],
        instance_count=row["instance_count"],
        size_bytes=row["size_bytes"],
        storage_prefix=row["storage_prefix"],
    )


async def mark_stable(conn: Conn, *, quiet_seconds: float, limit: int) -> list[StudySnapshot]:
    """Studies with no new instance for `quiet_seconds` become stable (a new revision).
    Call inside a transaction that commits only after their events are acknowledged."""
    uids = await conn.fetch(
        """UPDATE studies SET stable = true, revision = revision + 1, updated_at = now()
            WHERE study_uid IN (SELECT study_uid FROM studies
                                 WHERE NOT stable
                                   AND last_instance_at < now() - make_interval(secs => $1)
                                 ORDER BY last_instance_at LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING study_uid""",
        quiet_seconds,
        limit,
    )
    snapshots = [await study_snapshot(conn, r["study_uid"]) for r in uids]
    return [s for s in snapshots if s is not None]


@dataclass(frozen=True)
class SeriesSummary:
    attrs: SeriesAttrs
    instance_count: int
    size_bytes: int


async def record_study_summary(
    conn: Conn, patient: PatientAttrs, study: StudyAttrs, series: list[SeriesSummary]
) -> StudySnapshot:
    """Index a whole study as another archive describes it, without its instances (metadata-only
    sources): the levels are upserted as the indexer does, then the study's attributes and
    counters are set from the summary and its revision bumped. Call inside a transaction."""
    assert series, "a study summary needs at least one series"
    for se in series:
        await upsert_levels(conn, patient, study, se.attrs)
    await conn.execute(
        """UPDATE series SET instance_count = u.n, size_bytes = u.size
             FROM unnest($1::text[], $2::int[], $3::bigint[]) AS u(uid, n, size)
            WHERE series.series_uid = u.uid""",
        [se.attrs.series_uid for se in series],
        [se.instance_count for se in series],
        [se.size_bytes for se in series],
    )
    modalities = sorted({se.attrs.modality for se in series if se.attrs.modality})
    await conn.execute(
        """UPDATE studies
              SET study_date = $2, study_time = $3, accession_number = $4,
                  study_description = $5, study_id = $6, referring_physician = $7,
                  modalities = $8, series_count = $9, instance_count = $10, size_bytes = $11,
                  patient_pk = (SELECT id FROM patients WHERE patient_key = $12),
                  revision = revision + 1, stable = false, last_instance_at = now(),
                  updated_at = now()
            WHERE study_uid = $1""",
        study.study_uid,
        parse_da(study.study_date),
        study.study_time,
        study.accession_number,
        study.study_description,
        study.study_id,
        study.referring_physician,
        modalities,
        len(series),
        sum(se.instance_count for se in series),
        sum(se.size_bytes for se in series),
        patient_key(patient),  # the archive may have moved the study to another patient
    )
    snapshot = await study_snapshot(conn, study.study_uid)
    assert snapshot is not None
    return snapshot
