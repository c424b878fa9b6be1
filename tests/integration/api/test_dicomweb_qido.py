"""QIDO-RS over a real index: matching rules at every level, includefield, paging, the
DICOM JSON answer, 400/401/403/406 and the audit log."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.api.dicomweb_app import *  # noqa: F403 - the DICOMweb fixtures
from tests.integration.api.dicomweb_seed import PATIENTS, Seeded

pytestmark = pytest.mark.usefixtures("seeded")
JSON = {"Accept": "application/dicom+json"}


def values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return [item.get(tag, {}).get("Value", [None])[0] for item in items]


async def qido(client: httpx.AsyncClient, keys: Any, path: str, **params: Any) -> Any:
    response = await client.get(
        f"/dicom-web{path}", params=params, headers={**keys.headers("clinician"), **JSON}
    )
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    return response.json()


def pids(items: list[dict[str, Any]]) -> list[str]:
    return sorted(values(items, "00100020"))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "Иванов^Иван"}, ["DW-1"]),
        ({"PatientName": "иванов*"}, ["DW-1"]),
        ({"PatientName": "*ИВАН"}, ["DW-1", "DW-3"]),
        ({"PatientName": "Иван", "fuzzymatching": "true"}, ["DW-1", "DW-3"]),
        ({"PatientName": "Иван"}, []),
        ({"PatientName": "muller", "fuzzymatching": "true"}, ["DW-2"]),
        ({"PatientName": "M?ller^Jos*"}, ["DW-2"]),
        ({"00100020": "DW-3"}, ["DW-3"]),
        ({"PatientID": "DW-?"}, ["DW-1", "DW-2", "DW-3"]),
        ({"StudyDate": "20231201"}, ["DW-2"]),
        ({"StudyDate": "20230101-20231231"}, ["DW-2"]),
        ({"StudyDate": "-20231231", "PatientID": "DW-?"}, ["DW-2", "DW-3"]),
        ({"StudyDate": "20240101-", "PatientID": "DW-?"}, ["DW-1"]),
        ({"ModalitiesInStudy": "MR", "PatientID": "DW-?"}, ["DW-2"]),
        ({"AccessionNumber": "ACC-3"}, ["DW-3"]),
    ],
)
async def test_studies_match(client, keys, params, expected) -> None:
    assert pids(await qido(client, keys, "/studies", **params)) == expected


async def test_study_answer_has_the_standard_attributes_and_counts(client, keys, seeded) -> None:
    [study] = await qido(client, keys, "/studies", PatientID="DW-1")
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Иванов^Иван"}]}
    assert study["00080020"] == {"vr": "DA", "Value": ["20240115"]}
    assert study["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert study["00201206"] == {"vr": "IS", "Value": [2]}
    assert study["00201208"] == {"vr": "IS", "Value": [4]}
    uid = study["0020000D"]["Value"][0]
    assert study["00081190"]["Value"] == [f"http://api.test/dicom-web/studies/{uid}"]
    by_uid = await qido(client, keys, "/studies", StudyInstanceUID=f"{uid},1.2.3")
    assert pids(by_uid) == ["DW-1"]


async def test_series_and_instances_at_every_level(client, keys, seeded: list[Seeded]) -> None:
    ivanov = [f for f in seeded if f.study == seeded[0].study]
    study = ivanov[0].study
    series = await qido(client, keys, f"/studies/{study}/series")
    assert values(series, "00200011") == [1, 2]
    assert values(series, "00201209") == [2, 2]
    assert values(
        await qido(client, keys, "/series", Modality="MR", PatientID="DW-?"), "00100020"
    ) == ["DW-2"]
    one = await qido(client, keys, "/series", SeriesInstanceUID=ivanov[2].series)
    assert values(one, "0020000D") == [study] and values(one, "00100010")[0]  # study attrs
    instances = await qido(client, keys, f"/studies/{study}/series/{ivanov[0].series}/instances")
    assert values(instances, "00080018") == [ivanov[0].sop, ivanov[1].sop]
    assert values(instances, "00200013") == [1, 2]
    assert len(await qido(client, keys, f"/studies/{study}/instances")) == 4
    found = await qido(client, keys, "/instances", SOPInstanceUID=ivanov[3].sop)
    assert values(found, "0020000E") == [ivanov[3].series]
    url = found[0]["00081190"]["Value"][0]
    assert url.endswith(f"/studies/{study}/series/{ivanov[3].series}/instances/{ivanov[3].sop}")


async def test_includefield_limit_and_offset(client, keys) -> None:
    series = await qido(client, keys, "/series", PatientID="DW-1")
    assert "00100010" in series[0]  # across studies: the study's attributes come along
    inside = await qido(client, keys, "/instances", PatientID="DW-1", includefield="all")
    assert "00080061" in inside[0] and "0008103E" in inside[0]
    named = await qido(client, keys, "/instances", PatientID="DW-1", includefield="00080061")
    assert "00080061" in named[0]
    page = await qido(client, keys, "/studies", PatientID="DW-?", limit=2)
    rest = await qido(client, keys, "/studies", PatientID="DW-?", limit=2, offset=2)
    assert pids(page + rest) == [p[0] for p in PATIENTS]


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/studies", {"PatientNam": "x"}, "unknown attribute"),
        ("/studies", {"StudyInstanceUID": "1.2.x"}, "not a valid UID"),
        ("/studies", {"StudyDate": "20240101-20230101"}, "ends before it starts"),
        ("/studies", {"StudyDate": "2024"}, "not a date"),
        ("/studies", {"limit": "-1"}, "limit"),
        ("/studies", {"includefield": "NoSuchThing"}, "unknown attribute"),
        ("/studies/1.2.abc/series", {}, "not a valid UID"),
    ],
)
async def test_bad_queries_are_400_with_a_reason(client, keys, path, params, reason) -> None:
    response = await client.get(
        f"/dicom-web{path}", params=params, headers=keys.headers("clinician")
    )
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]


async def test_unsupported_keys_are_ignored_with_a_warning(client, keys) -> None:
    response = await client.get(
        "/dicom-web/studies",
        params={"PatientID": "DW-2", "PatientWeight": "70"},
        headers=keys.headers("clinician"),
    )
    assert response.status_code == 200 and "PatientWeight" in response.headers["warning"]


async def test_no_match_is_204_and_wrong_media_type_406(client, keys) -> None:
    empty = await client.get(
        "/dicom-web/studies", params={"PatientID": "nobody"}, headers=keys.headers("clinician")
    )
    assert empty.status_code == 204 and empty.content == b""
    xml = await client.get(
        "/dicom-web/studies", headers={**keys.headers("clinician"), "Accept": "application/xml"}
    )
    assert xml.status_code == 406


async def test_keys_roles_and_audit(client, keys, audit_rows) -> None:
    assert (await client.get("/dicom-web/studies")).status_code == 401
    assert (await client.get("/dicom-web/studies", headers=keys.headers("ops"))).status_code == 200
    rows = await audit_rows("dicomweb.search")
    assert rows[-1]["status_code"] == 200 and rows[-1]["role"] == "ops"
    assert rows[-1]["result_count"] >= 4
