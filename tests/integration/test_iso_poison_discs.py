"""Poison discs in the ISO inbox: a DICOMDIR that inflates to hundreds of MB and an image
that makes pycdlib raise are parsed in the isolated worker; each fails alone, with its
reason, and moves to failed/; the watcher's memory stays flat and the next disc is read."""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from libs.contracts.events import Event, FileDiscovered
from libs.db import tasks
from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.runtime.sandbox import IsolatedExecutor
from load_test.peers import PEER_ENV, require_binary
from services.iso_watcher.bootstrap import PgDiscStore
from services.iso_watcher.dicomdir import Plan, survey
from services.iso_watcher.rounds import Settler, run_round

DEFLATED = "1.2.840.10008.1.2.1.99"


def instances(folder: Path, n: int, tag: str) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        ds = make_dataset(
            patient_id="P1",
            patient_name="Disc^Test",
            study_uid=synthetic_uid(f"{tag}:study"),
            series_uid=synthetic_uid(f"{tag}:series"),
            sop_uid=synthetic_uid(f"{tag}:{i}"),
            rows=8,
            columns=8,
        )
        write_instance(folder / f"IM{i:06d}", ds)


def dicomdir_bomb(path: Path, inflated: int) -> None:
    """A deflated DICOMDIR of ~inflated/1000 bytes whose data set inflates to `inflated`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5")
    meta.TransferSyntaxUID = UID(DEFLATED)
    meta.ImplementationClassUID = UID("1.2.3.4")
    with path.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        f.write(deflate.compress(struct.pack("<HH2sHL", 0x0011, 0x1010, b"OB", 0, inflated)))
        zeros = bytes(1 << 20)
        for _ in range(inflated >> 20):
            f.write(deflate.compress(zeros))
        f.write(deflate.flush())


def iso(tree: Path, target: Path) -> Path:
    argv = [require_binary("genisoimage"), "-quiet", "-J", "-R", "-V", "DICOMFLOW", "-o"]
    subprocess.run([*argv, str(target), str(tree)], env=PEER_ENV, check=True)
    return target


def broken_iso(tree: Path, target: Path) -> Path:
    """An image whose Rock Ridge entry of one file is garbled: pycdlib's walk raises
    AttributeError (found by mutating images: 1 of 3000 mutations of this layout)."""
    tree.mkdir()
    for i in (1, 2, 3):
        (tree / f"f{i}.dcm").write_bytes(bytes(3000))
    data = bytearray(iso(tree, target).read_bytes())
    at = data.index(b"F1.DCM;1") + len(b"F1.DCM;1")
    data[at : at + 4] = b"\xca\xebz\xae"
    target.write_bytes(data)
    return target


class Published(list[Event]):
    async def __call__(self, events: Sequence[Event]) -> None:
        self.extend(events)


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


async def test_poison_discs_fail_alone_and_move_to_failed(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    instances(inbox / "a-bomb" / "DICOM", 1, "bomb")
    dicomdir_bomb(inbox / "a-bomb" / "DICOMDIR", 400 << 20)  # 408 KB on disc
    broken_iso(tmp_path / "broken-tree", inbox / "b-broken.iso")
    instances(tmp_path / "good-tree" / "DICOM", 2, "good")
    iso(tmp_path / "good-tree", inbox / "c-good.iso")

    parser = IsolatedExecutor(
        workers=1, memory_limit_mb=256, timeout_s=60, preload=(survey.__module__,)
    )

    async def isolated(source_path: str) -> tuple[dict[str, int], Plan]:
        files, plan = await parser.run(survey, source_path)
        return files, plan

    store, published = PgDiscStore(pool), Published()
    settler = Settler(0)
    base, peak, running = rss(), 0, True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(3):  # first look, then read, then the failed ones move out
            await run_round(
                inbox=inbox,
                settler=settler,
                store=store,
                publish=published,
                staging=staging,
                processed=inbox / "processed",
                failed=inbox / "failed",
                batch_size=10,
                survey=isolated,
            )
    finally:
        running = False
        sampler.join()
        parser.close()
    print(f"\nwatcher RSS {base >> 20} MiB -> peak {peak >> 20} MiB")
    assert peak - base < 100 << 20, f"the watcher grew by {(peak - base) >> 20} MiB"

    reports = {
        p.name.removesuffix(".report.json"): json.loads(p.read_text())
        for p in (inbox / "failed").glob("*.report.json")
    }
    assert set(reports) == {"a-bomb", "b-broken.iso"}
    assert "more than 256 MB" in reports["a-bomb"]["error"]
    assert "AttributeError" in reports["b-broken.iso"]["error"]
    assert (inbox / "failed" / "a-bomb").is_dir() and (inbox / "failed" / "b-broken.iso").is_file()
    # The good disc after them was read: its two instances emitted, its task running.
    assert (inbox / "c-good.iso").exists()
    good = [e for e in published if isinstance(e, FileDiscovered)]
    assert len(good) == 2 and all("c-good.iso!/" in e.origin for e in good)
    async with pool.acquire() as conn:
        statuses = sorted(t.status for t in await tasks.list_tasks(conn))
    assert statuses == ["failed", "failed", "running"]


async def test_a_full_staging_disk_holds_the_disc_instead_of_failing_its_files(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Staging fills while a disc is copied out: the round stops and is retried (the disc
    resumes where it was), no file is reported unreadable; with space freed, all are read."""
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    instances(tmp_path / "tree" / "DICOM", 3, "full")
    for f in (tmp_path / "tree" / "DICOM").iterdir():  # ~600 KB each
        f.write_bytes(f.read_bytes() + bytes(600_000))
    iso(tmp_path / "tree", inbox / "disc.iso")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(staging)], check=True)
    filler = staging / "filler"
    filler.write_bytes(bytes(2_200_000))  # ~0.9 MB left: one file fits, not two
    parser = IsolatedExecutor(workers=1, memory_limit_mb=256, timeout_s=60)

    async def isolated(source_path: str) -> tuple[dict[str, int], Plan]:
        files, plan = await parser.run(survey, source_path)
        return files, plan

    store, published, settler = PgDiscStore(pool), Published(), Settler(0)

    async def round_() -> None:
        await run_round(
            inbox=inbox,
            settler=settler,
            store=store,
            publish=published,
            staging=staging,
            processed=inbox / "processed",
            failed=inbox / "failed",
            batch_size=1,
            survey=isolated,
        )

    try:
        await round_()  # first look
        try:
            await round_()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        else:
            raise AssertionError("a full staging disk went unnoticed")
        [disc] = await store.open_discs()
        assert not disc.scan_completed and disc.task_status == "running"
        filler.unlink()  # space freed: the next round resumes the disc and reads it whole
        await round_()
    finally:
        parser.close()
        subprocess.run(["umount", "-l", str(staging)], check=True)
    [disc] = await store.open_discs()
    assert disc.scan_completed and disc.scan["problems"] == []
    assert len({e.file.uri for e in published if isinstance(e, FileDiscovered)}) == 3
