"""One study from search result to a verified folder: check the free space, download (with
resume), verify and unpack; a truncated or tampered archive is thrown away and downloaded
once more before giving up."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from dicomflow_client.api import ArchiveFormat, Client, Study
from dicomflow_client.download import Partial, download
from dicomflow_client.errors import DiskFull, IntegrityError
from dicomflow_client.names import study_folder_parts
from dicomflow_client.progress import ProgressFn, human_size
from dicomflow_client.unpack import MARKER, unpack

ATTEMPTS = 2


def partial_path(out_dir: Path, study_uid: str, fmt: ArchiveFormat) -> Path:
    """Where a download in progress lives (kept across restarts of the program)."""
    return out_dir / ".dicomflow" / "downloads" / f"{study_uid}.{fmt}.part"


def study_folder(out_dir: Path, study: Study) -> Path:
    """`<out>/<patient>/<study date>_<description>`; `_2`, `_3`... when that folder already
    holds another study (the same study is replaced by its new download)."""
    p = study.patient
    patient, name = study_folder_parts(
        p.patient_name, p.patient_id, study.study_date, study.study_description
    )
    base = out_dir / patient / name
    candidate, n = base, 1
    while candidate.exists() and _marker_uid(candidate) != study.study_uid:
        n += 1
        candidate = base.with_name(f"{name}_{n}")
    return candidate


def _marker_uid(folder: Path) -> str | None:
    try:
        uid = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("study_uid")
    except (OSError, ValueError, AttributeError):
        return None
    return uid if isinstance(uid, str) else None


def check_space(out_dir: Path, study: Study, already: int) -> None:
    """Room for the archive (what is left of it) and the unpacked files, before starting."""
    out_dir.mkdir(parents=True, exist_ok=True)
    need = max(0, study.size_bytes - already) + study.size_bytes
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise DiskFull(
            f"Not enough free space in {out_dir}: the study needs about {human_size(need)}, "
            f"{human_size(free)} is free."
        )


def fetch_study(
    client: Client,
    study: Study,
    out_dir: Path,
    *,
    fmt: ArchiveFormat = "tar.zst",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    keep_archive: bool = False,
) -> Path:
    """Download, verify and unpack `study` under `out_dir`; return its folder."""
    url = client.archive_url(study.study_uid, fmt)
    part_path = partial_path(out_dir, study.study_uid, fmt)
    part = Partial(part_path)
    check_space(out_dir, study, part.size())
    for attempt in range(1, ATTEMPTS + 1):
        got = download(client.http, url, part_path, progress=progress, cancel=cancel)
        marker = {"study_uid": study.study_uid, "format": fmt, "etag": got.etag}
        try:
            folder = unpack(
                got.path, fmt, study_folder(out_dir, study), marker=marker, progress=progress
            )
        except IntegrityError as exc:
            part.discard()
            if attempt == ATTEMPTS:
                raise IntegrityError(
                    f"The study archive arrived damaged twice; nothing was unpacked. {exc}"
                ) from exc
            continue
        if not keep_archive:
            part.discard()
        return folder
    raise AssertionError("unreachable")
