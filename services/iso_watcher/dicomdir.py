"""Which files of a disc to ingest: those its DICOMDIR references, or, without a (readable)
DICOMDIR, every file that looks like DICOM. What cannot be followed is reported.

`survey` is what runs on the untrusted disc's structure (the ISO 9660 directories through
pycdlib, the DICOMDIR through pydicom): the watcher runs it in an isolated worker process
with a memory limit and a time limit, so a hostile disc costs that worker, not the service."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from services.iso_watcher.disc import (
    Disc,
    UnreadableFile,
    looks_like_dicom,
    open_disc,
)

MAX_DICOMDIR_BYTES = 64 << 20
_VERSION = re.compile(r";[0-9]*$")


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str


@dataclass
class Plan:
    """Disc paths to ingest (in disc order), and what was reported instead."""

    mode: str  # "dicomdir" or "scan"
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    not_dicom: int = 0


def survey(source_path: str) -> tuple[dict[str, int], Plan]:
    """The disc's files (path -> size) and what to ingest of them. Raises `DamagedDisc`
    with the reason when the disc cannot be listed, whatever the parser raised."""
    disc = open_disc(Path(source_path))
    try:
        files = disc.files()
        return files, plan_disc(disc, files)
    finally:
        disc.close()


def normalise(path: str) -> str:
    """Match names the way a disc writer may have mangled them: any case, ISO 9660
    version suffixes (`;1`) and the trailing dot of extension-less names dropped."""
    parts = [_VERSION.sub("", p).rstrip(".").upper() for p in path.split("/") if p]
    return "/".join(parts)


def referenced_path(value: Any) -> str | None:
    """A ReferencedFileID as a disc path, or None when it would leave the disc's root.
    Components may come as a multi-valued CS or as one string with `\\` or `/` inside."""
    values = [value] if isinstance(value, str) else list(value)
    parts: list[str] = []
    for v in values:
        parts += re.split(r"[\\/]", str(v))
    if not parts or any(p.strip() in ("", ".", "..") or ":" in p for p in parts):
        return None
    return "/".join(p.strip() for p in parts)


def plan_disc(disc: Disc, files: dict[str, int]) -> Plan:
    index = {normalise(p): p for p in files}
    dicomdir = index.get("DICOMDIR")
    if dicomdir is not None:
        try:
            return _follow_dicomdir(disc, dicomdir, files[dicomdir], index)
        except MemoryError:
            raise  # a DICOMDIR bomb (a deflated one inflating to GBs): the disc fails
        except Exception as exc:  # a corrupt DICOMDIR may fail any way inside the parser
            problem = Problem(dicomdir, f"corrupt DICOMDIR, not followed: {exc}")
            plan = _scan(disc, files, skip=dicomdir)
            plan.problems.insert(0, problem)
            return plan
    return _scan(disc, files)


def _follow_dicomdir(disc: Disc, path: str, size: int, index: dict[str, str]) -> Plan:
    if size > MAX_DICOMDIR_BYTES:
        raise ValueError(f"{size} bytes, more than a DICOMDIR should hold")
    with disc.open(path) as f:
        data = f.read(size)
    if len(data) != size:
        raise UnreadableFile(f"read {len(data)} of {size} bytes")
    ds = dcmread(io.BytesIO(data))
    if "DirectoryRecordSequence" not in ds:
        raise ValueError("no DirectoryRecordSequence")
    plan = Plan(mode="dicomdir")
    seen: set[str] = set()
    for record in ds.DirectoryRecordSequence:
        value = record.get("ReferencedFileID")
        if value is None:
            continue  # patient, study, series records
        shown = "\\".join([value] if isinstance(value, str) else [str(v) for v in value])
        relative = referenced_path(value)
        if relative is None:
            plan.problems.append(Problem(shown, "ReferencedFileID escapes the disc root"))
            continue
        found = index.get(normalise(relative))
        if found is None:
            plan.problems.append(Problem(shown, "referenced by DICOMDIR but not on the disc"))
        elif found not in seen:
            seen.add(found)
            plan.files.append(found)
    return plan


def _scan(disc: Disc, files: dict[str, int], skip: str | None = None) -> Plan:
    plan = Plan(mode="scan")
    for path in sorted(files):
        if path == skip:
            continue
        if looks_like_dicom(disc, path):
            plan.files.append(path)
        else:
            plan.not_dicom += 1
    return plan
