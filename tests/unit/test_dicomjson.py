"""The DICOM JSON header the extractor keeps for WADO-RS metadata: what pydicom's own
`to_json_dict` gives for the whole file, with bulk data as relative BulkDataURIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from libs.dicom.dicomjson import (
    MAX_JSON_CHARS,
    absolute_bulk_uris,
    bulk_path,
    header_json,
)
from libs.dicom.extract import extract_file

FILES = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
    "examples_ybr_color.dcm",
    "rtplan.dcm",
]


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return str(path)


@pytest.mark.parametrize("name", FILES)
def test_the_extracted_header_is_pydicoms_json_of_the_whole_file(name: str) -> None:
    header, hashes = extract_file(data_file(name))
    assert header.dicom_json is not None
    got = json.loads(header.dicom_json)
    full = dcmread(data_file(name))
    pixel = full["PixelData"] if "PixelData" in full else None  # noqa: SIM401 - the element
    expected = full.to_json_dict(
        bulk_data_threshold=1024, bulk_data_element_handler=lambda e: f"bulkdata/{e.tag:08X}"
    )
    expected = {k: v for k, v in expected.items() if k < "7FE00010"}  # after pixels: not read
    if pixel is not None:
        assert hashes.has_pixels
        expected["7FE00010"] = {"vr": pixel.VR, "BulkDataURI": "bulkdata/7FE00010"}
    assert got == expected


def test_nested_bulk_data_names_its_path_and_absolute_uris_are_made_at_answer_time() -> None:
    ds = Dataset()
    ds.PatientName = "Иванов^Иван"
    item = Dataset()
    item.add_new(0x00091010, "OB", b"\x01" * 4000)
    ds.add_new(0x00540016, "SQ", [Dataset(), item])
    text = header_json(ds, (0x7FE00010, "OB"))
    assert text is not None and "Иванов" in text
    model = json.loads(text)
    assert model["00540016"]["Value"][1]["00091010"]["BulkDataURI"] == (
        "bulkdata/00540016/2/00091010"
    )
    assert bulk_path("00540016/2/00091010") == [(0x00540016, 2), (0x00091010, None)]
    absolute = json.loads(
        absolute_bulk_uris(text, "http://h/dicom-web/studies/1/series/2/instances/3")
    )
    assert absolute["7FE00010"]["BulkDataURI"] == (
        "http://h/dicom-web/studies/1/series/2/instances/3/bulkdata/7FE00010"
    )


def test_a_header_too_large_for_an_event_is_left_to_the_stored_file(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00204000, "UT", "x" * (MAX_JSON_CHARS + 10))
    assert header_json(ds) is None


@pytest.mark.parametrize("bad", ["", "7FE0001", "00540016/0/00091010", "00540016/1", "zz"])
def test_malformed_bulk_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        bulk_path(bad)
