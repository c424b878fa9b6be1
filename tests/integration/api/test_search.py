"""GET /v1/studies and /v1/studies/{uid} against a real PostgreSQL index (synthetic patients)."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.dicom.names import search_key
from libs.runtime.probes import Readiness
from services.api.app import create_app
from services.api.config import ApiLimits

# (patient_key, patient_id, name, birth date, sex)
PATIENTS = [
    ("k1", "P1", "Иванов^Иван", date(1970, 1, 2), "M"),
    ("k2", "P2", "Müller^José", date(1985, 5, 6), "F"),
    ("k3", "P3", "SMITH^JOHN^^DR", None, "O"),
    ("k4", "P4", "Петрова^Алёна", date(1990, 7, 8), "F"),
    ("k5", "P5", "Doe_100%^Jane", date(2000, 1, 1), "F"),
]
# (study_uid, patient_key, date, accession, modalities)
STUDIES = [
    ("1.2.3.1", "k1", date(2024, 3, 15), "A1", ["CT", "MR"]),
    ("1.2.3.2", "k1", date(2023, 11, 1), "A2", ["CT"]),
    ("1.2.3.3", "k2", date(2024, 1, 10), "A3", ["MR"]),
    ("1.2.3.4", "k3", None, "A4", ["OT"]),
    ("1.2.3.5", "k4", date(2022, 6, 30), "A5", ["US"]),
    ("1.2.3.6", "k5", date(2021, 2, 3), "A6", ["CR"]),
]
ALL = ["1.2.3.1", "1.2.3.3", "1.2.3.2", "1.2.3.5", "1.2.3.6", "1.2.3.4"]  # date desc, nulls last
# Series of 1.2.3.1, inserted out of order:
# (series_uid, modality, number, instances, size, description, body part)
SERIES = [
    ("1.2.3.1.2", "MR", 2, 5, 500, "T1 axial", "HEAD"),
    ("1.2.3.1.1", "CT", 1, 10, 1000, "Topogram", "CHEST"),
]


async def _seed(conn: asyncpg.Connection) -> None:
    pk: dict[str, int] = {}
    for key, pid, name, birth, sex in PATIENTS:
        pk[key] = await conn.fetchval(
            """INSERT INTO patients (patient_key, patient_id, patient_name, name_search,
                                     birth_date, sex)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            key,
            pid,
            name,
            search_key(name),
            birth,
            sex,
        )
    for uid, key, day, accession, modalities in STUDIES:
        series_count, instances, size = (2, 15, 1500) if uid == "1.2.3.1" else (1, 1, 100)
        await conn.execute(
            """INSERT INTO studies (study_uid, patient_pk, study_date, study_time,
                   accession_number, study_description, modalities, series_count,
                   instance_count, size_bytes, storage_prefix, revision, stable)
               VALUES ($1, $2, $3, '101500', $4, 'synthetic', $5, $6, $7, $8, $9, 3, true)""",
            uid,
            pk[key],
            day,
            accession,
            modalities,
            series_count,
            instances,
            size,
            f"studies/{uid}",
        )
    for series_uid, modality, number, count, size, description, body in SERIES:
        await conn.execute(
            """INSERT INTO series (series_uid, study_uid, modality, series_number,
                   series_description, body_part, instance_count, size_bytes)
               VALUES ($1, '1.2.3.1', $2, $3, $4, $5, $6, $7)""",
            series_uid,
            modality,
            number,
            description,
            body,
            count,
            size,
        )


@pytest.fixture(autouse=True)
async def seeded(pool: asyncpg.Pool) -> None:
    """Seed the module's database once."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE patients")
        if not await conn.fetchval("SELECT count(*) FROM patients"):
            await _seed(conn)


async def _search(client: httpx.AsyncClient, keys: Any, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/studies", params=params, headers=keys.headers("clinician"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _uids(client: httpx.AsyncClient, keys: Any, **params: Any) -> list[str]:
    body = await _search(client, keys, **params)
    assert body["total"] == len(body["items"])
    return [s["study_uid"] for s in body["items"]]


async def test_no_filter_lists_every_study_newest_first(client, keys):
    assert await _uids(client, keys) == ALL


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("иванов", ["1.2.3.1", "1.2.3.2"]),
        ("ИВАНОВ", ["1.2.3.1", "1.2.3.2"]),
        ("Иванов Иван", ["1.2.3.1", "1.2.3.2"]),
        ("Иванов^Иван", ["1.2.3.1", "1.2.3.2"]),
        ("иван", ["1.2.3.1", "1.2.3.2"]),  # prefix of the family name, and a whole given name
        ("muller", ["1.2.3.3"]),  # accents are ignored...
        ("MÜLLER", ["1.2.3.3"]),
        ("jose", ["1.2.3.3"]),  # ...in a word that is not the first
        ("José", ["1.2.3.3"]),
        ("алена", ["1.2.3.5"]),  # yo searches as ye
        ("Алёна", ["1.2.3.5"]),
        ("mül*jos*", ["1.2.3.3"]),  # * is any run of characters...
        ("mül*jos", []),  # ...and with one, the pattern is anchored at the end
        ("*jose", ["1.2.3.3"]),
        ("m?ller", ["1.2.3.3"]),  # ? is one character
        ("smith john", ["1.2.3.4"]),
        ("john", ["1.2.3.4"]),
        ("ller", []),  # the middle of a word is not a match
        ("ivanov", []),  # no transliteration
        ("doe_100%", ["1.2.3.6"]),  # % and _ are literal, not LIKE wildcards
        ("doe_10%0", []),
        ("do%", []),
        ("d_e", []),
    ],
)
async def test_patient_name(client, keys, query, expected):
    assert await _uids(client, keys, patient_name=query) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"patient_id": "P2"}, ["1.2.3.3"]),
        ({"patient_id": "P"}, []),  # exact, not a prefix
        ({"birth_date": "1970-01-02"}, ["1.2.3.1", "1.2.3.2"]),
        ({"birth_date": "19700102"}, ["1.2.3.1", "1.2.3.2"]),
        ({"sex": "F"}, ["1.2.3.3", "1.2.3.5", "1.2.3.6"]),
        ({"sex": "f"}, ["1.2.3.3", "1.2.3.5", "1.2.3.6"]),
        ({"sex": "O"}, ["1.2.3.4"]),
        ({"year": 2024}, ["1.2.3.1", "1.2.3.3"]),
        ({"year": 2023}, ["1.2.3.2"]),
        ({"year": 1999}, []),
        ({"study_date_from": "2023-11-01"}, ["1.2.3.1", "1.2.3.3", "1.2.3.2"]),
        ({"study_date_to": "20231101"}, ["1.2.3.2", "1.2.3.5", "1.2.3.6"]),
        ({"study_date_from": "2023-11-01", "study_date_to": "2023-11-01"}, ["1.2.3.2"]),
        ({"study_date_from": "2022-01-01", "study_date_to": "2023-12-31"}, ["1.2.3.2", "1.2.3.5"]),
        ({"accession_number": "A3"}, ["1.2.3.3"]),
        ({"modality": "MR"}, ["1.2.3.1", "1.2.3.3"]),
        ({"modality": "mr"}, ["1.2.3.1", "1.2.3.3"]),
        ({"modality": "CT"}, ["1.2.3.1", "1.2.3.2"]),
        ({"modality": "PT"}, []),
        ({"patient_name": "иванов", "modality": "MR"}, ["1.2.3.1"]),
        ({"patient_name": "иванов", "year": 2023, "sex": "M"}, ["1.2.3.2"]),
        ({"sex": "F", "year": 2024, "accession_number": "A1"}, []),
    ],
)
async def test_filters(client, keys, params, expected):
    assert await _uids(client, keys, **params) == expected


async def test_paging_keeps_total_and_order(client, keys):
    pages = [await _search(client, keys, limit=2, offset=offset) for offset in (0, 2, 4, 6)]
    assert [p["total"] for p in pages] == [6, 6, 6, 6]
    assert [(p["limit"], p["offset"]) for p in pages] == [(2, 0), (2, 2), (2, 4), (2, 6)]
    assert [s["study_uid"] for p in pages for s in p["items"]] == ALL
    assert pages[3]["items"] == []
    default = await _search(client, keys)
    assert (default["limit"], default["offset"]) == (50, 0)
    assert all(p["total_exact"] for p in [*pages, default])


async def test_beyond_the_count_limit_the_total_is_a_lower_bound(pool, publisher, keys):
    """API_SEARCH_COUNT_LIMIT=3 on 6 studies: `total` 3 and `total_exact` false, until a
    page reaches further (the count then goes to the end of that page, and one more)."""
    app = create_app(
        pool, publisher.publish, CollectorRegistry(), Readiness(),
        limits=ApiLimits(search_count_limit=3),
    )  # fmt: skip
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        pages = [await _search(client, keys, limit=2, offset=offset) for offset in (0, 2, 4)]
        totals = [(p["total"], p["total_exact"]) for p in pages]
        assert totals == [(3, False), (4, False), (6, True)]
        assert [s["study_uid"] for p in pages for s in p["items"]] == ALL
        few = await _search(client, keys, modality="CT")
        assert (few["total"], few["total_exact"]) == (2, True)
        big = await _search(client, keys, limit=10)
        assert (big["total"], big["total_exact"]) == (6, True)


async def test_result_fields_counts_and_sizes(client, keys):
    body = await _search(client, keys, accession_number="A1")
    assert body["items"] == [
        {
            "study_uid": "1.2.3.1",
            "study_date": "2024-03-15",
            "study_time": "101500",
            "accession_number": "A1",
            "study_description": "synthetic",
            "modalities": ["CT", "MR"],
            "series_count": 2,
            "instance_count": 15,
            "size_bytes": 1500,
            "stable": True,
            "revision": 3,
            "patient": {
                "patient_id": "P1",
                "patient_name": "Иванов^Иван",
                "birth_date": "1970-01-02",
                "sex": "M",
            },
            "source_deleted_at": None,
            "source_deleted_from": None,
            "thumbnail_url": None,  # no instance rows seeded here (see test_previews.py)
        }
    ]
    unknown_date = await _search(client, keys, accession_number="A4")
    assert unknown_date["items"][0]["study_date"] is None
    assert unknown_date["items"][0]["patient"]["birth_date"] is None


async def test_study_detail_lists_series_by_number(client, keys):
    response = await client.get("/v1/studies/1.2.3.1", headers=keys.headers("clinician"))
    assert response.status_code == 200
    body = response.json()
    assert body["study_uid"] == "1.2.3.1"
    assert body["instance_count"] == 15
    assert body["patient"]["patient_name"] == "Иванов^Иван"
    assert body["series"] == [
        {
            "series_uid": "1.2.3.1.1",
            "modality": "CT",
            "series_number": 1,
            "series_description": "Topogram",
            "body_part": "CHEST",
            "instance_count": 10,
            "size_bytes": 1000,
        },
        {
            "series_uid": "1.2.3.1.2",
            "modality": "MR",
            "series_number": 2,
            "series_description": "T1 axial",
            "body_part": "HEAD",
            "instance_count": 5,
            "size_bytes": 500,
        },
    ]
    empty = await client.get("/v1/studies/1.2.3.2", headers=keys.headers("clinician"))
    assert empty.json()["series"] == []


async def test_unknown_study_is_404(client, keys):
    response = await client.get("/v1/studies/1.2.3.999", headers=keys.headers("clinician"))
    assert response.status_code == 404
    assert response.json() == {"detail": "study not found"}


@pytest.mark.parametrize(
    "uid", ["abc", "1..2", "1.2.", ".1", "1.2.3a", "1.2 3", "1.2%0A", "\u0661.\u0662", "1" * 65]
)
async def test_malformed_study_uid_is_422(client, keys, uid):
    response = await client.get(f"/v1/studies/{uid}", headers=keys.headers("clinician"))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "study_uid"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"birth_date": "1970-13-01"}, "not a valid calendar date"),
        ({"birth_date": "02/01/1970"}, "YYYY-MM-DD or YYYYMMDD"),
        ({"birth_date": "2024-W01-1"}, "YYYY-MM-DD or YYYYMMDD"),
        ({"birth_date": "19700102\n"}, "YYYY-MM-DD or YYYYMMDD"),
        ({"birth_date": "\u0661\u0669\u0667\u0660-01-02"}, "YYYY-MM-DD or YYYYMMDD"),
        ({"study_date_from": "yesterday"}, "YYYY-MM-DD or YYYYMMDD"),
        (
            {"study_date_from": "2024-02-01", "study_date_to": "2024-01-01"},
            "study_date_from must not be after study_date_to",
        ),
        ({"sex": "X"}, "'M', 'F' or 'O'"),
        ({"year": "twenty"}, "valid integer"),
        ({"year": "0"}, "greater than or equal to 1"),
        ({"limit": "0"}, "greater than or equal to 1"),
        ({"limit": "501"}, "less than or equal to 500"),
        ({"offset": "-1"}, "greater than or equal to 0"),
        ({"modality": "M R"}, "should match pattern"),
        ({"patient_name": ""}, "at least one letter or digit"),
        ({"patient_name": "^^ "}, "at least one letter or digit"),
        ({"patient_name": "*"}, "at least one letter or digit"),
        ({"patientname": "smith"}, "Extra inputs are not permitted"),
    ],
)
async def test_invalid_query_is_422_with_a_clear_message(client, keys, params, fragment):
    response = await client.get("/v1/studies", params=params, headers=keys.headers("clinician"))
    assert response.status_code == 422
    assert fragment in response.text


async def test_search_and_read_are_audited(client, keys, audit_rows, pool):
    await _search(client, keys, patient_name="иванов", modality="CT")
    await client.get("/v1/studies/1.2.3.1", headers=keys.headers("clinician"))
    await client.get("/v1/studies/1.2.3.999", headers=keys.headers("clinician"))
    key_id = await pool.fetchval(
        "SELECT id FROM api_keys WHERE key_prefix = $1 ORDER BY id DESC LIMIT 1",
        keys.plain["clinician"][:8],
    )
    search = (await audit_rows("study.search"))[-1]
    assert search["api_key_id"] == key_id
    assert search["role"] == "clinician"
    assert (search["method"], search["path"]) == ("GET", "/v1/studies")
    assert search["query"] == {"patient_name": "иванов", "modality": "CT"}
    assert (search["status_code"], search["result_count"]) == (200, 2)
    assert search["client"] == "10.1.2.3"
    reads = [
        (r["path"], r["status_code"], r["result_count"]) for r in await audit_rows("study.read")
    ]
    assert reads[-2:] == [("/v1/studies/1.2.3.1", 200, 1), ("/v1/studies/1.2.3.999", 404, 0)]
