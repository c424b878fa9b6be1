"""Verify and unpack an archive into a temporary folder, then rename it into place.

Verification: the zstd frame (its checksum when the frame carries one; a truncated frame is
an error), ZIP CRC-32s, every file's size and SHA-256 against `manifest.json` (an archive
without one, or holding a file it does not list, is refused), and the TAR structure (a
member cut short is an error). Any failure, or a
full disk, removes the temporary folder: a study folder is either complete or absent.

Safety: only regular files are written; a link, device, FIFO, absolute path or `..` entry
rejects the whole archive (UnsafeArchive); every name component goes through `safe_name`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from dicomflow_client.errors import ClientError, IntegrityError, UnsafeArchive, from_os_error
from dicomflow_client.names import entry_parts
from dicomflow_client.progress import Progress, ProgressFn

MARKER = ".dicomflow-study.json"
COPY = 1 << 20
Entry = tuple[str, int, Callable[[], IO[bytes]]]  # name, size, open


@dataclass
class Written:
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # entry name -> size, sha
    taken: set[str] = field(default_factory=set)  # casefolded relative paths


class _Counting(io.RawIOBase):
    """Counts the archive bytes read, for the progress bar."""

    def __init__(self, raw: IO[bytes], report: Callable[[int], None]) -> None:
        self._raw, self._report, self.count = raw, report, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        self._report(self.count)
        return int(n or 0)


def unpack(
    archive: Path,
    fmt: str,
    target: Path,
    *,
    marker: dict[str, Any],
    progress: ProgressFn | None = None,
) -> Path:
    """Unpack `archive` to `target` (replaced if it holds the same study); return `target`."""
    work = target.parent.parent / ".dicomflow" / "unpacking" / uuid.uuid4().hex
    total = archive.stat().st_size

    def report(done: int) -> None:
        if progress is not None:
            progress(Progress(done, total, 0.0, stage="unpack"))

    try:
        work.mkdir(parents=True)
        written = _extract(archive, fmt, work, report)
        _check_manifest(work, written, archive.name.removesuffix(".part"))
        root = _single_root(work)
        (root / MARKER).write_text(json.dumps(marker, ensure_ascii=False, indent=1))
        _move_into_place(root, target)
    except OSError as exc:
        raise from_os_error(exc, str(target.parent)) or ClientError(
            f"Cannot write the study folder {target}: {exc.strerror or exc}."
        ) from exc
    except (tarfile.TarError, zipfile.BadZipFile, zstandard.ZstdError, EOFError) as exc:
        raise IntegrityError(f"The downloaded archive is damaged or incomplete ({exc}).") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _extract(archive: Path, fmt: str, work: Path, report: Callable[[int], None]) -> Written:
    written = Written()
    with archive.open("rb") as raw:
        counted = io.BufferedReader(_Counting(raw, report), COPY)
        if fmt == "zip":
            for entry in _zip_entries(archive):
                _write(work, entry, written)
        elif fmt in ("tar.zst", "tar"):
            source: IO[bytes] = counted
            if fmt == "tar.zst":
                dctx = zstandard.ZstdDecompressor()
                source = dctx.stream_reader(counted, read_across_frames=True)
            for entry in _tar_entries(source):
                _write(work, entry, written)
            if fmt == "tar.zst":
                _check_zstd_end(source, counted)
        else:
            raise ClientError(f"Unknown archive format {fmt!r}.")
    return written


def _tar_entries(source: IO[bytes]) -> Iterator[Entry]:
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile():
                raise UnsafeArchive(
                    f"The archive holds a link or special file ({member.name!r}); not unpacked."
                )
            fileobj = tar.extractfile(member)
            assert fileobj is not None
            yield member.name, member.size, lambda f=fileobj: f  # type: ignore[misc]


def _zip_entries(archive: Path) -> Iterator[Entry]:
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir():
                continue
            if kind not in (0, stat.S_IFREG):
                raise UnsafeArchive(
                    f"The archive holds a link or special file ({info.filename!r}); not unpacked."
                )
            yield info.filename, info.file_size, lambda i=info: z.open(i)  # type: ignore[misc]


def _write(work: Path, entry: Entry, written: Written) -> None:
    name, size, opener = entry
    parts = _unique(written, entry_parts(name))
    dest = work.joinpath(*parts)
    if not dest.resolve().is_relative_to(work.resolve()):  # belt and braces
        raise UnsafeArchive(f"The archive entry {name!r} points outside its folder.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, count = hashlib.sha256(), 0
    with opener() as src, dest.open("xb") as out:
        while chunk := src.read(COPY):
            digest.update(chunk)
            out.write(chunk)
            count += len(chunk)
    if count != size:
        raise IntegrityError(f"The archive entry {name!r} is incomplete.")
    written.files[name] = (count, digest.hexdigest())


def _unique(written: Written, parts: list[str]) -> list[str]:
    """Two entries differing only in case (or made equal by `safe_name`) get `_2`, `_3`."""
    key = "/".join(parts).casefold()
    n = 1
    base = parts[-1]
    while key in written.taken:
        n += 1
        stem, dot, ext = base.rpartition(".")
        parts[-1] = f"{stem}_{n}.{ext}" if dot and stem else f"{base}_{n}"
        key = "/".join(parts).casefold()
    written.taken.add(key)
    return parts


def _check_zstd_end(source: IO[bytes], counted: IO[bytes]) -> None:
    """Whatever follows the TAR trailer must decompress too (a cut frame raises), and the
    whole file must have been consumed."""
    while source.read(COPY):
        pass
    if counted.read(1):
        raise IntegrityError("The downloaded archive has trailing bytes that are not zstd data.")


def _check_manifest(work: Path, written: Written, archive: str) -> None:
    """Every file the archive holds is listed in its manifest.json with the size and SHA-256
    it has, and every listed file is there. The packager writes a manifest into every archive
    (its first member): one without cannot be verified and is refused, as is a file the
    manifest does not list."""
    manifests = [n for n in written.files if n.rsplit("/", 1)[-1] == "manifest.json"]
    if not manifests:
        raise IntegrityError(
            f"The archive {archive} has no list of its files (manifest.json), so its content "
            "cannot be checked; nothing was unpacked."
        )
    name = manifests[0]
    path = work.joinpath(*entry_parts(name))
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        entries = [*body["files"], *([body["dicomdir"]] if body.get("dicomdir") else [])]
        listed = [(f["path"], int(f["size"]), str(f["sha256"])) for f in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError("The archive's list of files (manifest.json) is unreadable.") from exc
    for entry_path, size, sha in listed:
        got = written.files.get(entry_path)
        if got is None:
            raise IntegrityError(f"The archive is missing {entry_path!r}; it looks incomplete.")
        if got != (size, sha):
            raise IntegrityError(
                f"{entry_path!r} in the archive differs from the server's checksum (SHA-256)."
            )
    unlisted = set(written.files) - {name} - {entry_path for entry_path, _, _ in listed}
    if unlisted:
        raise IntegrityError(
            f"The archive {archive} holds {min(unlisted)!r}, which its list of files "
            "(manifest.json) does not name; nothing was unpacked."
        )


def _single_root(work: Path) -> Path:
    """The archive's own top folder when it has exactly one, else the work folder."""
    children = list(work.iterdir())
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return work


def _move_into_place(root: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same study again (fetch_study checked): swap, then remove the old
        old = root.parent / f".old-{uuid.uuid4().hex}"
        os.replace(target, old)
        os.replace(root, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(root, target)
