"""What the pipeline-wide fault tests share: a C-STORE sender that keeps sending through
receiver restarts, task polling that survives an API restart, and the check that every
stored object is the exact bytes of its source, stored once."""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from libs.dicom.synthetic import make_dataset, write_instance
from libs.storage import ObjectStore, open_store
from libs.storage.local import PARTIAL, path_from_file_url
from load_test.process_stack import Stack

RECEIVER = "dicom-receiver"
CALLING_AE = "FAULTSCU"


def receiver_env(root: Path, port: int) -> dict[str, str]:
    return {
        "RECEIVER_PORT": str(port),
        "RECEIVER_AE_TITLE": "DICOMFLOW",
        "RECEIVER_ALLOWED_CALLERS": CALLING_AE,
        "RECEIVER_STAGING_DIR": str(root / "staging" / "receiver"),
        "RECEIVER_MIN_FREE_MB": "0",
    }


@dataclass
class Sender:
    """Sends fresh synthetic instances one at a time over C-STORE until `stop()`, each until
    it is acknowledged (Success): a refused association or a connection lost mid-send (the
    receiver killed, the broker away) is retried with the same file. `acked` maps every
    acknowledged SOPInstanceUID to the file sent."""

    port: int
    folder: Path
    pace: float = 0.05  # seconds between instances: a steady stream, not a flood
    acked: dict[str, Path] = field(default_factory=dict)
    retries: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="c-store-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120) -> dict[str, Path]:
        """Stop after the instance in hand is acknowledged; return what was acknowledged."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the C-STORE sender did not finish"
        if self.error:
            raise self.error
        return self.acked

    def _next_file(self, n: int, study: str, series: str, pid: str) -> Path:
        sop = f"2.25.{uuid.uuid4().int}"
        ds = make_dataset(
            patient_id=pid,
            patient_name="Stream^Sent",
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            modality="CT",
            rows=16,
            columns=16,
            instance_number=n + 1,
            pixel_seed=uuid.uuid4().int % 2**30,
        )
        path = self.folder / f"{n:05d}.dcm"
        write_instance(path, ds)
        return path

    def _run(self) -> None:
        try:
            self._send()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _send(self) -> None:
        ae = AE(ae_title=CALLING_AE)
        for sop_class in (CTImageStorage, MRImageStorage):  # the files' own syntax only, so
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)  # sent as they are
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        self.folder.mkdir(parents=True, exist_ok=True)
        study, series, pid = (f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}", "STREAM")
        n = 0
        path: Path | None = None
        while True:
            if path is None:
                if self._stop.is_set():
                    return
                path = self._next_file(n, study, series, pid)
                n += 1
            assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMFLOW")
            if not assoc.is_established:
                self.retries += 1
                self._stop.wait(0.2)  # the receiver is restarting
                continue
            try:
                while path is not None:
                    try:  # the receiver may have gone (killed) since the last answer
                        status = assoc.send_c_store(path) if assoc.is_established else None
                    except RuntimeError:
                        status = None
                    if not status or status.Status != 0x0000:
                        self.retries += 1
                        break  # lost mid-send or refused for now: send it again
                    self.acked[
                        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                    ] = path
                    path = None
                    if self._stop.wait(self.pace):
                        break
                    path = self._next_file(n, study, series, pid)
                    n += 1
            finally:
                if assoc.is_established:
                    assoc.release()
                else:
                    assoc.abort()


async def task_if_reachable(stack: Stack, task_id: str) -> dict[str, Any] | None:
    """The task as the API shows it, or None while the API is away (being restarted)."""
    try:
        async with stack.client() as c:
            r = await c.get(f"/v1/imports/{task_id}")
    except httpx.HTTPError:
        return None
    if r.status_code != 200:  # the API is up but its database is not (yet)
        return None
    body: dict[str, Any] = r.json()
    return body


async def outcomes_at_least(stack: Stack, task_id: str, files: int) -> bool:
    """At least `files` of the task's files have reached their outcome."""
    task = await task_if_reachable(stack, task_id)
    if task is None:
        return False
    c = task["counters"]
    return bool(c["files_scanned"] - c["pending"] >= files)


async def ready(stack: Stack, name: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{stack.ports[name]}/ready", timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


async def task_finished(stack: Stack, task_id: str) -> dict[str, Any] | None:
    task = await task_if_reachable(stack, task_id)
    return task if task and task["status"] in ("completed", "failed") else None


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
               .SOPInstanceUID)  # fmt: skip


def sources_under(root: Path) -> dict[str, Path]:
    """{SOPInstanceUID: first file} of every readable DICOM file under `root` (the copies
    and the conflict of a test tree share a UID with an original: the original wins)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.dcm")):
        try:
            out.setdefault(sop_of(path), path)
        except Exception:  # the tree's not-DICOM files
            continue
    return out


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's bytes after its File Meta Information (preamble, "DICM", group 2):
    what a C-STORE carries. The group's length is (0002,0000) UL, the first element."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00", "not Part 10"
    return data[144 + int.from_bytes(data[140:144], "little") :]


async def stored_as_conflict(
    pool: asyncpg.Pool, store: ObjectStore, sop: str, source: bytes
) -> bool:
    """The conflicts of `sop` hold exactly the bytes of `source`."""
    prefix = store.url.rstrip("/") + "/"
    for url in await pool.fetch(
        "SELECT storage_url FROM conflicts WHERE sop_instance_uid = $1", sop
    ):
        key = url["storage_url"][len(prefix) :]
        if b"".join([chunk async for chunk in store.read(key)]) == source:
            return True
    return False


def partial_writes(stack: Stack) -> list[str]:
    """Temp files in local storage (`.partial/`): a write in progress, or one cut short by a
    kill that the storage-writer's sweep has not removed yet. None on GCS (uploads are
    atomic)."""
    url = stack.env["STORAGE_URL"]
    folder = path_from_file_url(url) / PARTIAL if url.startswith("file:") else None
    return sorted(p.name for p in folder.iterdir()) if folder and folder.is_dir() else []


@dataclass
class StoredCheck:
    instances: int
    objects: int
    bytes_verified: int


async def verify_storage(
    stack: Stack,
    pool: asyncpg.Pool,
    sources: dict[str, Path],
    sent: set[str] = frozenset(),  # type: ignore[assignment]
) -> StoredCheck:
    """Every indexed instance's stored object is read back in full and compared with its
    source: the whole file for imported ones, the dataset for instances in `sent` (C-STORE
    carries the dataset; the receiver writes its own file meta). The store holds one object
    per instance (and per conflict) under `studies/` and `conflicts/`, nothing else besides
    previews: nothing stored twice, no temporary leftovers."""
    store = open_store(stack.env["STORAGE_URL"])
    rows = await pool.fetch(
        """SELECT i.sop_instance_uid, i.storage_url, i.file_sha256, f.uri
             FROM instances i JOIN ingest_files f ON f.id = i.first_file_id"""
    )
    prefix = store.url.rstrip("/") + "/"
    expected_keys = set()
    verified = 0
    for r in rows:
        sop = r["sop_instance_uid"]
        assert r["storage_url"].startswith(prefix), r
        key = r["storage_url"][len(prefix) :]
        expected_keys.add(key)
        stored = b"".join([chunk async for chunk in store.read(key)])
        assert hashlib.sha256(stored).hexdigest() == r["file_sha256"], f"{key} changed"
        source = sources[sop].read_bytes()
        if sop in sent:
            assert dataset_bytes(stored) == dataset_bytes(source), f"{sop}: not what was sent"
        elif stored != source and await stored_as_conflict(pool, store, sop, source):
            # A tree's same-UID file got there first (kills reorder work): it is the
            # instance, the original its conflict. The instance is the file it came from.
            assert stored == path_from_file_url(r["uri"]).read_bytes(), f"{sop}: not {r['uri']}"
        else:
            assert stored == source, f"{sop}: stored bytes differ from {sources[sop]}"
        verified += len(stored)
    conflicts = await pool.fetchval("SELECT count(*) FROM conflicts")
    keys = [k async for k in store.keys()]  # noqa: SIM118  # an async listing, not a dict
    dicom = [k for k in keys if not k.endswith(".jpg")]
    stray = [k for k in dicom if not k.startswith(("studies/", "conflicts/"))]
    assert not stray, f"objects outside the layout: {stray[:5]}"
    left = partial_writes(stack)
    assert not left, f"temp files of interrupted writes left in storage: {left[:5]}"
    assert {k for k in dicom if k.startswith("studies/")} == expected_keys
    assert len([k for k in dicom if k.startswith("conflicts/")]) == conflicts
    return StoredCheck(len(rows), len(dicom), verified)
