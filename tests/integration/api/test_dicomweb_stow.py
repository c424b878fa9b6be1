"""STOW-RS into a real ledger: each part staged durably under our own name, recorded and
published before the answer; garbage refused per instance with a reason; 200/202/409."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from libs.contracts.events import FileDiscovered
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from tests.integration.api.dicomweb_app import *  # noqa: F403 - the DICOMweb fixtures
from tests.integration.api.dicomweb_app import Bus


def instance(tmp: Path, study: str, n: int) -> bytes:
    ds = make_dataset(
        patient_id="STOW-1",
        patient_name="Сидоров^Пётр",
        study_uid=study,
        series_uid=synthetic_uid(f"{study}-series"),
        sop_uid=synthetic_uid(f"{study}-{n}"),
        instance_number=n,
    )
    path = tmp / f"{n}.dcm"
    write_instance(path, ds)
    return path.read_bytes()


def body(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    out = b""
    for ctype, data in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def stow(
    client: httpx.AsyncClient,
    keys: Any,
    parts: list[tuple[str, bytes]],
    path: str = "/studies",
    role: str = "ops",
) -> httpx.Response:
    boundary = uuid.uuid4().hex
    return await client.post(
        f"/dicom-web{path}",
        content=body(parts, boundary),
        headers={
            **keys.headers(role),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )


def sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return answer.get(tag, {}).get("Value", [])


async def test_stored_instances_are_staged_recorded_and_published(
    client, keys, bus: Bus, pool, staging: Path, tmp_path: Path
) -> None:
    study = synthetic_uid(f"stow-{uuid.uuid4()}")
    sent = [instance(tmp_path, study, n) for n in (1, 2)]
    response = await stow(client, keys, [("application/dicom", b) for b in sent])
    assert response.status_code == 200, response.text
    answer = response.json()
    refs = sequence(answer, "00081199")
    assert [r["00081155"]["Value"][0] for r in refs] == [
        synthetic_uid(f"{study}-1"),
        synthetic_uid(f"{study}-2"),
    ]
    assert refs[0]["00081190"]["Value"][0].startswith(f"http://api.test/dicom-web/studies/{study}/")
    # The top-level RetrieveURL (Type 2): the one study stored, though the URL named none.
    assert answer["00081190"] == {
        "vr": "UR",
        "Value": [f"http://api.test/dicom-web/studies/{study}"],
    }
    assert "00081198" not in answer
    events = [e for e in bus.events if isinstance(e, FileDiscovered)]
    assert len(events) == 2 and {e.source for e in events} == {"stow"}
    staged = [Path(e.file.uri.removeprefix("file://")) for e in events]
    assert [p.read_bytes() for p in staged] == sent
    assert all(p.is_relative_to(staging) and study not in p.name for p in staged)
    rows = await pool.fetch(
        "SELECT id, status FROM ingest_files WHERE id = ANY($1::bigint[])",
        [e.file.file_id for e in events],
    )
    assert sorted(r["status"] for r in rows) == ["pending", "pending"]


async def test_garbage_is_refused_per_instance_with_a_reason(client, keys, bus, tmp_path) -> None:
    study = synthetic_uid(f"stow-{uuid.uuid4()}")
    good = instance(tmp_path, study, 1)
    truncated = instance(tmp_path, study, 2)[:400]
    parts = [
        ("application/dicom", b"this is not DICOM"),
        ("application/dicom", good),
        ("application/dicom", truncated),
        ("text/plain", b"hello"),
    ]
    response = await stow(client, keys, parts)
    assert response.status_code == 202, response.text
    answer = response.json()
    failed = sequence(answer, "00081198")
    assert [f["00081197"]["Value"][0] for f in failed] == [0xC000, 0xC000, 0xC000]
    assert len(sequence(answer, "00081199")) == 1
    warning = response.headers["warning"]
    assert "part 1: not a DICOM file" in warning and "part 3: " in warning
    assert "part 4: part is text/plain" in warning
    assert len(bus.events) == 1


async def test_all_failed_is_409_and_wrong_study_is_refused(client, keys, bus, tmp_path) -> None:
    study = synthetic_uid(f"stow-{uuid.uuid4()}")
    data = instance(tmp_path, study, 1)
    response = await stow(client, keys, [("application/dicom", data)], path="/studies/1.2.3")
    assert response.status_code == 409
    [failed] = sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [0xC409]  # not A9xx: that is "not its SOP Class"
    assert failed["00081155"]["Value"] == [synthetic_uid(f"{study}-1")]
    ok = await stow(client, keys, [("application/dicom", data)], path=f"/studies/{study}")
    assert ok.status_code == 200 and ok.json()["00081190"]["Value"][0].endswith(study)
    assert len(bus.events) == 1


async def test_a_publish_failure_fails_the_instances(client, keys, bus, tmp_path) -> None:
    bus.error = RuntimeError("broker away")
    data = instance(tmp_path, synthetic_uid(f"stow-{uuid.uuid4()}"), 1)
    response = await stow(client, keys, [("application/dicom", data)])
    assert response.status_code == 409
    assert sequence(response.json(), "00081198")[0]["00081197"]["Value"] == [0xA700]


async def test_roles_media_types_and_malformed_bodies(client, keys, tmp_path) -> None:
    data = instance(tmp_path, synthetic_uid(f"stow-{uuid.uuid4()}"), 1)
    assert (
        await stow(client, keys, [("application/dicom", data)], role="clinician")
    ).status_code == 403
    plain = await client.post(
        "/dicom-web/studies",
        content=data,
        headers={**keys.headers("ops"), "Content-Type": "application/dicom"},
    )
    assert plain.status_code == 415
    cut = await client.post(
        "/dicom-web/studies",
        content=b"--b\r\nContent-Type: application/dicom\r\n\r\nabc",
        headers={
            **keys.headers("ops"),
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert cut.status_code == 400 and "closing boundary" in cut.json()["detail"]


async def test_a_part_over_the_size_cap_is_refused_and_the_rest_stored(
    client, keys, bus, tmp_path
) -> None:
    study = synthetic_uid(f"stow-{uuid.uuid4()}")
    big = instance(tmp_path, study, 1) + b"\0" * (1 << 20)  # the test app caps parts at 1 MiB
    response = await stow(
        client,
        keys,
        [("application/dicom", big), ("application/dicom", instance(tmp_path, study, 2))],
    )
    assert response.status_code == 202
    [failed] = sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [0xA700]
    assert "larger than" in response.headers["warning"]
    assert len(bus.events) == 1


async def test_a_part_without_the_preamble_is_stored_as_a_dicom_file(
    client, keys, bus, tmp_path
) -> None:
    data = instance(tmp_path, synthetic_uid(f"stow-{uuid.uuid4()}"), 1)
    assert data[128:132] == b"DICM"
    response = await stow(client, keys, [("application/dicom", data[132:])])
    assert response.status_code == 200, response.headers.get("warning")
    [event] = bus.events
    assert (
        Path(event.file.uri.removeprefix("file://")).read_bytes()
        == b"\0" * 128 + b"DICM" + data[132:]
    )


async def test_the_study_retrieve_url_is_present_even_when_it_has_no_value(
    client, keys, tmp_path
) -> None:
    """RetrieveURL (0008,1190) is Type 2 in the store response (PS3.18 Table I.1-1): two
    studies in one request, or nothing stored, give it without a value, never leave it out."""
    one, other = (synthetic_uid(f"stow-{uuid.uuid4()}") for _ in range(2))
    parts = [("application/dicom", instance(tmp_path, s, n)) for n, s in enumerate((one, other))]
    two = await stow(client, keys, parts)
    assert two.status_code == 200, two.text
    assert two.json()["00081190"] == {"vr": "UR"}
    assert len(sequence(two.json(), "00081199")) == 2
    garbage = await stow(client, keys, [("application/dicom", b"not DICOM")])
    assert garbage.status_code == 409
    assert garbage.json()["00081190"] == {"vr": "UR"}
