"""DicomClient against real peers, Orthanc and DCMTK dcmqrscp: C-ECHO, C-FIND at every
level, C-GET, C-MOVE, and its errors."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

from libs.dicom.synthetic import generate_corpus, synthetic_uid
from libs.dicom_net.client import Cancelled, DicomClient
from libs.dicom_net.errors import (
    AssociationAborted,
    ConnectionFailed,
    DicomTimeout,
    FailureStatus,
    RetrieveTooLarge,
)
from libs.dicom_net.models import Level, Peer, Progress, Query, Root
from libs.dicom_net.transport import UNCOMPRESSED
from libs.dicom_net.worklist import WorklistItem, WorklistQuery
from libs.tools.dev_broker import free_port, wait_for_port
from load_test.dimse import QueryRetrieveSCP, StoreSCP, storescu
from load_test.peers import PEER_ENV, Orthanc, require_binary
from services.dicom_receiver import pdus
from services.dicom_receiver.scp import supported_contexts
from tests.polling import eventually

pytestmark = pytest.mark.integration


class Upstream:
    def __init__(self, orthanc: Orthanc, scp: StoreSCP, studies: dict[str, list[str]]) -> None:
        self.orthanc = orthanc
        self.scp = scp
        self.studies = studies  # study uid -> SOP instance uids

    def client(self, **kwargs: object) -> DicomClient:
        peer = Peer(ae_title="ORTHANC", host="127.0.0.1", port=self.orthanc.dicom_port)
        return DicomClient(peer, calling_ae="DFCLIENT", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    root = tmp_path_factory.mktemp("upstream")
    generate_corpus(root / "corpus", 60, rows=32, columns=32)  # studies of 50 and 10
    studies: dict[str, list[str]] = {}
    files = sorted((root / "corpus").rglob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        studies.setdefault(str(ds.StudyInstanceUID), []).append(str(ds.SOPInstanceUID))
    scp = StoreSCP(root / "moved")
    scp.start()
    orthanc = Orthanc(
        root / "orthanc",
        modalities={
            "client": ("DFCLIENT", "127.0.0.1", free_port()),
            "dest": ("STORESCP", "127.0.0.1", scp.port),
        },
    )
    orthanc.start()
    try:
        for path in files:
            orthanc.upload(path)
        wait_for_port("127.0.0.1", scp.port)
        yield Upstream(orthanc, scp, studies)
    finally:
        orthanc.stop()
        scp.stop()


def big_and_small(up: Upstream) -> tuple[str, str]:
    ordered = sorted(up.studies, key=lambda s: -len(up.studies[s]))
    return ordered[0], ordered[1]


async def test_echo_and_find_at_every_level(upstream: Upstream) -> None:
    client = upstream.client()
    await client.echo()
    big, small = big_and_small(upstream)

    studies = await client.find(Query(level=Level.STUDY))
    assert {m.study_uid: m.number_of_instances for m in studies} == {big: 50, small: 10}
    assert {tuple(m.modalities) for m in studies} >= {("CT",)}
    dated = await client.find(Query(level=Level.STUDY, study_date="20240101-20240131"))
    assert len(dated) == 2
    assert await client.find(Query(level=Level.STUDY, study_date="20250101-")) == []

    patients = await client.find(Query(level=Level.PATIENT, root=Root.PATIENT))
    assert len(patients) == 2 and all(p.patient_id.startswith("BENCH") for p in patients)

    series = await client.find(Query(level=Level.SERIES, study_uid=big))
    assert sorted((s.modality, s.number_of_instances) for s in series) == [("CT", 40), ("MR", 10)]
    ct = next(s for s in series if s.modality == "CT")
    images = await client.find(Query(level=Level.IMAGE, study_uid=big, series_uid=ct.series_uid))
    assert len(images) == 40
    assert {i.sop_instance_uid for i in images} <= set(upstream.studies[big])

    by_patient = await client.find(
        Query(level=Level.STUDY, root=Root.PATIENT, patient_id=patients[0].patient_id)
    )
    assert len(by_patient) == 1


async def test_get_to_folder_with_progress(upstream: Upstream, tmp_path: Path) -> None:
    _, small = big_and_small(upstream)
    seen: list[Progress] = []
    result = await upstream.client().get(
        Query(level=Level.STUDY, study_uid=small), tmp_path, progress=seen.append
    )
    assert (result.status, result.completed, result.failed) == (0, 10, 0)
    got = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in result.files}
    assert got == set(upstream.studies[small])
    assert seen[-1].completed == 10 and seen[-1].remaining == 0
    assert len(seen) >= 2


async def test_move_to_named_destination(upstream: Upstream) -> None:
    big, _ = big_and_small(upstream)
    result = await upstream.client().move(Query(level=Level.STUDY, study_uid=big), "STORESCP")
    assert (result.completed, result.failed) == (50, 0)
    await eventually(
        lambda: len([p for p in upstream.scp.folder.rglob("*") if p.is_file()]) >= 50, 30
    )


async def test_clear_errors(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(FailureStatus) as failure:
        await upstream.client().move(Query(level=Level.STUDY), "NOWHERE")
    # Orthanc answers an unknown destination with 0xC000 (others use 0xA801)
    assert failure.value.code == 0xC000
    assert str(failure.value) == "C-MOVE failed with status 0xC000: Unable to process"

    closed = DicomClient(
        Peer(ae_title="NOBODY", host="127.0.0.1", port=free_port()),
        retries=2,
        retry_backoff=0.05,
    )
    t = time.monotonic()
    with pytest.raises(ConnectionFailed):
        await closed.echo()
    assert time.monotonic() - t >= 0.15  # two retries with backoff 0.05 + 0.1

    big, _ = big_and_small(upstream)
    task: asyncio.Task[object]

    def cancel_on_first(p: Progress) -> None:
        loop.call_soon_threadsafe(task.cancel)

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(
        upstream.client().get(
            Query(level=Level.STUDY, study_uid=big), tmp_path, progress=cancel_on_first
        )
    )
    with pytest.raises((asyncio.CancelledError, Cancelled)):
        await task


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, StoreSCP, int]]:
    """DCMTK's dcmqrscp holding one synthetic study of 20 instances (sent with storescu)."""
    root = tmp_path_factory.mktemp("dcmqrscp")
    generate_corpus(root / "corpus", 20, rows=32, columns=32)
    scp = StoreSCP(root / "moved")
    scp.start()
    qr = QueryRetrieveSCP(root / "qr", {"DFCLIENT": 0, "STORESCP": scp.port})
    try:
        qr.start()
        sent = storescu("127.0.0.1", qr.port, root / "corpus", called="DCMQRSCP")
        assert sent.returncode == 0, sent.output
        yield qr.port, scp, 20
    finally:
        qr.stop()
        scp.stop()


async def test_dcmqrscp_find_get_and_move(
    dcmqrscp: tuple[int, StoreSCP, int], tmp_path: Path
) -> None:
    port, scp, count = dcmqrscp
    client = DicomClient(
        Peer(ae_title="DCMQRSCP", host="127.0.0.1", port=port), calling_ae="DFCLIENT"
    )
    await client.echo()
    (study,) = await client.find(Query(level=Level.STUDY))
    (patient,) = await client.find(Query(level=Level.PATIENT, root=Root.PATIENT))
    assert patient.patient_id.startswith("BENCH")
    (series,) = await client.find(Query(level=Level.SERIES, study_uid=study.study_uid))
    images = await client.find(
        Query(level=Level.IMAGE, study_uid=study.study_uid, series_uid=series.series_uid)
    )
    assert len(images) == count and series.modality == "CT"

    got = await client.get(Query(level=Level.STUDY, study_uid=study.study_uid), tmp_path)
    assert (got.completed, got.failed, len(got.files)) == (count, 0, count)
    moved = await client.move(Query(level=Level.STUDY, study_uid=study.study_uid), "STORESCP")
    assert (moved.completed, moved.failed) == (count, 0)
    await eventually(lambda: len([p for p in scp.folder.rglob("*") if p.is_file()]) >= count, 30)


async def test_dcmqrscp_get_to_memory_within_and_beyond_the_cap(
    dcmqrscp: tuple[int, StoreSCP, int],
) -> None:
    port, _, count = dcmqrscp
    client = DicomClient(
        Peer(ae_title="DCMQRSCP", host="127.0.0.1", port=port), calling_ae="DFCLIENT"
    )
    (study,) = await client.find(Query(level=Level.STUDY))
    images = await client.find(Query(level=Level.IMAGE, study_uid=study.study_uid))
    query = Query(level=Level.STUDY, study_uid=study.study_uid)
    got = await client.get_to_memory(query, max_bytes=64 << 20)
    assert (got.result.completed, got.result.failed) == (count, 0)
    assert sorted(str(ds.SOPInstanceUID) for ds in got.datasets) == sorted(
        m.sop_instance_uid for m in images
    )
    assert all(ds.pixel_array.shape == (32, 32) for ds in got.datasets)
    assert all(ds.file_meta.TransferSyntaxUID for ds in got.datasets)
    per_instance = got.size // count
    with pytest.raises(RetrieveTooLarge):
        await client.get_to_memory(query, max_bytes=3 * per_instance)
    await client.echo()  # the peer is still there for the next call


def write_worklist_item(
    folder: Path,
    *,
    patient_id: str,
    patient_name: str,
    station: str,
    day: str,
    modality: str,
) -> None:
    step = pydicom.Dataset()
    step.ScheduledStationAETitle = station
    step.ScheduledStationName = f"{station} room"
    step.ScheduledProcedureStepStartDate = day
    step.ScheduledProcedureStepStartTime = "093000"
    step.Modality = modality
    step.ScheduledPerformingPhysicianName = "Doctor^Dee"
    step.ScheduledProcedureStepDescription = f"{modality} of {patient_id}"
    step.ScheduledProcedureStepID = f"SPS-{patient_id}"
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = f"ACC-{patient_id}"
    ds.ReferringPhysicianName = "Referrer^Ray"
    ds.StudyInstanceUID = synthetic_uid(f"worklist:{patient_id}")
    ds.RequestedProcedureID = f"RP-{patient_id}"
    ds.RequestedProcedureDescription = f"{modality} scan"
    ds.RequestedProcedurePriority = "ROUTINE"
    ds.ScheduledProcedureStepSequence = [step]
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    ds.file_meta.MediaStorageSOPInstanceUID = synthetic_uid(f"worklist-file:{patient_id}")
    ds.save_as(folder / f"{patient_id}.wl", enforce_file_format=True)


@pytest.fixture(scope="module")
def wlmscpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomClient]:
    """DCMTK's worklist SCP on a folder of .wl files the test writes."""
    root = tmp_path_factory.mktemp("worklist")
    folder = root / "WLMSCP"
    folder.mkdir()
    (folder / "lockfile").touch()
    for pid, name, station, day, modality in [
        ("WL-1", "Alpha^Ann", "CT01", "20260105", "CT"),
        ("WL-2", "Beta^Bob", "CT01", "20260110", "CT"),
        ("WL-3", "Gamma^Gus", "MR01", "20260107", "MR"),
    ]:
        write_worklist_item(
            folder, patient_id=pid, patient_name=name, station=station, day=day, modality=modality
        )
    port = free_port()
    proc = subprocess.Popen(
        [require_binary("wlmscpfs"), "-dfp", str(root), str(port)],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield DicomClient(Peer(ae_title="WLMSCP", host="127.0.0.1", port=port), calling_ae="CT01")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (WorklistQuery(), ["WL-1", "WL-2", "WL-3"]),
        (WorklistQuery(scheduled_station_ae="CT01"), ["WL-1", "WL-2"]),
        (WorklistQuery(date_from=date(2026, 1, 6), date_to=date(2026, 1, 10)), ["WL-2", "WL-3"]),
        (WorklistQuery(date_to=date(2026, 1, 7)), ["WL-1", "WL-3"]),
        (WorklistQuery(date_from=date(2026, 1, 7), date_to=date(2026, 1, 7)), ["WL-3"]),
        (WorklistQuery(modality="MR"), ["WL-3"]),
        (WorklistQuery(patient_id="WL-1"), ["WL-1"]),
        (WorklistQuery(patient_name="Beta*"), ["WL-2"]),
        (WorklistQuery(scheduled_station_ae="CT01", date_to=date(2026, 1, 7)), ["WL-1"]),
        (WorklistQuery(scheduled_station_ae="XR09"), []),
    ],
)
async def test_find_worklist_against_wlmscpfs(
    wlmscpfs: DicomClient, query: WorklistQuery, expected: list[str]
) -> None:
    items = await wlmscpfs.find_worklist(query)
    assert sorted(i.patient_id for i in items) == expected


async def test_worklist_item_carries_the_scheduled_step(wlmscpfs: DicomClient) -> None:
    (item,) = await wlmscpfs.find_worklist(WorklistQuery(patient_id="WL-3"))
    assert item == WorklistItem(
        patient_id="WL-3",
        patient_name="Gamma^Gus",
        patient_birth_date="19700101",
        patient_sex="O",
        accession_number="ACC-WL-3",
        study_uid=synthetic_uid("worklist:WL-3"),
        requested_procedure_id="RP-WL-3",
        requested_procedure_description="MR scan",
        scheduled_station_ae="MR01",
        scheduled_station_name="MR01 room",
        scheduled_date="20260107",
        scheduled_time="093000",
        modality="MR",
        performing_physician="Doctor^Dee",
        step_id="SPS-WL-3",
        step_description="MR of WL-3",
    )


@pytest.fixture
async def silent_peer() -> AsyncIterator[tuple[int, list[int]]]:
    """Accepts the association (every context offered), then never says a word; records
    the PDU types it receives after that."""
    received: list[int] = []
    supported = supported_contexts()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, length = pdus.HEADER.unpack(await reader.readexactly(pdus.HEADER.size))
            rq = pdus.AssociateRequest.decode(await reader.readexactly(length))
            for cx in rq.contexts:  # whatever was offered (worklist, Q/R...), accepted
                if all(str(cx.abstract_syntax) != str(s.abstract_syntax) for s in supported):
                    supported.append(build_context(cx.abstract_syntax, UNCOMPRESSED))
            accept, _ = pdus.negotiate(rq, supported, 0)
            writer.write(accept)
            await writer.drain()
            while True:
                kind, length = pdus.HEADER.unpack(await reader.readexactly(pdus.HEADER.size))
                await reader.readexactly(length)
                received.append(kind)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


async def test_timeout_against_a_peer_that_accepts_then_says_nothing(
    silent_peer: tuple[int, list[int]],
) -> None:
    port, received = silent_peer
    client = DicomClient(Peer(ae_title="SILENT", host="127.0.0.1", port=port), timeout=30)
    started = time.monotonic()
    with pytest.raises(DicomTimeout):
        await client.echo(time_limit=2)
    with pytest.raises(DicomTimeout):
        await client.find_worklist(WorklistQuery(modality="CT"), time_limit=2)
    assert time.monotonic() - started < 15
    # Each call sent its request (C-FIND: command and identifier, a P-DATA-TF each), then
    # aborted its association when the time was up.
    await eventually(lambda: received.count(pdus.ABORT) == 2, 10, what=str(received))
    data, abort = pdus.P_DATA_TF, pdus.ABORT
    assert received == [data, abort, data, data, abort]


class ReactorFault:
    """Makes the association's reactor thread die (an exception where it polls for DIMSE
    messages) once armed; records what any thread raised."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed, self.died = threading.Event(), threading.Event()
        self.raised: list[str] = []
        polled = DIMSEServiceProvider.get_msg

        def get_msg(provider: DIMSEServiceProvider, block: bool = False) -> object:
            if self.armed.is_set() and not block:  # only the reactor polls without blocking
                self.died.set()
                raise RuntimeError("the reactor thread's fault")
            return polled(provider, block)

        monkeypatch.setattr(DIMSEServiceProvider, "get_msg", get_msg)
        monkeypatch.setattr(
            threading, "excepthook", lambda a: self.raised.append(repr(a.exc_value))
        )

    async def kill(self) -> None:
        self.armed.set()
        assert await asyncio.to_thread(self.died.wait, 10)

    @staticmethod
    def association_threads() -> set[threading.Thread]:
        return {
            t
            for t in threading.enumerate()
            if isinstance(t, (Association, DULServiceProvider)) and t.is_alive()
        }

    async def wound_down(self, before: set[threading.Thread]) -> None:
        """Waits (bounded) until every association thread started since `before` ended, so
        that what they raised on the way out is in `raised`."""
        await eventually(
            lambda: not self.association_threads() - before,
            10,
            what=lambda: f"still running: {self.association_threads() - before}",
            interval=0.05,
        )


def one_file(tmp_path: Path) -> tuple[Path, str, str]:
    generate_corpus(tmp_path / "one", 1, rows=32, columns=32)
    path = next((tmp_path / "one").rglob("*.dcm"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def storescp_client(upstream: Upstream) -> DicomClient:
    peer = Peer(ae_title="STORESCP", host="127.0.0.1", port=upstream.scp.port)
    return DicomClient(peer, calling_ae="DFCLIENT", connect_timeout=2, timeout=30)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_session_whose_reactor_thread_died_still_ends(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's release() waits, with no bound, for the association's reactor thread to
    pause; a reactor thread that died leaves the association marked established and never
    pauses, so the session's end used to spin for ever. It now ends at once in an A-ABORT,
    and no other thread of the association fails on the way (an A-RELEASE queued after the
    A-ABORT once broke its DUL thread)."""
    fault = ReactorFault(monkeypatch)
    path, sop_class, syntax = one_file(tmp_path)
    before = fault.association_threads()
    started = time.monotonic()
    async with storescp_client(upstream).storing([(sop_class, syntax)]) as session:
        assert await session.send(path, sop_class, syntax) == 0
        assert len(fault.association_threads() - before) == 2  # reactor and DUL
        await fault.kill()
    assert time.monotonic() - started < 5
    await fault.wound_down(before)  # the DUL thread winds down after the A-ABORT
    assert fault.raised == ['RuntimeError("the reactor thread\'s fault")']


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_c_store_after_the_reactor_thread_died_fails_at_once(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pynetdicom DIMSE call first waits for the reactor to pause, with no bound: a
    C-STORE on an association whose reactor died used to hang its thread for ever (and the
    session's caller with it, even past its time limit: the abort on cancel watched only a
    live reactor). The association is aborted when its reactor stops, and the C-STORE says
    so."""
    fault = ReactorFault(monkeypatch)
    path, sop_class, syntax = one_file(tmp_path)
    before = fault.association_threads()
    started = time.monotonic()
    with pytest.raises(AssociationAborted):
        async with storescp_client(upstream).storing([(sop_class, syntax)]) as session:
            await fault.kill()
            await session.send(path, sop_class, syntax)
    assert time.monotonic() - started < 10
    # The abort freed the C-STORE waiting for the reactor: its request was not sent into
    # the closed DUL (whose thread would fail on it).
    await fault.wound_down(before)
    assert fault.raised == ['RuntimeError("the reactor thread\'s fault")']


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_c_store_on_an_association_aborted_since_fails_as_aborted(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two C-STOREs the association was aborted (here: its reactor died and the
    watcher aborted it; a peer's A-ABORT is the same): the next C-STORE says
    AssociationAborted, which a caller handles as a network failure, not pynetdicom's
    RuntimeError. What the watcher logs carries the caller's correlation id."""
    fault = ReactorFault(monkeypatch)
    path, sop_class, syntax = one_file(tmp_path)
    before = fault.association_threads()
    seen = ContextOfRecords()
    logging.getLogger("libs.dicom_net").addHandler(seen)
    structlog.contextvars.bind_contextvars(correlation_id="corr-reactor")
    try:
        with pytest.raises(AssociationAborted):
            async with storescp_client(upstream).storing([(sop_class, syntax)]) as session:
                assert await session.send(path, sop_class, syntax) == 0
                await fault.kill()
                await fault.wound_down(before)  # aborted, its threads ended
                await session.send(path, sop_class, syntax)
    finally:
        structlog.contextvars.unbind_contextvars("correlation_id")
        logging.getLogger("libs.dicom_net").removeHandler(seen)
    assert fault.raised == ['RuntimeError("the reactor thread\'s fault")']
    warning = "association with STORESCP: its reactor stopped, A-ABORT"
    assert (warning, "corr-reactor") in seen.records, seen.records


class ContextOfRecords(logging.Handler):
    """Each record's message and the correlation id bound where it was logged (structlog's
    formatter merges the context of the emitting thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        bound = structlog.contextvars.get_contextvars().get("correlation_id")
        self.records.append((record.getMessage(), bound))
