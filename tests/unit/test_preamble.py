"""Polyglot preambles (CVE-2019-11687 PE/ELF, CVE-2023-33466 JSON): refused with the reason,
or, when allowed, stored with the preamble zeroed and the change recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from libs.contracts.errors import DicomParseError
from libs.contracts.events import FileRef, InstanceUnique
from libs.dicom.extract import extract_file
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.storage.local import LocalStore
from services.storage_writer.handlers import handle_unique, storage_key

CORPUS = Path(  # beside the project; DICOM_FUZZ_CORPUS where a checkout lives elsewhere
    os.environ.get("DICOM_FUZZ_CORPUS")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom-fuzz-corpus-v3"
)
POLYGLOTS = sorted((CORPUS / "cat24_cve_orthanc_osirix").glob("*_preamble_json_*.dcm"))


def instance(tmp_path: Path, preamble: bytes) -> Path:
    ds = make_dataset(
        patient_id="P1",
        patient_name="Doe^Jane",
        study_uid=synthetic_uid("pre:study"),
        series_uid=synthetic_uid("pre:series"),
        sop_uid=synthetic_uid("pre:sop"),
        rows=8,
        columns=8,
    )
    path = tmp_path / "a.dcm"
    write_instance(path, ds)
    data = path.read_bytes()
    path.write_bytes(preamble.ljust(128, b"\0") + data[128:])
    return path


def test_the_corpus_json_polyglots_are_refused_with_the_reason() -> None:
    assert len(POLYGLOTS) == 3, f"fuzz corpus missing at {CORPUS}"
    for path in POLYGLOTS:
        with pytest.raises(DicomParseError, match=r"^polyglot preamble: .*JSON"):
            extract_file(str(path))


@pytest.mark.parametrize(
    ("preamble", "kind"),
    [
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00", "Windows executable"),
        (b"\x7fELF\x02\x01\x01", "ELF executable"),
        (b"\xff" * 128, "non-zero bytes"),
    ],
    ids=["pe", "elf", "ff"],
)
def test_executable_and_other_preambles_are_refused(
    tmp_path: Path, preamble: bytes, kind: str
) -> None:
    with pytest.raises(DicomParseError, match=rf"^polyglot preamble: .*{kind}"):
        extract_file(str(instance(tmp_path, preamble)))


@pytest.mark.parametrize(
    "preamble",
    [b"", b"II*\x00\x08\x00\x00\x00", b"MM\x00*\x00\x00\x00\x08"],
    ids=["zeros", "tiff-le", "tiff-be"],
)
def test_zero_and_tiff_preambles_are_accepted(tmp_path: Path, preamble: bytes) -> None:
    path = instance(tmp_path, preamble)
    _, hashes = extract_file(str(path))
    assert hashes.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not hashes.preamble_zeroed


async def test_allowed_polyglot_is_stored_with_the_preamble_zeroed(tmp_path: Path) -> None:
    source = POLYGLOTS[0]
    header, hashes = extract_file(str(source), zero_hostile_preamble=True)
    data = source.read_bytes()
    zeroed = bytes(128) + data[128:]
    assert hashes.preamble_zeroed
    assert hashes.file_sha256 == hashlib.sha256(zeroed).hexdigest()
    event = InstanceUnique(
        correlation_id="c1",
        source="nas",
        file=FileRef(file_id=1, uri=source.as_uri(), size=len(data)),
        header=header,
        hashes=hashes,
        disposition="new",
    )
    store = LocalStore((tmp_path / "storage").as_uri())
    [stored] = await handle_unique(event, storage=store)
    assert stored.storage_url == store.url_for(storage_key(event))
    chunks = [c async for c in store.read(storage_key(event))]
    assert b"".join(chunks) == zeroed  # the JSON is gone, every other byte as received
    assert source.read_bytes() == data  # the source is untouched
