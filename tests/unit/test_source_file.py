"""A file swapped for a symbolic link between the scan and the extraction is not read: the
extractor re-checks, on the file it opens, that it is inside the roots it was found under."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from libs.contracts.errors import SourceGone
from libs.contracts.events import DicomHeader, FileDiscovered, FileRef, Hashes
from libs.dicom.extract import extract_many
from libs.dicom.source_file import A_LINK, OUTSIDE, SourceOutsideRoots
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from services.extractor.config import ExtractorSettings
from services.extractor.handlers import handle_discovered_batch
from services.nas_watcher.scanner import walk


def instance(path: Path, patient: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(
        patient_id=patient,
        patient_name=f"{patient}^Test",
        study_uid=synthetic_uid(f"{patient}:study"),
        series_uid=synthetic_uid(f"{patient}:series"),
        sop_uid=synthetic_uid(f"{patient}:sop"),
        rows=8,
        columns=8,
    )
    write_instance(path, ds)
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A NAS root with one study, and a folder outside it holding another patient's file."""
    root, outside = tmp_path / "nas", tmp_path / "outside"
    instance(root / "S1" / "a.dcm", "INSIDE")
    instance(outside / "a.dcm", "SECRET")
    monkeypatch.setenv("NAS_ROOTS", str(root))
    return root, outside


def extract(path: Path) -> tuple[DicomHeader, Hashes] | Exception:
    [result] = extract_many([str(path)], False, ExtractorSettings().source_roots())
    return result


def patient_of(path: Path) -> str:
    result = extract(path)
    assert not isinstance(result, Exception), result
    return result[0].patient.patient_id


def scanned(root: Path) -> list[Path]:
    return [Path(d, f.name) for d, files in walk(root) for f in files]


def test_a_file_swapped_for_a_link_outside_after_the_scan_is_refused(
    tree: tuple[Path, Path],
) -> None:
    root, outside = tree
    [found] = scanned(root)  # the scan saw a regular file inside the root
    found.unlink()
    found.symlink_to(outside / "a.dcm")  # ... replaced before the extractor reads it
    result = extract(found)
    assert isinstance(result, SourceOutsideRoots) and str(result) == OUTSIDE
    # A link to a path outside that does not exist gets the same reason: nothing is revealed.
    found.unlink()
    found.symlink_to(outside / "missing.dcm")
    assert str(extract(found)) == OUTSIDE


def test_a_folder_swapped_for_a_link_outside_after_the_scan_is_refused(
    tree: tuple[Path, Path],
) -> None:
    root, outside = tree
    [found] = scanned(root)
    (root / "S1").rename(root / "moved")
    (root / "S1").symlink_to(outside)  # the same name, now in the other patient's folder
    assert str(extract(found)) == OUTSIDE


@pytest.mark.parametrize("swap", ["file", "folder"])
def test_a_swap_between_the_check_and_the_open_is_caught_on_the_opened_file(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """The file is checked, then swapped, then opened: O_NOFOLLOW refuses a link in its
    place, the opened file's own path (/proc/self/fd) a folder turned into one."""
    root, outside = tree
    [found] = scanned(root)
    real_open: Callable[..., int] = os.open

    def swapping_open(path: str, flags: int, *args: int) -> int:
        if found.is_symlink() or (root / "S1").is_symlink():
            pass  # swapped once
        elif swap == "file":
            found.unlink()
            found.symlink_to(outside / "a.dcm")
        else:
            (root / "S1").rename(root / "moved")
            (root / "S1").symlink_to(outside)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swapping_open)  # the open of `source_file`
    assert str(extract(found)) == OUTSIDE


def test_links_inside_the_roots_are_still_read(tree: tuple[Path, Path]) -> None:
    """The scanner follows links that stay inside the roots: so does the extractor."""
    root, _ = tree
    (root / "batch").mkdir()
    (root / "batch" / "shared").symlink_to(root / "S1")
    (root / "batch" / "b.dcm").symlink_to(root / "S1" / "a.dcm")
    for path in (root / "batch" / "shared" / "a.dcm", root / "batch" / "b.dcm"):
        assert patient_of(path) == "INSIDE"


def test_import_roots_are_a_group_of_their_own(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tree
    imports = outside.parent / "imports"
    instance(imports / "x.dcm", "IMPORTED")
    monkeypatch.setenv("NAS_IMPORT_ROOTS", str(imports))
    assert patient_of(imports / "x.dcm") == "IMPORTED"
    (imports / "y.dcm").symlink_to(root / "S1" / "a.dcm")  # out of the import roots
    assert str(extract(imports / "y.dcm")) == OUTSIDE


def test_a_file_outside_every_root_is_read_only_if_it_is_no_link(tmp_path: Path) -> None:
    """A copy a source staged itself (receiver, Orthanc, ISO...) is never a link."""
    staged = instance(tmp_path / "staging" / "a.dcm", "STAGED")
    assert patient_of(staged) == "STAGED"
    (tmp_path / "staging" / "b.dcm").symlink_to(staged)
    assert str(extract(tmp_path / "staging" / "b.dcm")) == A_LINK


@pytest.mark.timeout(10)  # a plain open() of a FIFO waits for a writer forever
def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    [found] = scanned(root)
    found.unlink()
    os.mkfifo(found)
    assert isinstance(extract(found), SourceGone)


async def test_the_extractor_service_gives_one_reason_for_a_link_outside_whatever_its_target(
    tree: tuple[Path, Path],
) -> None:
    """Through the extractor's handler (not only `extract_many`): a link leading outside the
    roots is refused with the same reason whether its target exists or not, so a refusal
    (logged, dead-lettered, shown on the import task) never tells what exists outside."""
    root, outside = tree
    roots = ExtractorSettings().source_roots()

    async def parse_many(paths: list[str]) -> list[object]:
        return list(extract_many(paths, False, roots))

    links = {"existing": root / "to-secret.dcm", "missing": root / "to-nothing.dcm"}
    links["existing"].symlink_to(outside / "a.dcm")
    links["missing"].symlink_to(outside / "missing.dcm")
    events = [
        FileDiscovered(
            correlation_id=f"c{n}",
            source="nas",
            origin=str(link),
            file=FileRef(file_id=n, uri=link.as_uri(), size=0),
        )
        for n, link in enumerate(links.values())
    ]
    outcomes = await handle_discovered_batch(events, parse_many=parse_many)  # type: ignore[arg-type]
    assert [type(o) for o in outcomes] == [SourceOutsideRoots, SourceOutsideRoots]
    assert [str(o) for o in outcomes] == [OUTSIDE, OUTSIDE]
