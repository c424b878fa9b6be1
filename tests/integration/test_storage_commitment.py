"""Storage Commitment Push Model on the receiver, with pynetdicom as the modality: the
N-ACTION is answered, and the N-EVENT-REPORT names as committed only what the index holds
(stored and indexed by the pipeline's own functions, on a real PostgreSQL); an instance never
received fails with 0x0112; one still in the pipeline is waited for (within the bound), then
committed; the report comes on the same association when the modality accepted the SCP role,
else on a new association to its configured address."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from libs.contracts.events import Event
from libs.db import ledger
from libs.db.commitment import State, commitment_states
from libs.db.index import index_instance
from libs.db.ledger import LedgerRow, NewFile, mark_outcome
from libs.dicom.synthetic import make_dataset, synthetic_uid
from libs.dicom_net.client import DicomClient
from libs.dicom_net.commitment import FailedReference, SopReference
from libs.dicom_net.models import Peer
from libs.dicom_net.transport import release
from libs.storage.local import LocalStore, path_from_file_url
from services.dicom_receiver.commitment import (
    NO_SUCH_OBJECT,
    PROCESSING_FAILURE,
    WELL_KNOWN_INSTANCE,
    CommitmentSCP,
    parse_peers,
)
from services.dicom_receiver.committer import Committer
from services.dicom_receiver.config import ReceiverSettings
from services.dicom_receiver.scp import ReceiverMetrics, StoreSCP
from tests.integration.test_jpg_converter_service import put_canonical

pytestmark = pytest.mark.timeout(180)
MODALITY = "MODALITY"


@dataclass
class Pipeline:
    """The receiver's ledger on PostgreSQL; `index` does what the pipeline's storage writer
    and indexer do to a received file (canonical copy, index rows, ledger outcome)."""

    pool: asyncpg.Pool
    store: LocalStore
    recorded: list[LedgerRow] = field(default_factory=list)
    indexed: set[int] = field(default_factory=set)

    async def record(self, files: Sequence[NewFile]) -> list[LedgerRow]:
        async with self.pool.acquire() as conn:
            rows = await ledger.record_discovered(conn, files)
        self.recorded.extend(rows)
        return rows

    async def publish(self, events: Sequence[Event]) -> None:
        return None  # the test plays the consumers itself (`index`)

    async def lookup(self, source: str, refs: Sequence[tuple[str, str]]) -> dict[str, State]:
        async with self.pool.acquire() as conn:
            return await commitment_states(conn, source, refs)

    async def index(self) -> None:
        for row in self.recorded:
            if row.id in self.indexed:
                continue
            event = await put_canonical(self.store, path_from_file_url(row.uri), row.id)
            async with self.pool.acquire() as conn, conn.transaction():
                await index_instance(conn, event)
                await mark_outcome(
                    conn,
                    row.id,
                    "indexed",
                    stage="indexer",
                    sop_instance_uid=event.header.instance.sop_instance_uid,
                    study_uid=event.header.study.study_uid,
                )
            self.indexed.add(row.id)


@dataclass
class Receiver:
    port: int
    pipeline: Pipeline


class ModalitySCP:
    """The modality's own listener for reports on a new association. `silent`: it takes
    the report and never answers it (until stopped)."""

    def __init__(self, *, silent: bool = False) -> None:
        self.reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        self.silent = silent
        self.answering, self.aborted, self.stopping = (threading.Event() for _ in range(3))
        self.ae = AE(ae_title=MODALITY)
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_N_EVENT_REPORT, self._on_report),
                (evt.EVT_ABORTED, lambda _: self.aborted.set()),
            ],
        )
        self.port = int(self.server.server_address[1])

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.put((int(event.request.EventTypeID), event.event_information))
        self.answering.set()
        if self.silent:
            self.stopping.wait(120)
        return 0x0000, None

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()


@pytest.fixture
def modality_scp(request: pytest.FixtureRequest) -> Iterator[ModalitySCP]:
    scp = ModalitySCP(silent=getattr(request, "param", {}).get("silent", False))
    try:
        yield scp
    finally:
        scp.stop()


async def start_receiver(
    pool: asyncpg.Pool, tmp_path: Path, *, wait: float, peers: list[str]
) -> tuple[StoreSCP, Committer, Pipeline, int]:
    settings = ReceiverSettings(
        port=0,
        staging_dir=tmp_path / "staging",
        min_free_mb=0,
        fsync=False,
        commitment_peers=peers,
        commitment_wait_seconds=wait,
        commitment_poll_seconds=0.2,
    )
    pipeline = Pipeline(pool, LocalStore((tmp_path / "storage").as_uri()))
    committer = Committer(record=pipeline.record, publish=pipeline.publish, batch_size=16)
    commitment = CommitmentSCP(
        ae_title=settings.ae_title,
        lookup=pipeline.lookup,
        peers=parse_peers(settings.commitment_peers),
        wait_seconds=wait,
        poll_seconds=settings.commitment_poll_seconds,
    )
    scp = StoreSCP(settings, committer, ReceiverMetrics.create(CollectorRegistry()), commitment)
    _, port = await scp.start()
    return scp, committer, pipeline, port


@pytest.fixture
async def receiver(
    pool: asyncpg.Pool, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Receiver]:
    options = getattr(request, "param", {})
    peers = [f"{MODALITY}=127.0.0.1:{request.getfixturevalue('modality_scp').port}"]
    async with running_receiver(pool, tmp_path, wait=options.get("wait", 30.0), peers=peers) as r:
        yield r


@contextlib.asynccontextmanager
async def running_receiver(
    pool: asyncpg.Pool, tmp_path: Path, *, wait: float, peers: list[str]
) -> AsyncIterator[Receiver]:
    """The receiver listening, its committer running, until the block ends."""
    scp, committer, pipeline, port = await start_receiver(pool, tmp_path, wait=wait, peers=peers)
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    try:
        yield Receiver(port, pipeline)
    finally:
        await scp.stop()
        stop.set()
        await runner


def instances(n: int, sop_class: str = CTImageStorage) -> list[Dataset]:
    study = synthetic_uid(f"commit:{uuid.uuid4()}")
    out = []
    for i in range(n):
        ds = make_dataset(
            patient_id="COMMIT-1",
            patient_name="Commitment^Test",
            study_uid=study,
            series_uid=synthetic_uid(f"{study}:series"),
            sop_uid=synthetic_uid(f"commit:{uuid.uuid4()}"),
            rows=8,
            columns=8,
            instance_number=i + 1,
        )
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def modality() -> AE:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def store(port: int, datasets: list[Dataset]) -> list[int]:
    assoc = modality().associate("127.0.0.1", port, ae_title="DICOMFLOW")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assert release(assoc), "the receiver did not answer our A-RELEASE"


def commitment_request(refs: list[tuple[str, str]]) -> tuple[str, Dataset]:
    ds = Dataset()
    ds.TransactionUID = synthetic_uid(f"commit-tx:{uuid.uuid4()}")
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return str(ds.TransactionUID), ds


@dataclass
class Report:
    event_type: int
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]

    @classmethod
    def of(cls, event_type: int, ds: Dataset) -> Report:
        return cls(
            event_type,
            str(ds.TransactionUID),
            [
                (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in ds.get("ReferencedSOPSequence", [])
            ],
            [
                (
                    str(i.ReferencedSOPClassUID),
                    str(i.ReferencedSOPInstanceUID),
                    int(i.FailureReason),
                )
                for i in ds.get("FailedSOPSequence", [])
            ],
        )


class Session:
    """A modality's N-ACTION association, proposing the SCP role for the report (or not)."""

    def __init__(self, port: int, *, scp_role: bool) -> None:
        self.reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        self.serving: list[threading.Thread] = []
        roles = [build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)]
        self.assoc = modality().associate(
            "127.0.0.1",
            port,
            ae_title="DICOMFLOW",
            ext_neg=roles if scp_role else [],
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        assert self.assoc.is_established

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.put((int(event.request.EventTypeID), event.event_information))
        self.serving.append(threading.current_thread())  # it answers after this returns
        return 0x0000, None

    def request(self, ds: Dataset) -> int:
        status, _ = self.assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        return int(status.Status)

    def release(self) -> None:
        for thread in self.serving:  # our answers to the reports go before the A-RELEASE
            thread.join(10)
        assert release(self.assoc), "the receiver did not answer our A-RELEASE"


def refs_of(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


async def next_report(reports: queue.Queue[tuple[int, Dataset]], timeout: float) -> Report:
    event_type, ds = await asyncio.to_thread(reports.get, True, timeout)
    return Report.of(event_type, ds)


async def test_stored_and_indexed_instances_are_committed_on_the_same_association(
    receiver: Receiver,
) -> None:
    sent = instances(3)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0, 0, 0]
    await receiver.pipeline.index()
    session = await asyncio.to_thread(Session, receiver.port, scp_role=True)
    try:
        tx, request = commitment_request(refs_of(sent))
        assert await asyncio.to_thread(session.request, request) == 0x0000
        report = await next_report(session.reports, 30)
    finally:
        await asyncio.to_thread(session.release)
    assert report == Report(1, tx, refs_of(sent), [])


async def test_an_instance_never_received_fails_with_no_such_object_on_a_new_association(
    receiver: Receiver, modality_scp: ModalitySCP
) -> None:
    sent = instances(1)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0]
    await receiver.pipeline.index()
    never = (CTImageStorage, synthetic_uid(f"commit:never:{uuid.uuid4()}"))
    # No role selection: the report cannot come on this association, so it comes on a new
    # one, to the address configured for the modality's AE title.
    session = await asyncio.to_thread(Session, receiver.port, scp_role=False)
    try:
        tx, request = commitment_request([*refs_of(sent), never])
        assert await asyncio.to_thread(session.request, request) == 0x0000
    finally:
        await asyncio.to_thread(session.release)
    report = await next_report(modality_scp.reports, 30)
    assert report == Report(2, tx, refs_of(sent), [(*never, NO_SUCH_OBJECT)])
    assert session.reports.empty()


@pytest.mark.parametrize("modality_scp", [{"silent": True}], indirect=True)
async def test_a_report_the_modality_never_answers_is_aborted_when_the_receiver_stops(
    pool: asyncpg.Pool, tmp_path: Path, modality_scp: ModalitySCP
) -> None:
    """The report's new association waits (bounded) for the N-EVENT-REPORT-RSP in a worker
    thread; stopping the receiver aborts it at once rather than leaving the thread to wait
    out its DIMSE timeout (and the process's exit with it)."""
    peers = [f"{MODALITY}=127.0.0.1:{modality_scp.port}"]
    scp, committer, _, port = await start_receiver(pool, tmp_path, wait=30, peers=peers)
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    try:
        session = await asyncio.to_thread(Session, port, scp_role=False)
        try:
            _, request = commitment_request([(CTImageStorage, synthetic_uid("commit:silent"))])
            assert await asyncio.to_thread(session.request, request) == 0x0000
        finally:
            await asyncio.to_thread(session.release)
        assert await asyncio.to_thread(modality_scp.answering.wait, 30)  # the report came
    finally:
        await scp.stop()
        stopped = time.monotonic()
        stop.set()
        await runner
    assert await asyncio.to_thread(modality_scp.aborted.wait, 10), "the report was not aborted"
    assert time.monotonic() - stopped < 5


async def test_a_request_while_the_pipeline_is_behind_is_committed_once_indexed(
    receiver: Receiver,
) -> None:
    sent = instances(2)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0, 0]
    session = await asyncio.to_thread(Session, receiver.port, scp_role=True)
    try:
        tx, request = commitment_request(refs_of(sent))
        assert await asyncio.to_thread(session.request, request) == 0x0000
        await asyncio.sleep(1.5)  # received, not indexed: no report yet (the ledger is pending)
        assert session.reports.empty()
        await receiver.pipeline.index()
        report = await next_report(session.reports, 30)
    finally:
        await asyncio.to_thread(session.release)
    assert report == Report(1, tx, refs_of(sent), [])


@pytest.mark.parametrize("receiver", [{"wait": 1.0}], indirect=True)
async def test_what_is_not_indexed_within_the_bound_is_reported_failed(receiver: Receiver) -> None:
    sent = instances(2)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0, 0]
    await receiver.pipeline.index()
    late = instances(1)
    assert await asyncio.to_thread(store, receiver.port, late) == [0]  # never indexed
    session = await asyncio.to_thread(Session, receiver.port, scp_role=True)
    try:
        tx, request = commitment_request(refs_of(sent + late))
        assert await asyncio.to_thread(session.request, request) == 0x0000
        report = await next_report(session.reports, 30)
    finally:
        await asyncio.to_thread(session.release)
    assert report == Report(2, tx, refs_of(sent), [(*refs_of(late)[0], PROCESSING_FAILURE)])


async def test_an_instance_indexed_under_another_sop_class_is_not_committed(
    receiver: Receiver,
) -> None:
    sent = instances(1)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0]
    await receiver.pipeline.index()
    wrong = (MRImageStorage, str(sent[0].SOPInstanceUID))
    session = await asyncio.to_thread(Session, receiver.port, scp_role=True)
    try:
        tx, request = commitment_request([wrong])
        assert await asyncio.to_thread(session.request, request) == 0x0000
        report = await next_report(session.reports, 30)
    finally:
        await asyncio.to_thread(session.release)
    assert report == Report(2, tx, [], [(*wrong, 0x0119)])


async def test_dicom_client_request_commitment_against_the_receiver(receiver: Receiver) -> None:
    sent = instances(2)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0, 0]
    await receiver.pipeline.index()
    never = SopReference(
        sop_class_uid=CTImageStorage, sop_instance_uid=synthetic_uid(f"never:{uuid.uuid4()}")
    )
    committed = [SopReference(sop_class_uid=c, sop_instance_uid=i) for c, i in refs_of(sent)]
    client = DicomClient(
        Peer(ae_title="DICOMFLOW", host="127.0.0.1", port=receiver.port), calling_ae=MODALITY
    )
    result = await client.request_commitment([*committed, never], time_limit=60)
    assert result.event_type == 2
    assert result.committed == committed
    assert result.failed == [FailedReference(**never.model_dump(), failure_reason=NO_SUCH_OBJECT)]
    again = await client.request_commitment(committed, transaction_uid="1.2.3.4", time_limit=60)
    assert (again.transaction_uid, again.event_type, again.committed, again.failed) == (
        "1.2.3.4",
        1,
        committed,
        [],
    )


async def test_dicom_client_answers_the_report_before_it_releases(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom answers an N-EVENT-REPORT in a thread of its own, after our handler has
    the report: the client's release must wait for that answer. Here the answer is slowed;
    a release that overtook it left the answer to a closed association (or made it fail in
    the client's DUL thread: Evt9 in Sta7), and the receiver never got it."""
    raised: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: raised.append(repr(a.exc_value)))
    sent = instances(1)
    assert await asyncio.to_thread(store, receiver.port, sent) == [0]
    await receiver.pipeline.index()
    answer = DIMSEServiceProvider.send_msg
    answered_in: list[str] = []  # the association's state when the answer was sent

    def slow_answer(provider: DIMSEServiceProvider, primitive: object, context_id: int) -> None:
        if isinstance(primitive, N_EVENT_REPORT):  # the client sends only the answer
            time.sleep(0.3)
            answered_in.append(provider.assoc.dul.state_machine.current_state)
        answer(provider, primitive, context_id)  # type: ignore[arg-type]

    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", slow_answer)
    committed = [SopReference(sop_class_uid=c, sop_instance_uid=i) for c, i in refs_of(sent)]
    client = DicomClient(
        Peer(ae_title="DICOMFLOW", host="127.0.0.1", port=receiver.port), calling_ae=MODALITY
    )
    result = await client.request_commitment(committed, time_limit=60)
    assert (result.event_type, result.committed) == (1, committed)
    assert answered_in == ["Sta6"], "answered after the release began"
    assert raised == []


async def test_a_large_report_comes_in_pdus_the_modality_accepts(receiver: Receiver) -> None:
    """600 references make a ~60 KB report: split to the modality's maximum PDU (16 KB)."""
    never = [(CTImageStorage, synthetic_uid(f"never:{n}:{uuid.uuid4()}")) for n in range(600)]
    session = await asyncio.to_thread(Session, receiver.port, scp_role=True)
    try:
        assert session.assoc.requestor.maximum_length == 16382  # what we may send it
        tx, request = commitment_request(never)
        assert await asyncio.to_thread(session.request, request) == 0x0000
        report = await next_report(session.reports, 30)
    finally:
        await asyncio.to_thread(session.release)
    assert report == Report(2, tx, [], [(c, i, NO_SUCH_OBJECT) for c, i in never])
