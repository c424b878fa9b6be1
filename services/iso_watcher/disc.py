"""A disc's files, read without mounting: an ISO 9660 image (pycdlib; Rock Ridge or Joliet
names where present) or a folder holding a copied CD. Both are read-only and streamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from libs.staging.files import copy_stream

DICOM_MAGIC_OFFSET = 128


class DamagedDisc(Exception):
    """The disc cannot be read at all (not an ISO 9660 image, truncated before its
    directories, an unreadable folder)."""


class UnreadableFile(Exception):
    """One file of the disc cannot be read whole; the others may be fine."""


class Disc(Protocol):
    def files(self) -> dict[str, int]:
        """Every regular file: disc path ('/'-separated, as named on the disc) -> size."""
        ...

    def open(self, path: str) -> BinaryIO: ...
    def close(self) -> None: ...


class IsoDisc:
    """An ISO 9660 image through pycdlib, preferring Rock Ridge, then Joliet, then the plain
    ISO 9660 names (uppercase, `;1` versions).

    pycdlib silently shortens a file that runs past the end of a truncated image; so when the
    image is shorter than its volume descriptor declares, a file reaching the end of the
    image is reported unreadable rather than ingested cut short."""

    def __init__(self, path: Path) -> None:
        self._fp = path.open("rb")
        self._image_size = path.stat().st_size
        self._ends: dict[str, int] = {}
        self._iso = pycdlib.PyCdlib()
        try:
            self._iso.open_fp(self._fp)
        except (PyCdlibException, OSError, ValueError, IndexError, KeyError) as exc:
            self._fp.close()
            raise DamagedDisc(f"not a readable ISO 9660 image: {exc}") from exc
        block = self._iso.pvd.logical_block_size()
        self._truncated = self._iso.pvd.space_size * block > self._image_size
        self._block = block
        if self._iso.has_rock_ridge():
            self._kind = "rr_path"
        elif self._iso.has_joliet():
            self._kind = "joliet_path"
        else:
            self._kind = "iso_path"

    def files(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            for directory, _, names in self._iso.walk(**{self._kind: "/"}):
                for name in names:
                    path = f"{directory.rstrip('/')}/{name}"
                    try:
                        record = self._iso.get_record(**{self._kind: path})
                        size = int(record.get_data_length())
                        out[path.lstrip("/")] = size
                        self._ends[path.lstrip("/")] = record.extent_location() * self._block + size
                    except PyCdlibException:
                        continue  # a symlink or special Rock Ridge entry: not a file
        except (PyCdlibException, OSError) as exc:
            raise DamagedDisc(f"cannot list the image's directories: {exc}") from exc
        return out

    def open(self, path: str) -> BinaryIO:
        if self._truncated and self._ends.get(path, 0) >= self._image_size:
            raise UnreadableFile("the image ends inside this file (truncated image)")
        try:
            stream = self._iso.open_file_from_iso(**{self._kind: "/" + path})
        except (PyCdlibException, OSError) as exc:
            raise UnreadableFile(str(exc)) from exc
        return cast(BinaryIO, stream)  # an io.RawIOBase over the image's extent

    def close(self) -> None:
        try:
            self._iso.close()
        finally:
            self._fp.close()


class FolderDisc:
    """A copied CD: a folder. Symbolic links are not followed out of it."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise DamagedDisc(f"{root} is not a folder")
        self.root = root.resolve()

    def files(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for directory, _, names in os.walk(self.root, onerror=_raise):
            for name in names:
                full = Path(directory, name)
                if full.is_file() and not full.is_symlink():
                    out[full.relative_to(self.root).as_posix()] = full.stat().st_size
        return out

    def open(self, path: str) -> BinaryIO:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root):
            raise UnreadableFile(f"{path} leads outside the disc")
        try:
            return full.open("rb")
        except OSError as exc:
            raise UnreadableFile(str(exc)) from exc

    def close(self) -> None:
        pass


def _raise(exc: OSError) -> None:
    raise DamagedDisc(f"folder unreadable: {exc}")


def open_disc(path: Path) -> Disc:
    return FolderDisc(path) if path.is_dir() else IsoDisc(path)


def looks_like_dicom(disc: Disc, path: str) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with disc.open(path) as f:
            head = f.read(DICOM_MAGIC_OFFSET + 4)
    except UnreadableFile:
        return True  # let the copy report it
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def copy_out(disc: Disc, path: str, size: int, target: Path) -> int:
    """Stream one file to `target` (not yet durable: see `libs.staging.files.sync_folder`); a file
    shorter than its directory entry says (a truncated image) is unreadable, and nothing is
    left at `target`."""
    try:
        with disc.open(path) as f:
            written = copy_stream(target, f, limit=size, durable=False)
    except OSError as exc:
        raise UnreadableFile(str(exc)) from exc
    if written != size:
        target.unlink(missing_ok=True)
        raise UnreadableFile(f"read {written} of {size} bytes (the image is truncated)")
    return written
