"""Every study search and the study detail, on a generated index (100,000 patients with
Latin and Cyrillic names, 20,000 studies, 40,000 series, 120,000 instances, analysed), read
no big table from end to end: the plan of each statement the API runs has no sequential scan
of patients, studies, series or instances, nor a walk of a whole index (except one that
delivers rows in order under a LIMIT), once reading tables whole is priced out
(`enable_seqscan`, `enable_hashjoin`, `enable_mergejoin` off: on an index this small it may
be cheapest, but still chosen then means no index serves the filter). A search that would
slow down as the index grows fails here first."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import asyncpg

from libs.db.search import COUNT_LIMIT, StudyFilter, get_study, search_studies

BIG = {"patients", "studies", "series", "instances"}
LATIN = ["ka", "mo", "ri", "ta", "sen", "lu", "ber", "vo", "ni", "gra"]
CYRILLIC = ["ка", "мо", "ри", "та", "сен", "лу", "бер", "во", "ни", "гра"]
MODALITIES = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF"] * 2


async def generate(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO patients (patient_key, patient_id, patient_name, name_search, birth_date, sex)
        SELECT 'id:' || chr(31) || 'P' || g, 'P' || g, n || '^ivan', n || ' ivan',
               date '1930-01-01' + (g * 37 % 30000), CASE WHEN g % 2 = 0 THEN 'M' ELSE 'F' END
          FROM generate_series(1, 100000) g,
               LATERAL (SELECT CASE WHEN g % 2 = 0
                   THEN $1::text[] ELSE $2::text[] END AS syl) s,
               LATERAL (SELECT s.syl[1 + g % 10] || s.syl[1 + (g / 10) % 10]
                               || s.syl[1 + (g / 100) % 10] || 'ov' AS n) name
        """,
        LATIN,
        CYRILLIC,
    )
    await conn.execute(
        """
        INSERT INTO studies (study_uid, patient_pk, study_date, accession_number, modalities,
                             series_count, instance_count, storage_prefix)
        SELECT '1.2.9.' || g, 1 + g % 10000, date '1995-01-01' + (g * 13 % 10950), 'A' || g,
               ARRAY[($1::text[])[1 + g % 20]], 2, 6, 'studies/1.2.9.' || g || '/'
          FROM generate_series(1, 20000) g
        """,
        MODALITIES,
    )
    await conn.execute(
        """
        INSERT INTO series (series_uid, study_uid, modality, series_number, instance_count)
        SELECT '1.2.9.' || g || '.' || n, '1.2.9.' || g, 'CT', n, 3
          FROM generate_series(1, 20000) g, generate_series(1, 2) n
        """
    )
    await conn.execute(
        """
        INSERT INTO instances (sop_instance_uid, series_uid, study_uid, instance_number, rows,
                               size_bytes, file_sha256, content_sha256, storage_url,
                               first_file_id)
        SELECT '1.2.9.' || g || '.' || n || '.' || i, '1.2.9.' || g || '.' || n, '1.2.9.' || g,
               i, 512, 1000, md5(g || '.' || n || '.' || i), md5(g || '/' || n || '/' || i),
               'file:///x', 1
          FROM generate_series(1, 20000) g, generate_series(1, 2) n, generate_series(1, 3) i
        """
    )
    await conn.execute("ANALYZE patients, studies, series, instances")


class Recording:
    """The connection the search code gets: runs each statement and remembers it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetchval(sql, *args)


def seq_scans(node: dict[str, Any], *, limited: bool = False) -> list[str]:
    """Big tables read whole: a sequential scan, or (sequential scans priced out) a walk of
    a whole index with no condition, except to deliver rows in order under a LIMIT."""
    found = []
    table = node.get("Relation Name")
    kind = node.get("Node Type")
    if table in BIG and kind == "Seq Scan":
        found.append(f"{kind} on {table}")
    whole = kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node
    if table in BIG and whole and not limited:
        found.append(f"{kind} of all of {node.get('Index Name')}")
    limited = limited or kind == "Limit"
    for child in node.get("Plans", []):
        found += seq_scans(child, limited=limited)
    return found


SEARCHES = {
    "name prefix, Cyrillic": StudyFilter(patient_name="Молу"),
    "name prefix, Latin": StudyFilter(patient_name="bermo"),
    "a later word of the name": StudyFilter(patient_name="ivan", birth_date=date(1950, 1, 1)),
    "a later word of the name, alone (every study)": StudyFilter(patient_name="ivan"),
    "birth date": StudyFilter(birth_date=date(1950, 3, 2)),
    "year": StudyFilter(year=2010),
    "modality": StudyFilter(modality="NM"),
    "patient id": StudyFilter(patient_id="P1234"),
    "accession number": StudyFilter(accession_number="A777"),
    "no filter (every study)": StudyFilter(),
}


async def plans_with_seq_scans(conn: asyncpg.Connection, recording: Recording) -> list[str]:
    bad = []
    for sql, args in recording.statements:
        async with conn.transaction():
            # On a small index reading a table whole is often cheapest, and chosen. Priced
            # out (with the joins that read their inputs whole), a big table still read
            # whole means no index serves the statement's filter.
            for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
                await conn.execute(f"SET LOCAL {setting} = off")
            plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        if tables := seq_scans(plan[0]["Plan"]):
            bad.append(f"{tables} in {sql}\n{json.dumps(plan, indent=1)[:3000]}")
    return bad


async def test_each_search_and_the_study_detail_use_indexes(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await generate(conn)
        failures = []
        for name, search in SEARCHES.items():
            recording = Recording(conn)
            found = await search_studies(recording, search, limit=50, offset=0)  # type: ignore[arg-type]
            total, rows = found.total, found.rows
            # One statement (matches, count and page) unless more than the count limit
            # match; then a second one for the page.
            assert len(recording.statements) == (1 if found.exact else 2), name
            if name in (
                "patient id",
                "accession number",
                "year",
                "name prefix, Cyrillic",
                "modality",
            ):
                assert total > 0 and rows, f"{name}: the generated index should match something"
            failures += [f"{name}: {bad}" for bad in await plans_with_seq_scans(conn, recording)]
        recording = Recording(conn)
        detail = await get_study(recording, "1.2.9.4321")  # type: ignore[arg-type]
        assert detail is not None and len(detail.series) == 2
        failures += [f"detail: {bad}" for bad in await plans_with_seq_scans(conn, recording)]
    assert not failures, "\n\n".join(failures)


def matches(plan: dict[str, Any]) -> dict[str, Any]:
    """The node of the first statement's CTE `m`: the matching studies, up to the limit."""
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        if node.get("Subplan Name") == "CTE m":
            return node
        nodes += node.get("Plans", [])
    raise AssertionError(f"no CTE m in {json.dumps(plan)[:2000]}")


def tables_read(node: dict[str, Any]) -> set[str]:
    found = {node["Relation Name"]} if "Relation Name" in node else set()
    for child in node.get("Plans", []):
        found |= tables_read(child)
    return found


async def test_patients_are_read_once_per_search_not_once_per_study(pool: asyncpg.Pool) -> None:
    """A search on study fields counts its matches without joining patients (joined, a
    modality count read every patient: 280 ms on 100,000 studies), and a search on patient
    fields matches the patients once (an InitPlan) and looks their studies up by patient,
    rather than probing patients study by study."""
    async with pool.acquire() as conn:
        await generate(conn)
        for name in ("modality", "year", "accession number"):
            recording = Recording(conn)
            await search_studies(recording, SEARCHES[name], limit=50, offset=0)  # type: ignore[arg-type]
            sql, args = recording.statements[0]
            plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
            # The matches (CTE m) are found and counted on studies alone; only the page's
            # rows are joined to their patients.
            assert "patients" not in tables_read(matches(plan[0]["Plan"])), (name, sql)
        for name in ("name prefix, Latin", "patient id", "birth date"):
            recording = Recording(conn)
            await search_studies(recording, SEARCHES[name], limit=50, offset=0)  # type: ignore[arg-type]
            for sql, _ in recording.statements:
                assert "ANY(ARRAY(SELECT p.id FROM patients p" in sql, (name, sql)
        # Matching many studies, the page keeps the matching patients' studies as it walks
        # the dates (a semi-join) instead of looking each of them up and sorting them all.
        recording = Recording(conn)
        search = SEARCHES["a later word of the name, alone (every study)"]
        found = await search_studies(recording, search, limit=50, offset=0)  # type: ignore[arg-type]
        assert (found.total, found.exact) == (COUNT_LIMIT, False)  # more than that match
        assert "s.patient_pk IN (SELECT p.id FROM patients p" in recording.statements[1][0]


async def test_counting_stops_at_the_limit_or_at_the_end_of_the_page(pool: asyncpg.Pool) -> None:
    """A broad search reads at most `count_limit` + 1 matches to count them (or as many as
    the page asked for ends at, and one more): 20,000 studies, 2,000 of them one modality."""
    async with pool.acquire() as conn:
        await generate(conn)
        for search, limit, offset, count_limit, expected in [
            (StudyFilter(), 50, 0, COUNT_LIMIT, (COUNT_LIMIT, False)),
            (StudyFilter(), 50, 0, 30_000, (20_000, True)),
            (StudyFilter(modality="NM"), 50, 0, COUNT_LIMIT, (COUNT_LIMIT, False)),
            (StudyFilter(modality="NM"), 50, 0, 2000, (2000, True)),
            (StudyFilter(modality="NM"), 50, 0, 1999, (1999, False)),
            (StudyFilter(modality="NM"), 50, 1990, 10, (2000, True)),  # the page's end: all
            (StudyFilter(), 50, 2000, 10, (2050, False)),  # counted to the end of the page
            (StudyFilter(patient_name="ivan"), 10, 0, 100, (100, False)),
        ]:
            recording = Recording(conn)
            found = await search_studies(
                recording,  # type: ignore[arg-type]
                search,
                limit=limit,
                offset=offset,
                count_limit=count_limit,
            )
            assert (found.total, found.exact) == expected, search
            sql, args = recording.statements[0]
            plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
            read = matches(plan[0]["Plan"])["Actual Rows"]  # the matching studies read
            assert read <= max(count_limit, offset + limit) + 1, (search, read)
