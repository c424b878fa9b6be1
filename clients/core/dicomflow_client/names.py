"""Folder and file names safe on Linux and Windows, from text we do not control (patient
names, study descriptions, archive entries)."""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from dicomflow_client.errors import UnsafeArchive

MAX_COMPONENT = 100
_INVALID = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]+')
_SPACES = re.compile(r"\s+")
_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in "123456789"}
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_name(text: str, fallback: str = "unknown") -> str:
    """One path component: NFC, no characters Windows forbids, no control characters, no
    leading/trailing dots or spaces, no device names (CON, NUL, COM1...), bounded length.
    A name that is already safe comes back unchanged (DICOMDIR references stay valid)."""
    name = unicodedata.normalize("NFC", text)
    name = "".join(ch if ch.isprintable() or ch == " " else "_" for ch in name)
    name = _SPACES.sub(" ", _INVALID.sub("_", name.replace("^", " ")))
    name = name.strip(" .")[:MAX_COMPONENT].rstrip(" .")
    if not name or name in (".", ".."):
        return fallback
    if name.split(".")[0].strip().upper() in _RESERVED:
        name = f"_{name}"
    return name


def entry_parts(name: str) -> list[str]:
    """An archive entry's path as safe components; UnsafeArchive when it would leave the
    folder it is unpacked into (absolute, drive letter, `..`)."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchive(f"The archive holds an entry with an absolute path: {name!r}.")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchive(f"The archive holds an entry that points outside its folder: {name!r}.")
    if not parts:
        raise UnsafeArchive(f"The archive holds an entry with an empty name: {name!r}.")
    return [safe_name(p, "_") for p in parts]


def study_folder_parts(
    patient_name: str, patient_id: str, study_date: date | None, description: str
) -> tuple[str, str]:
    """(`<patient>`, `<study date>_<description>`), e.g. ("Иванов Иван", "2024-03-15_CT Chest")."""
    patient = safe_name(" ".join(patient_name.replace("^", " ").split()) or patient_id, "Unknown")
    when = study_date.isoformat() if study_date else "no-date"
    return patient, safe_name(f"{when}_{description.strip() or 'study'}", when)
