"""How the ISO watcher reads a disc: DICOMDIR references are followed only inside the disc,
a corrupt DICOMDIR falls back to scanning, names match whatever the disc writer did."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from libs.dicom.synthetic import make_dataset, write_instance
from services.iso_watcher.dicomdir import normalise, plan_disc, referenced_path
from services.iso_watcher.disc import FolderDisc, UnreadableFile, copy_out
from services.iso_watcher.rounds import Entry, Settler, inbox_entries, staged_name

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def instance(path: Path) -> None:
    uid = f"2.25.{uuid.uuid4().int}"
    ds = make_dataset(
        patient_id="P1", patient_name="Disc^Unit", study_uid=uid + ".1",
        series_uid=uid + ".2", sop_uid=uid + ".3", rows=8, columns=8,
    )  # fmt: skip
    write_instance(path, ds)


def write_dicomdir(path: Path, refs: list[list[str] | str]) -> None:
    """A minimal DICOMDIR: one IMAGE record per reference (enough for the reader)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "UNIT"
    records = []
    for ref in refs:
        rec = Dataset()
        rec.DirectoryRecordType = "IMAGE"
        rec.ReferencedFileID = ref
        records.append(rec)
    ds.DirectoryRecordSequence = Sequence(records)
    ds.save_as(path, enforce_file_format=True)


def test_names_match_iso_9660_mangling() -> None:
    assert normalise("DICOM/P00/IM000001.;1") == "DICOM/P00/IM000001"
    assert normalise("dicom/p00/im000001") == "DICOM/P00/IM000001"
    assert normalise("DICOMDIR;1") == "DICOMDIR"
    assert referenced_path(["DICOM", "P00", "IM000001"]) == "DICOM/P00/IM000001"
    assert referenced_path("DICOM\\P00\\IM000001") == "DICOM/P00/IM000001"
    assert referenced_path("DICOM/P00/IM000001") == "DICOM/P00/IM000001"
    for escaping in (["..", "ETC", "PASSWD"], ["DICOM", "..", "..", "X"], ["C:", "X"], [""]):
        assert referenced_path(escaping) is None, escaping


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the malicious DICOMDIR's
def test_dicomdir_outside_the_root_is_reported_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.dcm"  # a real DICOM file beside the disc
    instance(secret)
    disc_root = tmp_path / "CD"
    instance(disc_root / "DICOM" / "IM000001")
    (disc_root / "DICOM" / "LINK").symlink_to(secret)
    write_dicomdir(
        disc_root / "DICOMDIR",
        [["DICOM", "IM000001"], ["..", "SECRET.DCM"], ["DICOM", "LINK"], ["DICOM", "GONE"]],
    )
    disc = FolderDisc(disc_root)
    plan = plan_disc(disc, disc.files())
    assert plan.mode == "dicomdir"
    assert plan.files == ["DICOM/IM000001"]
    problems = {p.path: p.problem for p in plan.problems}
    assert "escapes the disc root" in problems["..\\SECRET.DCM"]
    assert "not on the disc" in problems["DICOM\\LINK"]  # a symlink is not a disc file
    assert "not on the disc" in problems["DICOM\\GONE"]
    with pytest.raises(UnreadableFile):
        disc.open("../secret.dcm")


def test_corrupt_dicomdir_is_reported_and_the_disc_scanned(tmp_path: Path) -> None:
    root = tmp_path / "CD"
    instance(root / "A" / "IM1")
    (root / "A" / "NOTES.TXT").write_text("not DICOM")
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    disc = FolderDisc(root)
    plan = plan_disc(disc, disc.files())
    assert plan.mode == "scan"
    assert plan.files == ["A/IM1"]
    assert plan.not_dicom == 1
    assert "corrupt DICOMDIR" in plan.problems[0].problem


def test_copy_out_streams_and_refuses_short_files(tmp_path: Path) -> None:
    root = tmp_path / "CD"
    instance(root / "IM1")
    disc = FolderDisc(root)
    size = disc.files()["IM1"]
    assert copy_out(disc, "IM1", size, tmp_path / "out" / "a") == size
    assert (tmp_path / "out" / "a").read_bytes() == (root / "IM1").read_bytes()
    with pytest.raises(UnreadableFile, match="truncated"):
        copy_out(disc, "IM1", size + 10, tmp_path / "out" / "b")
    assert not (tmp_path / "out" / "b").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a"]  # no temp files left


def test_inbox_lists_images_and_copied_cds_and_waits_for_them_to_settle(tmp_path: Path) -> None:
    inbox = tmp_path / "+++"
    (inbox / "processed").mkdir(parents=True)
    (inbox / "disc.ISO").write_bytes(b"x" * 10)
    (inbox / "notes.txt").write_text("no")
    (inbox / "COPY").mkdir()
    (inbox / "COPY" / "DICOMDIR").write_bytes(b"d")
    (inbox / "NODIR").mkdir()
    entries = inbox_entries(inbox, {inbox / "processed"})
    assert [(e.path.name, e.kind) for e in entries] == [
        ("COPY", "disc-folder"),
        ("disc.ISO", "iso"),
    ]

    settler = Settler(settle_seconds=5)
    growing = Entry(inbox / "disc.ISO", "iso", (1, 10, 1))
    assert not settler.settled(growing, now=0)
    assert not settler.settled(Entry(growing.path, "iso", (1, 20, 2)), now=6)  # grew
    assert not settler.settled(Entry(growing.path, "iso", (1, 20, 2)), now=10)
    assert settler.settled(Entry(growing.path, "iso", (1, 20, 2)), now=11)
    settler.forget_all_but([])  # taken out of the inbox: if it comes back, it starts over
    assert not settler.settled(Entry(growing.path, "iso", (1, 20, 2)), now=20)
    assert staged_name(3, "DICOM/P00/IM000001.;1") == "000003-IM000001"
    assert staged_name(4, "a/../b c;1") == "000004-B_C"
