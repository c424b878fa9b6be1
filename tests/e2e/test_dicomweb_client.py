"""DICOMweb checked with a real client (`dicomweb-client` from PyPI) against the running
stack: studies imported through the pipeline are found by QIDO at every level, retrieved
byte for byte, their metadata is what pydicom reads, frames of the JPEG-LS, JPEG 2000, RLE,
JPEG and big-endian files decode to the file's pixels; STOW-RS puts new instances through
the pipeline (found by QIDO once indexed) and refuses garbage per instance with a reason."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from libs.dicom.synthetic import make_dataset, synthetic_uid
from libs.storage import instance_key
from libs.storage.local import path_from_file_url
from load_test.process_stack import Stack
from tests.integration.api.dicomweb_seed import Seeded, codec_files, synthetic_files
from tests.polling import eventually

EVRLE = "1.2.840.10008.1.2.1"
# One parser process: the stack starts faster on a busy machine; throughput is not measured.
pytestmark = pytest.mark.stack_env(EXTRACTOR_WORKERS="1")


def client_for(stack: Stack) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{stack.api}/dicom-web", headers={"Authorization": f"Bearer {stack.key}"}
    )


def first(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value", [None])[0]


async def import_tree(stack: Stack, files: list[Seeded]) -> None:
    task = await stack.wait_task(await stack.start_import(files[0].path.parent))
    assert task["status"] == "completed", task
    assert task["counters"]["new_instances"] == len(files), task


async def test_dicomweb_client_finds_and_retrieves_what_the_pipeline_indexed(
    stack: Stack,
) -> None:
    tree = stack.root / "imports" / "dicomweb"
    tree.mkdir(parents=True)
    synthetic, codecs = synthetic_files(tree), codec_files(tree)
    await import_tree(stack, synthetic + codecs)
    dw = client_for(stack)

    # QIDO at every level, with the matching rules.
    def pids(**kw: Any) -> list[str]:
        return sorted(first(s, "00100020") for s in dw.search_for_studies(**kw))

    assert pids(search_filters={"PatientName": "иванов*"}) == ["DW-1"]
    assert pids(search_filters={"PatientName": "Иван"}, fuzzymatching=True) == ["DW-1", "DW-3"]
    assert pids(search_filters={"PatientName": "MULLER^JOSE"}) == ["DW-2"]
    assert pids(search_filters={"StudyDate": "20220101-20231231", "PatientID": "DW-?"}) == [
        "DW-2",
        "DW-3",
    ]
    assert pids(search_filters={"ModalitiesInStudy": "MR", "PatientID": "DW-?"}) == ["DW-2"]
    assert pids(search_filters={"AccessionNumber": "ACC-3"}) == ["DW-3"]
    ivanov = [f for f in synthetic if f.study == synthetic[0].study]
    both = f"{ivanov[0].study},{codecs[0].study}"
    assert pids(search_filters={"StudyInstanceUID": both}) == ["DW-1", "DW-CODECS"]
    series = dw.search_for_series(ivanov[0].study)
    assert [first(s, "00200011") for s in series] == [1, 2]
    assert [first(s, "00201209") for s in series] == [2, 2]
    found = dw.search_for_series(search_filters={"SeriesInstanceUID": ivanov[2].series})
    assert [first(s, "0020000D") for s in found] == [ivanov[0].study]
    mr = dw.search_for_series(search_filters={"Modality": "MR", "PatientID": "DW-2"})
    assert len(mr) == 1
    instances = dw.search_for_instances(ivanov[0].study, ivanov[0].series)
    assert [first(i, "00080018") for i in instances] == [ivanov[0].sop, ivanov[1].sop]
    one = dw.search_for_instances(search_filters={"SOPInstanceUID": ivanov[3].sop})
    assert [first(i, "0020000E") for i in one] == [ivanov[3].series]
    assert len(dw.search_for_instances(ivanov[0].study)) == 4
    with pytest.raises(requests.HTTPError) as bad:
        dw.search_for_studies(search_filters={"StudyDate": "20240101-20230101"})
    assert bad.value.response.status_code == 400

    # WADO-RS: the stored bytes, unchanged (SHA-256 of the file sent and of the stored copy).
    storage = path_from_file_url(stack.env["STORAGE_URL"])
    for f in codecs:
        url = f"{stack.api}/dicom-web/studies/{f.study}/series/{f.series}/instances/{f.sop}"
        # The parts as dicomweb-client's multipart decoder gives them (its public retrieve
        # methods parse them into datasets, which would hide a changed byte).
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        response = dw._http_get(url, headers={"Accept": accept})
        [data] = list(dw._decode_multipart_message(response, stream=False))
        digest = hashlib.sha256(data).hexdigest()
        assert digest == hashlib.sha256(f.path.read_bytes()).hexdigest(), f.path.name
        stored = storage / instance_key(f.study, f.series, f.sop)
        assert digest == hashlib.sha256(stored.read_bytes()).hexdigest()
    study = dw.retrieve_study(codecs[0].study, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(f.sop for f in codecs)

    # Metadata: what pydicom reads from the file, pixel data as a BulkDataURI.
    metadata = dw.retrieve_series_metadata(ivanov[0].study, ivanov[0].series)
    for item, f in zip(metadata, ivanov[:2], strict=True):
        expected = dcmread(f.path).to_json_dict(1024, lambda e: "")
        expected.pop("7FE00010")
        assert item.pop("7FE00010")["BulkDataURI"].startswith(f"{stack.api}/dicom-web/")
        assert item == expected

    # Frames: as stored, and decoded to the file's pixel array.
    for f in codecs:
        ds = dcmread(f.path)
        [raw] = dw.retrieve_instance_frames(
            f.study, f.series, f.sop, [1], media_types=(("application/octet-stream", EVRLE),)
        )
        reference = ds.pixel_array if int(ds.get("NumberOfFrames", 1)) == 1 else ds.pixel_array[0]
        got = np.frombuffer(raw, dtype=reference.dtype.newbyteorder("<"))
        np.testing.assert_array_equal(got.reshape(reference.shape), reference, f.path.name)
        jpeg = dw.retrieve_instance_rendered(f.study, f.series, f.sop, media_types=("image/jpeg",))
        assert Image.open(io.BytesIO(jpeg)).size == (ds.Columns, ds.Rows), f.path.name


def new_instance(study: str, n: int) -> Dataset:
    return make_dataset(
        patient_id="DW-STOW",
        patient_name="Сидорова^Анна",
        study_uid=study,
        series_uid=synthetic_uid(f"{study}-series"),
        sop_uid=synthetic_uid(f"{study}-{n}"),
        instance_number=n,
    )


async def test_stow_puts_instances_through_the_pipeline_and_refuses_garbage(
    stack: Stack,
) -> None:
    dw = client_for(stack)
    study = synthetic_uid(f"dw-stow-{time.time_ns()}")
    answer = dw.store_instances([new_instance(study, 1), new_instance(study, 2)])
    assert len(answer.ReferencedSOPSequence) == 2
    assert "FailedSOPSequence" not in answer
    await eventually(
        lambda: len(dw.search_for_instances(study)) >= 2,
        90,
        what=lambda: stack.tail("indexer"),
        interval=0.5,
    )
    [found] = dw.search_for_studies(search_filters={"PatientName": "сидорова*"})
    assert first(found, "0020000D") == study and first(found, "00201208") == 2

    garbage = new_instance(study, 3)
    garbage.SOPInstanceUID = "not a UID"
    answer = dw.store_instances([garbage, new_instance(study, 4)])  # 202: one stored
    [failed] = answer.FailedSOPSequence
    assert failed.FailureReason == 0xC000
    assert len(answer.ReferencedSOPSequence) == 1
    with pytest.raises(requests.HTTPError) as refused:
        dw.store_instances([garbage])
    response = refused.value.response
    assert response.status_code == 409
    assert "SOPInstanceUID" in response.headers["Warning"]
    path = Path(stack.env["API_STOW_STAGING_DIR"])
    assert path.is_dir()
