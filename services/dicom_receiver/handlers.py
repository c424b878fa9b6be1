"""What the receiver does with one C-STORE: write the bytes it was sent, durably, under a name
of its own (never a UID from the wire), and describe it for the ledger."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from libs.db.ledger import NewFile

PREAMBLE = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True)
class Peer:
    """Who is sending on one association; `assoc_id` is the correlation id of its instances."""

    calling_ae: str
    address: str
    port: int
    assoc_id: str

    @property
    def origin(self) -> str:
        return f"{self.calling_ae}@{self.address}:{self.port}"


@dataclass(frozen=True)
class Staged:
    path: Path
    size: int


def staging_folder(root: Path, now: datetime | None = None) -> Path:
    """One folder per hour, so a batch fsyncs few directories and folders stay small."""
    return root / (now or datetime.now(UTC)).strftime("%Y%m%d%H")


class StagingFile:
    """One instance being received: preamble, file meta, then the data set fragments exactly
    as the sender encoded them, written as they arrive (a 2 GB multi-frame never sits in
    memory). `finish` makes it durable, `discard` removes it (abort, failure). The name is
    ours, never a UID from the wire. Written under its final name (a rename cost 0.2-0.3 ms
    more per instance): a file left by a crash mid-receive has no ledger row, so nothing
    reads it, and the sender, never answered, sends it again."""

    def __init__(self, root: Path, meta: bytes) -> None:
        self.folder = staging_folder(root)
        self.path = self.folder / f"{uuid.uuid4().hex}.dcm"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            self._fd: int | None = os.open(self.path, flags, 0o640)
        except FileNotFoundError:  # the hour's first instance (mkdir only then)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, flags, 0o640)
        self.size = 0
        try:
            self.write(PREAMBLE + meta)
        except BaseException:  # disk full on the first bytes: leave nothing behind
            self.discard()
            raise

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def finish(self, *, fsync: bool) -> Staged:
        """fdatasync the file. Its folder is fsynced once per group of instances, by the
        committer (`sync_folders`), before any of them is recorded or answered. Blocking:
        run it off the event loop; associations finish in parallel threads."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        return Staged(self.path, self.size)

    def discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)


def sync_folders(folders: Collection[Path]) -> None:
    """fsync each folder: the names created in it survive a crash. One call for a group of
    instances (usually one hour folder): a folder fsync per instance cost ~2 ms each.

    Not `libs.staging.files.sync_folder` (one syncfs per batch, as the other sources use):
    syncfs flushes every dirty page of the filesystem, the pipeline's writes included
    (measured slower)."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_file(staged: Staged, peer: Peer) -> NewFile:
    return NewFile(
        source=f"dicom:{peer.calling_ae}",
        uri=staged.path.as_uri(),
        origin=peer.origin,
        size=staged.size,
        correlation_id=peer.assoc_id,
    )


def free_mb(root: Path) -> float:
    root.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(root).free / 2**20
