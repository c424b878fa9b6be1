"""The index written a batch at a time: what `index.index_instance` and
`index.record_duplicate` do for one event, for many in one transaction, with one
set-based statement per table (`unnest` of arrays).

The result is the same as indexing the events one after the other, except that a study
gets one new revision per batch rather than one per instance. Rows are written in key
order, so two indexers writing overlapping batches lock them in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from libs.contracts.events import InstanceDuplicated, InstanceStored, PatientAttrs, StudySnapshot
from libs.db import Conn, ledger
from libs.db.index import (
    INSTANCE_COLUMNS,
    STAGE,
    _snapshot,
    instance_row,
    instance_values,
    parse_da,
    patient_key,
    revised_instances,
)
from libs.dicom.names import search_key
from libs.storage.base import revision_key, study_prefix

SEP = "\x1f"  # joins a study's new modalities into one text value


# instances: column -> value of an event. One place to add a column (e.g. dicom_json).
@dataclass(frozen=True)
class Indexed:
    """Per event, in order: seconds since discovery if its outcome was recorded now (None:
    recorded before); per study touched by a non-conflict event: its state after the batch."""

    latencies: list[float | None]
    snapshots: dict[str, StudySnapshot]


async def index_stored_many(conn: Conn, events: Sequence[InstanceStored]) -> Indexed:
    async with conn.transaction():
        await _record_sources(conn, events)
        conflicts = [e for e in events if e.disposition == "conflict"]
        revisions = [e for e in events if e.disposition == "revision"]
        # A correction of an instance not indexed (its original failed) is indexed as it.
        unapplied = await apply_revisions(conn, revisions) if revisions else []
        stored = [
            e for e in events if e.disposition not in ("conflict", "revision") or e in unapplied
        ]
        if conflicts:
            await _record_conflicts(conn, conflicts)
        if stored:
            # The original redelivered after its correction: the index keeps the correction.
            revised = await revised_instances(conn, [instance_uid(e) for e in stored])
            await _upsert_levels(conn, [e for e in stored if instance_uid(e) not in revised])
            inserted = await _insert_instances(conn, stored)
            # An instance twice in the batch (a redelivery) counts once, as its first event.
            counted: dict[str, InstanceStored] = {}
            for e in stored:
                if instance_uid(e) in inserted:
                    counted.setdefault(instance_uid(e), e)
            await _count(conn, list(counted.values()))
        outcomes: list[tuple[InstanceStored, str, str | None]] = []
        for e in events:
            if e.disposition == "conflict":
                outcomes.append((e, "conflict", "same SOPInstanceUID, different content"))
            elif e.disposition == "revision":
                outcomes.append((e, "indexed", "revision"))
            else:
                reason = (
                    "same_content_other_uid" if e.disposition == "same_content_other_uid" else None
                )
                outcomes.append((e, "indexed", reason))
        latencies = await _outcomes(conn, outcomes)
        studies = sorted({e.header.study.study_uid for e in [*stored, *revisions]})
        rows = await conn.fetch(
            """SELECT s.*, p.patient_id, p.issuer, p.patient_name, p.birth_date, p.sex
                 FROM studies s JOIN patients p ON p.id = s.patient_pk
                WHERE s.study_uid = ANY($1::text[])""",
            studies,
        )
    return Indexed(latencies, {r["study_uid"]: _snapshot(r) for r in rows})


async def record_duplicates_many(
    conn: Conn, events: Sequence[InstanceDuplicated]
) -> list[float | None]:
    async with conn.transaction():
        await _record_sources(conn, events)
        return await _outcomes(conn, [(e, "duplicate", None) for e in events])


def instance_uid(e: InstanceStored) -> str:
    return e.header.instance.sop_instance_uid


async def _record_sources(
    conn: Conn, events: Sequence[InstanceStored | InstanceDuplicated]
) -> None:
    last = {(e.header.instance.sop_instance_uid, e.source, e.file.uri): e for e in events}
    keys = sorted(last)
    await conn.execute(
        """INSERT INTO instance_sources (sop_instance_uid, source, uri, file_id, content_sha256)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
           ON CONFLICT (sop_instance_uid, source, uri)
           DO UPDATE SET file_id = EXCLUDED.file_id, content_sha256 = EXCLUDED.content_sha256,
                         seen_at = now()""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [last[k].file.file_id for k in keys],
        [last[k].hashes.content_sha256 for k in keys],
    )


async def _record_conflicts(conn: Conn, events: Sequence[InstanceStored]) -> None:
    await conn.execute(
        """INSERT INTO conflicts (sop_instance_uid, content_sha256, study_uid, storage_url,
                                  file_id, source, uri)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                $6::text[], $7::text[])
           ON CONFLICT DO NOTHING""",
        [e.header.instance.sop_instance_uid for e in events],
        [e.hashes.content_sha256 for e in events],
        [e.header.study.study_uid for e in events],
        [e.storage_url for e in events],
        [e.file.file_id for e in events],
        [e.source for e in events],
        [e.file.uri for e in events],
    )


async def apply_revisions(conn: Conn, events: Sequence[InstanceStored]) -> list[InstanceStored]:
    """Each correction once (by file): recorded in `instance_revisions` with the next revision
    number, its patient, study and series attributes made the index's, the study's revision
    bumped. The instance row keeps the original (its file and DICOM JSON). One statement set
    per event: corrections are rare. Returns the events whose instance is not indexed."""
    unindexed = []
    for e in events:
        uid, h = instance_uid(e), e.header
        indexed = await conn.fetchrow(
            "SELECT study_uid, series_uid FROM instances WHERE sop_instance_uid = $1 FOR UPDATE",
            uid,
        )
        if indexed is None:
            unindexed.append(e)
            continue
        revision = await conn.fetchval(
            """INSERT INTO instance_revisions (sop_instance_uid, revision, file_id, study_uid,
                                               storage_url, file_sha256, header)
               SELECT $1, coalesce(max(revision), 1) + 1, $2, $3, $4, $5, $6
                 FROM instance_revisions WHERE sop_instance_uid = $1
               ON CONFLICT (sop_instance_uid, file_id) DO NOTHING RETURNING revision""",
            uid,
            e.file.file_id,
            h.study.study_uid,
            e.storage_url,
            e.hashes.file_sha256,
            h.model_dump(mode="json", exclude={"dicom_json"}),  # the pool encodes jsonb
        )
        if revision is None:  # redelivered: applied before
            continue
        if (indexed["study_uid"], indexed["series_uid"]) != (
            h.study.study_uid,
            h.series.series_uid,
        ):
            # Moving an instance between studies or series is not a header correction the
            # index applies; the revision is recorded (and stored) for a person to look at.
            continue
        await _serve_revision(conn, e, revision)
        await _correct_levels(conn, e)
    return unindexed


async def _serve_revision(conn: Conn, e: InstanceStored, revision: int) -> None:
    """The instance row becomes the correction: its bytes (`revision_key`, size, hash), its
    instance attributes and its DICOM JSON are what WADO, archives and exports serve. The
    original stays at its canonical key; `first_file_id` still names the file that brought it."""
    i = e.header.instance
    await conn.execute(
        """UPDATE instances
              SET revision = $2, revision_key = $3, size_bytes = $4, file_sha256 = $5,
                  storage_url = $6, dicom_json = $7, instance_number = $8,
                  transfer_syntax_uid = $9, specific_character_set = $10
            WHERE sop_instance_uid = $1 AND revision < $2""",
        i.sop_instance_uid,
        revision,
        revision_key(i.sop_instance_uid, e.hashes.file_sha256),
        e.file.size,
        e.hashes.file_sha256,
        e.storage_url,
        e.header.dicom_json,
        i.instance_number,
        i.transfer_syntax_uid,
        i.specific_character_set,
    )


async def _correct_levels(conn: Conn, e: InstanceStored) -> None:
    """The patient, study and series attributes of a correction become the index's; the
    study gets a new revision and is announced (and, in time, stable) again."""
    h = e.header
    await _upsert_levels(conn, [e])  # the patient as corrected (a merge: a new patient)
    s = h.study
    await conn.execute(
        """UPDATE studies
              SET patient_pk = (SELECT id FROM patients WHERE patient_key = $2),
                  study_date = $3, study_time = $4, accession_number = $5,
                  study_description = $6, study_id = $7, referring_physician = $8,
                  revision = revision + 1, stable = false, last_instance_at = now(),
                  updated_at = now()
            WHERE study_uid = $1""",
        s.study_uid,
        patient_key(h.patient),
        parse_da(s.study_date),
        s.study_time,
        s.accession_number,
        s.study_description,
        s.study_id,
        s.referring_physician,
    )
    se = h.series
    await conn.execute(
        """UPDATE series SET modality = $2, series_number = $3, series_description = $4,
                             body_part = $5
            WHERE series_uid = $1""",
        se.series_uid,
        se.modality,
        se.series_number,
        se.series_description,
        se.body_part,
    )


def _merge_patients(events: Sequence[InstanceStored]) -> dict[str, PatientAttrs]:
    """Each patient as upserting the batch's events one by one would leave it: the last
    name, the last birth date and sex that are not empty."""
    out: dict[str, PatientAttrs] = {}
    for e in events:
        p = e.header.patient
        key = patient_key(p)
        before = out.get(key)
        if before is not None:
            p = p.model_copy(
                update={
                    "birth_date": p.birth_date if parse_da(p.birth_date) else before.birth_date,
                    "sex": p.sex or before.sex,
                }
            )
        out[key] = p
    return out


async def _upsert_levels(conn: Conn, events: Sequence[InstanceStored]) -> None:
    patients = _merge_patients(events)
    keys = sorted(patients)
    first_file: dict[str, int] = {}  # the file that brings a new patient into the index
    for e in events:
        first_file.setdefault(patient_key(e.header.patient), e.file.file_id)
    await conn.execute(
        """INSERT INTO patients (patient_key, patient_id, issuer, patient_name, name_search,
                                 birth_date, sex, first_file_id)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                $6::date[], $7::text[], $8::bigint[])
           ON CONFLICT (patient_key) DO UPDATE
              SET patient_name = EXCLUDED.patient_name, name_search = EXCLUDED.name_search,
                  birth_date = coalesce(EXCLUDED.birth_date, patients.birth_date),
                  sex = CASE WHEN EXCLUDED.sex <> '' THEN EXCLUDED.sex ELSE patients.sex END,
                  updated_at = now()""",
        keys,
        [patients[k].patient_id for k in keys],
        [patients[k].issuer_of_patient_id for k in keys],
        [patients[k].patient_name for k in keys],
        [search_key(patients[k].patient_name) for k in keys],
        [parse_da(patients[k].birth_date) for k in keys],
        [patients[k].sex for k in keys],
        [first_file[k] for k in keys],
    )
    studies: dict[str, InstanceStored] = {}
    series: dict[str, InstanceStored] = {}
    for e in events:
        studies.setdefault(e.header.study.study_uid, e)
        series.setdefault(e.header.series.series_uid, e)
    st = [studies[k].header for k in sorted(studies)]
    await conn.execute(
        """INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession_number,
                                study_description, study_id, referring_physician, storage_prefix)
           SELECT u.uid, p.id, u.d, u.t, u.acc, u.descr, u.sid, u.ref, u.prefix
             FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[])
                  AS u(uid, pkey, d, t, acc, descr, sid, ref, prefix)
             JOIN patients p ON p.patient_key = u.pkey
            ORDER BY u.uid
           ON CONFLICT (study_uid) DO NOTHING""",
        [h.study.study_uid for h in st],
        [patient_key(h.patient) for h in st],
        [parse_da(h.study.study_date) for h in st],
        [h.study.study_time for h in st],
        [h.study.accession_number for h in st],
        [h.study.study_description for h in st],
        [h.study.study_id for h in st],
        [h.study.referring_physician for h in st],
        [study_prefix(h.study.study_uid) for h in st],
    )
    se = [series[k].header for k in sorted(series)]
    await conn.execute(
        """INSERT INTO series (series_uid, study_uid, modality, series_number,
                               series_description, body_part)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
                                $6::text[])
           ON CONFLICT (series_uid) DO NOTHING""",
        [h.series.series_uid for h in se],
        [h.study.study_uid for h in se],
        [h.series.modality for h in se],
        [h.series.series_number for h in se],
        [h.series.series_description for h in se],
        [h.series.body_part for h in se],
    )


async def _insert_instances(conn: Conn, events: Sequence[InstanceStored]) -> set[str]:
    """Insert each instance once (by SOPInstanceUID); returns the UIDs really inserted."""
    rows = [instance_row(e) for e in events]
    names = [name for name, _ in INSTANCE_COLUMNS]  # fixed names, never input
    columns = ", ".join(names)
    values = instance_values(lambda name: f"u.{name}")
    arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(INSTANCE_COLUMNS, 1))
    inserted = await conn.fetch(
        f"""INSERT INTO instances ({columns})
            SELECT {values} FROM unnest({arrays}) AS u({columns})
            ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING sop_instance_uid""",
        *(list(column) for column in zip(*rows, strict=True)),
    )
    return {r["sop_instance_uid"] for r in inserted}


async def _count(conn: Conn, inserted: Sequence[InstanceStored]) -> None:
    """Only for real inserts: counters, modalities and one new revision per study."""
    if not inserted:
        return
    series: dict[str, list[int]] = {}
    studies: dict[str, tuple[list[int], list[str]]] = {}
    for e in inserted:
        h = e.header
        n_size = series.setdefault(h.series.series_uid, [0, 0])
        n_size[0] += 1
        n_size[1] += e.file.size
        counts, modalities = studies.setdefault(h.study.study_uid, ([0, 0], []))
        counts[0] += 1
        counts[1] += e.file.size
        if h.series.modality and h.series.modality not in modalities:
            modalities.append(h.series.modality)
    se = sorted(series)
    await conn.execute(
        """UPDATE series SET instance_count = series.instance_count + u.n,
                             size_bytes = series.size_bytes + u.size
             FROM unnest($1::text[], $2::int[], $3::bigint[]) AS u(uid, n, size)
            WHERE series.series_uid = u.uid""",
        se,
        [series[k][0] for k in se],
        [series[k][1] for k in se],
    )
    st = sorted(studies)
    await conn.execute(
        """UPDATE studies
              SET instance_count = studies.instance_count + u.n,
                  size_bytes = studies.size_bytes + u.size,
                  series_count = (SELECT count(*) FROM series WHERE series.study_uid = u.uid),
                  modalities = ARRAY(  -- in code order whatever order series arrive in
                      SELECT m
                        FROM unnest(studies.modalities || string_to_array(u.mods, $5)) AS x(m)
                       WHERE m <> '' GROUP BY m ORDER BY m COLLATE "C"),
                  revision = studies.revision + 1, stable = false, last_instance_at = now(),
                  updated_at = now()
             FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[]) AS u(uid, n, size, mods)
            WHERE studies.study_uid = u.uid""",
        st,
        [studies[k][0][0] for k in st],
        [studies[k][0][1] for k in st],
        [SEP.join(studies[k][1]) for k in st],
        SEP,
    )


async def _outcomes(
    conn: Conn, outcomes: Sequence[tuple[InstanceStored | InstanceDuplicated, str, str | None]]
) -> list[float | None]:
    rows = [
        ledger.Outcome(
            file_id=e.file.file_id,
            status=status,
            reason=reason,
            sop_instance_uid=e.header.instance.sop_instance_uid,
            study_uid=e.header.study.study_uid,
            task_id=e.file.task_id,
        )
        for e, status, reason in outcomes
    ]
    recorded = await ledger.mark_outcomes(conn, rows, stage=STAGE)
    seen: set[int] = set()
    out: list[float | None] = []
    for e, _, _ in outcomes:  # a file twice in the batch: its first event recorded it
        fid = e.file.file_id
        out.append(recorded.get(fid) if fid not in seen else None)
        seen.add(fid)
    return out
