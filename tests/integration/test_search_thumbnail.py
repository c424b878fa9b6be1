"""Which image a search result shows as its thumbnail: the first image of the study's first
series that has one (series by number, unnumbered last, then UID; images by instance number,
unnumbered last, then SOP UID). Instances without Rows (a report, a presentation state) are
never chosen, and a series holding none but those is passed over."""

from __future__ import annotations

import asyncpg

from libs.db.search import StudyFilter, search_studies

# (series uid, series number, [(sop uid, instance number, rows)])
SERIES = [
    ("1.9.1.9", None, [("1.9.1.9.1", 1, 512)]),  # unnumbered: after every numbered series
    ("1.9.1.1", 1, [("1.9.1.1.1", 1, None), ("1.9.1.1.2", 2, None)]),  # no image at all
    ("1.9.1.3", 2, [("1.9.1.3.1", 1, 512)]),  # same number, later UID
    (
        "1.9.1.2",
        2,
        [
            ("1.9.1.2.9", None, 512),  # unnumbered image: last
            ("1.9.1.2.5", 3, 512),
            ("1.9.1.2.4", 1, None),  # first by number, but no image
            ("1.9.1.2.7", 3, 512),  # same number, later UID
        ],
    ),
]


async def seed(conn: asyncpg.Connection, study: str, series: list) -> None:  # type: ignore[type-arg]
    pk = await conn.fetchval(
        """INSERT INTO patients (patient_key, patient_id, patient_name, name_search)
           VALUES ($1, $1, 'DOE^JANE', 'doe jane') RETURNING id""",
        f"id:{study}",
    )
    await conn.execute(
        """INSERT INTO studies (study_uid, patient_pk, accession_number, storage_prefix)
           VALUES ($1, $2, $1, 'studies/' || $1 || '/')""",
        study,
        pk,
    )
    for series_uid, number, instances in series:
        await conn.execute(
            "INSERT INTO series (series_uid, study_uid, series_number) VALUES ($1, $2, $3)",
            series_uid,
            study,
            number,
        )
        for sop, instance_number, rows in instances:
            await conn.execute(
                """INSERT INTO instances (sop_instance_uid, series_uid, study_uid,
                                          instance_number, rows, size_bytes, file_sha256,
                                          content_sha256, storage_url, first_file_id)
                   VALUES ($1, $2, $3, $4, $5, 1, md5($1), md5($1), 'file:///x', 1)""",
                sop,
                series_uid,
                study,
                instance_number,
                rows,
            )


async def thumbnail(conn: asyncpg.Connection, study: str) -> tuple[str | None, str | None]:
    found = await search_studies(conn, StudyFilter(accession_number=study), limit=5, offset=0)
    [row] = found.rows
    return row.thumbnail_series_uid, row.thumbnail_sop_uid


async def test_the_first_image_of_the_first_series_with_an_image(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await seed(conn, "1.9.1", SERIES)
        assert await thumbnail(conn, "1.9.1") == ("1.9.1.2", "1.9.1.2.5")


async def test_an_unnumbered_series_is_chosen_when_no_numbered_one_has_an_image(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await seed(conn, "1.9.1", [SERIES[0], SERIES[1]])
        assert await thumbnail(conn, "1.9.1") == ("1.9.1.9", "1.9.1.9.1")


async def test_a_study_without_images_has_no_thumbnail(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await seed(conn, "1.9.1", [SERIES[1]])
        assert await thumbnail(conn, "1.9.1") == (None, None)
