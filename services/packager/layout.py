"""Where each instance goes inside an archive, with names safe on any OS, and the archive's
revision key (what the cache and the ETag are keyed by).

tar.zst: `<PatientName>_<StudyDate>/<SeriesNumber>_<SeriesDescription>/<InstanceNumber>.dcm`.
ZIP and TAR: `<PatientName>_<StudyDate>/DICOMDIR` and
`<PatientName>_<StudyDate>/DICOM/PT000000/ST000000/SE000000/IM000000` ... (ISO 9660 file IDs
the DICOMDIR references, services/packager/dicomdir.py). Each has `manifest.json`. Every
component is NFC, letters/digits/`-`/`_`/`.` only (anything else becomes `_`), no leading or
trailing dots/spaces, at most 64 characters, never a Windows device name, and unique among
its siblings ignoring case (macOS and Windows file systems fold case): `_2`, `_3` ... follow.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

from libs.db.archives import ArchiveInstance, ArchiveListing, StudyHeader
from services.packager.dicomdir import Entry, file_id

Format = Literal["tar.zst", "zip", "tar"]
WITH_DICOMDIR: frozenset[Format] = frozenset({"zip", "tar"})
# Bump when the layout or the writers change: every key changes with it. 2: DICOMDIR in ZIP
# and TAR, zstd frame checksums, manifest v2.
LAYOUT_VERSION = 2
MAX_COMPONENT = 64
_UNSAFE = re.compile(r"[^\w.-]+")
_REPEATS = re.compile(r"_{2,}")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in "123456789"
}


def safe_component(text: str, fallback: str = "unknown") -> str:
    """One path component from untrusted text (patient names, descriptions)."""
    name = unicodedata.normalize("NFC", text)
    name = "".join(ch if ch.isprintable() else "_" for ch in name)
    name = _UNSAFE.sub("_", name.replace("^", "_").replace("=", "_"))
    name = _REPEATS.sub("_", name).strip("._- ")[:MAX_COMPONENT].rstrip("._- ")
    if not name:
        return fallback
    if name.split(".")[0].upper() in _WINDOWS_DEVICES:
        name = f"_{name}"
    return name


class UniqueNames:
    """Hands out names unique within one folder, ignoring case."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, name: str, suffix: str = "") -> str:
        candidate, n = name, 1
        while (candidate + suffix).casefold() in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._taken.add((candidate + suffix).casefold())
        return candidate + suffix


@dataclass(frozen=True)
class Member:
    path: str  # inside the archive, '/'-separated
    series_uid: str
    sop_instance_uid: str
    size: int
    sha256: str
    revision_key: str | None = None  # the latest header correction's bytes (ADR 0025)


@dataclass(frozen=True)
class Directory:
    """What the DICOMDIR of a ZIP or TAR is made of."""

    patient_name: str
    study_date: str  # DICOM DA, empty when unknown
    header: StudyHeader
    entries: list[Entry]


@dataclass(frozen=True)
class Plan:
    """Everything that decides an archive's bytes; `key` changes whenever any of it does."""

    study_uid: str
    series_uid: str | None
    format: Format
    root: str
    members: list[Member]
    last_modified: datetime
    key: str
    directory: Directory | None = None

    @property
    def manifest_path(self) -> str:
        return f"{self.root}/manifest.json"

    @property
    def dicomdir_path(self) -> str:
        return f"{self.root}/DICOMDIR"

    def manifest(self, dicomdir: bytes | None = None) -> bytes:
        """What a client checks an unpacked archive against: every file's size and SHA-256
        (the DICOMDIR's too), so a truncated or altered archive is found out."""
        body: dict[str, object] = {
            "manifest_version": 2,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "format": self.format,
            "revision": self.key,
        }
        if dicomdir is not None:
            body["dicomdir"] = {
                "path": self.dicomdir_path,
                "size": len(dicomdir),
                "sha256": hashlib.sha256(dicomdir).hexdigest(),
            }
        body["files"] = [
            {
                "path": m.path,
                "sop_instance_uid": m.sop_instance_uid,
                "series_uid": m.series_uid,
                "size": m.size,
                "sha256": m.sha256,
            }
            for m in self.members
        ]
        return json.dumps(body, indent=1, ensure_ascii=False).encode()


def plan_archive(
    listing: ArchiveListing, fmt: Format, series_uid: str | None, encoder: str
) -> Plan:
    """`encoder` names the compression settings (they change the bytes, so the key too)."""
    date = listing.study_date.strftime("%Y%m%d") if listing.study_date else "nodate"
    root = f"{safe_component(listing.patient_name, 'anonymous')}_{date}"
    if fmt in WITH_DICOMDIR:
        members, directory = _iso_members(listing, root)
    else:
        members, directory = _readable_members(listing, root), None
    last_modified = max(i.indexed_at for i in listing.instances)
    identity = json.dumps(
        [LAYOUT_VERSION, fmt, encoder, listing.study_uid, series_uid, root]
        + [[m.path, m.sop_instance_uid, m.sha256, m.size] for m in members]
        + ([asdict(directory)] if directory else []),
        default=str,
    )
    key = hashlib.sha256(identity.encode()).hexdigest()[:40]
    return Plan(listing.study_uid, series_uid, fmt, root, members, last_modified, key, directory)


def _member(path: str, inst: ArchiveInstance) -> Member:
    return Member(
        path=path,
        series_uid=inst.series_uid,
        sop_instance_uid=inst.sop_instance_uid,
        size=inst.size_bytes,
        sha256=inst.file_sha256,
        revision_key=inst.revision_key,
    )


def _readable_members(listing: ArchiveListing, root: str) -> list[Member]:
    folders = UniqueNames()
    series_dirs: dict[str, str] = {}
    files: dict[str, UniqueNames] = {}
    members: list[Member] = []
    for inst in listing.instances:
        if inst.series_uid not in series_dirs:
            number = "x" if inst.series_number is None else str(inst.series_number)
            label = f"{number}_{safe_component(inst.series_description, 'series')}"
            series_dirs[inst.series_uid] = folders.claim(safe_component(label))
            files[inst.series_uid] = UniqueNames()
        stem = inst.sop_instance_uid if inst.instance_number is None else str(inst.instance_number)
        name = files[inst.series_uid].claim(safe_component(stem), ".dcm")
        members.append(_member(f"{root}/{series_dirs[inst.series_uid]}/{name}", inst))
    return members


def _iso_members(listing: ArchiveListing, root: str) -> tuple[list[Member], Directory]:
    """`DICOM/PT000000/ST000000/SE<series>/IM<instance>`: indexes in the listing's order
    (series number, then instance number), unique by construction."""
    series_index: dict[str, int] = {}
    counts: dict[str, int] = {}
    members: list[Member] = []
    entries: list[Entry] = []
    for inst in listing.instances:
        si = series_index.setdefault(inst.series_uid, len(series_index))
        ii = counts[inst.series_uid] = counts.get(inst.series_uid, -1) + 1
        fid = file_id(si, ii)
        members.append(_member(f"{root}/{fid}", inst))
        entries.append(
            Entry(
                file_id=fid,
                series_uid=inst.series_uid,
                series_number=si + 1 if inst.series_number is None else inst.series_number,
                modality=inst.modality,
                sop_instance_uid=inst.sop_instance_uid,
                sop_class_uid=inst.sop_class_uid,
                transfer_syntax_uid=inst.transfer_syntax_uid,
                instance_number=ii + 1 if inst.instance_number is None else inst.instance_number,
            )
        )
    date = listing.study_date.strftime("%Y%m%d") if listing.study_date else ""
    return members, Directory(listing.patient_name, date, listing.header, entries)
