"""ZIP and TAR archives a workstation can import: a DICOMDIR whose records reference every
image under ISO 9660 names, read back by pydicom's FileSet and DCMTK's dcmdump; the tar.zst
manifest and zstd frame checksums that let a client detect a truncated or altered archive."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import zstandard
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from libs.db.archives import ArchiveInstance, ArchiveListing, StudyHeader
from libs.dicom.synthetic import make_dataset, write_instance
from libs.storage import instance_key
from libs.storage.memory import MemoryStore
from services.packager.cache import ArchiveCache
from services.packager.dicomdir import Entry, build_dicomdir, file_id
from services.packager.packager import Encoding, Packager

STUDY = "1.2.826.0.1.3680043.10.1.1"
SERIES = ["1.2.826.0.1.3680043.10.1.1.1", "1.2.826.0.1.3680043.10.1.1.2"]
ISO_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")
NAME = "Иванов^Иван"
SR = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: no IMAGE record


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Study:
    """Real synthetic DICOM files (two series, one instance without a number, one SR) in a
    memory store, the listing the index would give, and a packager over both."""

    def __init__(self, tmp: Path) -> None:
        self.store = MemoryStore()
        self.files: dict[str, bytes] = {}  # SOP instance UID -> bytes
        self.classes: dict[str, str] = {}
        rows: list[ArchiveInstance] = []
        plan = [(0, 1, CTImageStorage), (0, 2, CTImageStorage), (0, None, CTImageStorage)]
        plan += [(1, 1, CTImageStorage), (1, 2, SR)]
        for n, (series, number, sop_class) in enumerate(plan):
            sop = f"{SERIES[series]}.{n + 1}"
            ds = make_dataset(
                patient_id="DEMO0001",
                patient_name=NAME,
                study_uid=STUDY,
                series_uid=SERIES[series],
                sop_uid=sop,
                series_number=series + 1,
                instance_number=number or 0,
                study_date="20240115",
                study_description="Грудная клетка",
                pixel_seed=n,
            )
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
            if number is None:
                del ds.InstanceNumber
            path = tmp / "src" / f"{n}.dcm"
            write_instance(path, ds)
            data = path.read_bytes()
            self.files[sop] = data
            self.classes[sop] = sop_class
            self.store.objects[instance_key(STUDY, SERIES[series], sop)] = data
            rows.append(
                ArchiveInstance(
                    SERIES[series],
                    series + 1,
                    "CT chest",
                    sop,
                    number,
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                    datetime(2024, 5, 2, tzinfo=UTC),
                    modality="CT",
                    sop_class_uid=sop_class,
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                )
            )
        header = StudyHeader(
            patient_id="DEMO0001",
            study_time="101500",
            study_id="7",
            accession_number="ACC1",
            study_description="Грудная клетка",
        )

        async def listings(study: str, series: str | None) -> ArchiveListing | None:
            chosen = [r for r in rows if series is None or r.series_uid == series]
            if study != STUDY or not chosen:
                return None
            return ArchiveListing(STUDY, NAME, date(2024, 1, 15), chosen, header)

        async def publish(*_: object) -> None:
            return None

        cache = ArchiveCache(tmp / "cache", 1 << 30)
        cache.prepare()
        self.packager = Packager(
            store=self.store,
            cache=cache,
            listings=listings,
            publish=publish,
            encoding=Encoding(3, 0),
        )

    async def archive(self, fmt: str) -> bytes:
        plan = await self.packager.plan(STUDY, None, fmt)  # type: ignore[arg-type]
        assert plan is not None
        return (await self.packager.ensure(plan)).read_bytes()


def unpack(fmt: str, data: bytes, into: Path) -> None:
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            assert z.testzip() is None  # every member's CRC-32
            z.extractall(into)
        return
    if fmt == "tar.zst":
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


@pytest.mark.parametrize("fmt", ["zip", "tar"])
async def test_zip_and_tar_carry_a_dicomdir_a_workstation_reads(tmp_path: Path, fmt: str) -> None:
    s = Study(tmp_path)
    out = tmp_path / "out"
    unpack(fmt, await s.archive(fmt), out)
    [root] = list(out.iterdir())
    assert root.name == "Иванов_Иван_20240115"
    dicomdir = root / "DICOMDIR"

    # Every instance is stored under DICOM/ with ISO 9660 names, byte for byte.
    stored = sorted(p for p in (root / "DICOM").rglob("*") if p.is_file())
    assert len(stored) == len(s.files) == 5
    for path in stored:
        parts = path.relative_to(root).parts
        assert parts[0] == "DICOM" and len(parts) <= 8
        assert all(ISO_COMPONENT.match(p) for p in parts), parts
    by_sop = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in stored}
    assert {sop: p.read_bytes() for sop, p in by_sop.items()} == s.files

    # pydicom's FileSet: one patient, one study, two series, an IMAGE record per image
    # (the SR has none), each referencing the file that holds that instance.
    fs = FileSet(dicomdir)
    images = [sop for sop, c in s.classes.items() if c != SR]
    assert sorted(i.SOPInstanceUID for i in fs) == sorted(images)
    for instance in fs:
        assert Path(instance.path) == by_sop[instance.SOPInstanceUID]
        assert instance.ReferencedSOPClassUIDInFile == CTImageStorage
        ds = instance.load()
        assert ds.SOPInstanceUID == instance.SOPInstanceUID
    [patient] = fs.find_values("PatientID")
    assert patient == "DEMO0001"
    assert fs.find_values("PatientName") == [NAME]
    assert sorted(fs.find_values("SeriesInstanceUID")) == sorted(SERIES)
    assert fs.find_values("StudyDescription") == ["Грудная клетка"]

    # DCMTK reads it as a Media Storage Directory with the same records.
    dump = subprocess.run(
        ["dcmdump", "+U8", str(dicomdir)], capture_output=True, text=True, check=True
    ).stdout
    assert "=MediaStorageDirectoryStorage" in dump
    assert dump.count("DirectoryRecordType") == 1 + 1 + 2 + len(images)
    refs = re.findall(r'refFileID="([^"]+)"', dump)
    assert sorted(refs) == sorted(
        str(by_sop[sop].relative_to(root)).replace("/", "\\") for sop in images
    )

    # The manifest names every file with its SHA-256, the DICOMDIR too.
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == fmt and manifest["manifest_version"] == 2
    assert manifest["dicomdir"]["sha256"] == hashlib.sha256(dicomdir.read_bytes()).hexdigest()
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert _sha(data) == entry["sha256"] == _sha(s.files[entry["sop_instance_uid"]])


async def test_archives_are_deterministic_and_formats_differ_in_key(tmp_path: Path) -> None:
    s = Study(tmp_path)
    keys = set()
    for fmt in ("zip", "tar", "tar.zst"):
        plan = await s.packager.plan(STUDY, None, fmt)  # type: ignore[arg-type]
        assert plan is not None
        first = (await s.packager.ensure(plan)).read_bytes()
        s.packager.cache.path(plan).unlink()  # evicted: the rebuild has the same bytes
        assert (await s.packager.ensure(plan)).read_bytes() == first
        keys.add(plan.key)
    assert len(keys) == 3


async def test_tar_zst_keeps_readable_names_and_detects_damage(tmp_path: Path) -> None:
    """The manifest's hashes and the zstd frame checksum: a flipped byte or a cut archive is
    an error for the client, never a silently different file."""
    s = Study(tmp_path)
    data = await s.archive("tar.zst")
    out = tmp_path / "out"
    unpack("tar.zst", data, out)
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    assert "dicomdir" not in manifest
    for entry in manifest["files"]:
        assert re.fullmatch(r"Иванов_Иван_20240115/[12]_CT_chest/[\w.]+\.dcm", entry["path"])
        assert _sha((out / entry["path"]).read_bytes()) == entry["sha256"]
    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(flipped))).read()
    # A cut archive: the frame never ends (the decompressor says so), and the zstd tool agrees.
    whole = zstandard.ZstdDecompressor().decompressobj()
    whole.decompress(data)
    assert whole.eof
    cut = data[: len(data) - 100]
    partial = zstandard.ZstdDecompressor().decompressobj()
    partial.decompress(cut)
    assert not partial.eof
    for damaged, name in ((bytes(flipped), "flipped"), (cut, "cut"), (data, "whole")):
        path = tmp_path / f"{name}.tar.zst"
        path.write_bytes(damaged)
        test = subprocess.run(["zstd", "-q", "-t", str(path)], capture_output=True)
        assert (test.returncode == 0) == (name == "whole"), (name, test.stderr)


def test_dicomdir_offsets_match_pydicoms_own_writer(tmp_path: Path) -> None:
    """Our linear writer and pydicom's FileSet.write give the same records and offsets for the
    same instances (pydicom's is the reference; it writes every instance out, ours does not)."""
    entries, fs = [], FileSet()
    for n in range(6):
        ds = make_dataset(
            patient_id="P1",
            patient_name=NAME,
            study_uid=STUDY,
            series_uid=SERIES[n // 3],
            sop_uid=f"{STUDY}.9.{n}",
            series_number=n // 3 + 1,
            instance_number=n % 3 + 1,
            study_date="20240115",
        )
        ds.StudyTime, ds.StudyID, ds.AccessionNumber = "101500", "7", "ACC1"
        ds.StudyDescription = "Грудная клетка"
        entries.append(
            Entry(
                file_id(n // 3, n % 3),
                SERIES[n // 3],
                n // 3 + 1,
                "CT",
                ds.SOPInstanceUID,
                ds.SOPClassUID,
                str(ds.file_meta.TransferSyntaxUID),
                n % 3 + 1,
            )
        )
        fs.add(ds)
    fs.write(tmp_path / "reference")
    reference = dcmread(tmp_path / "reference" / "DICOMDIR")
    ours = dcmread(
        io.BytesIO(
            build_dicomdir(
                revision="r",
                study_uid=STUDY,
                patient_name=NAME,
                study_date="20240115",
                header=StudyHeader("P1", "101500", "7", "ACC1", "Грудная клетка"),
                entries=entries,
            )
        )
    )
    assert ours.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    ref_records = reference.DirectoryRecordSequence
    our_records = ours.DirectoryRecordSequence
    assert len(our_records) == len(ref_records) == 1 + 1 + 2 + 6
    for a, b in zip(our_records, ref_records, strict=True):
        assert a.DirectoryRecordType == b.DirectoryRecordType
        for kw in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber"):
            assert a.get(kw) == b.get(kw)
        if "ReferencedSOPInstanceUIDInFile" in b:
            assert a.ReferencedSOPInstanceUIDInFile == b.ReferencedSOPInstanceUIDInFile
            assert a.ReferencedFileID[0] == "DICOM"

    # Same structure of pointers: each record's "next" and "lower" point at the same index.
    def pointers(ds: object) -> list[tuple[int | None, int | None]]:
        records = ds.DirectoryRecordSequence  # type: ignore[attr-defined]
        index = {r.seq_item_tell: i for i, r in enumerate(records)}
        return [
            (
                index.get(r.OffsetOfTheNextDirectoryRecord),
                index.get(r.OffsetOfReferencedLowerLevelDirectoryEntity),
            )
            for r in records
        ]

    assert pointers(ours) == pointers(reference)
