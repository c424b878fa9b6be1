"""The receiver's pure pieces: staging files, group commit, command sets and negotiation PDUs,
checked against pydicom's and pynetdicom's own encoders."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Sequence
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import decode, encode, encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_AC

from libs.contracts.events import Event, FileDiscovered
from libs.db.commitment import State
from libs.db.ledger import LedgerRow, NewFile
from load_test.dimse import associate_rq, command_set
from services.dicom_receiver import dimse, handlers, pdus
from services.dicom_receiver.commitment import (
    MAX_REPORTS,
    STORAGE_COMMITMENT,
    WELL_KNOWN_INSTANCE,
    CommitmentSCP,
    Request,
    action_response,
    event_command,
    parse_action,
)
from services.dicom_receiver.committer import Committer, NotRecorded
from services.dicom_receiver.dimse import Command
from services.dicom_receiver.handlers import PREAMBLE, FilePool, StagingFile, make_durable
from services.dicom_receiver.scp import supported_contexts
from services.dicom_receiver.transport import MIN_ROOM, PduReader
from tests.polling import eventually

CMD = Command(dimse.C_STORE_RQ, 7, CTImageStorage, "1.2.826.0.1.3680043.8.498.1", True)


def test_staging_file_streams_preamble_meta_and_fragments(tmp_path: Path) -> None:
    f = StagingFile(tmp_path, b"META")
    f.write(b"DATA")
    f.write(memoryview(b"SET"))
    staged = f.finish(fsync=True)
    assert staged.path.read_bytes() == PREAMBLE + b"METADATASET"
    assert staged.size == len(PREAMBLE) + 11
    assert staged.path.is_relative_to(tmp_path) and staged.path.suffix == ".dcm"


def test_queued_fragments_are_written_in_order_by_flush(tmp_path: Path) -> None:
    f = StagingFile(tmp_path, b"META")
    buffer = bytearray(b"ABCDEFGH" * 40)
    for at in range(0, len(buffer), 4):
        f.queue(memoryview(buffer)[at : at + 4])  # flushed on its own every MAX_QUEUED
    assert f.size == len(PREAMBLE) + 4 + len(buffer)
    f.flush()
    buffer[:] = b"x" * len(buffer)  # the views are written: the buffer may be reused
    f.finish(fsync=False)
    assert f.path.read_bytes() == PREAMBLE + b"META" + b"ABCDEFGH" * 40


def test_discarded_staging_file_leaves_nothing(tmp_path: Path) -> None:
    f = StagingFile(tmp_path, b"META")
    f.write(b"half a data set")
    f.discard()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


async def test_file_pool_hands_out_files_created_ahead_and_removes_the_unused(
    tmp_path: Path,
) -> None:
    """Staging files are created ahead in a worker thread; a StagingFile takes one (no file
    created on the event loop), the pool is topped up once half is used, and closing it
    removes the empty files no instance took."""
    pool = FilePool(tmp_path, size=4)
    pool.refill_soon()
    await eventually(lambda: len(list(tmp_path.rglob("*.dcm"))) == 4)
    ahead = set(tmp_path.rglob("*.dcm"))
    taken = [StagingFile(tmp_path, b"META", pool) for _ in range(3)]
    assert {f.path for f in taken} <= ahead  # the files created ahead, not new ones
    # Topped up once half was used: more than half of the pool is ready again.
    await eventually(lambda: len(list(tmp_path.rglob("*.dcm"))) >= 3 + 3)
    for f in taken:
        f.write(b"DATA")
        f.finish(fsync=False)
    await pool.close()
    assert sorted(tmp_path.rglob("*.dcm")) == sorted(f.path for f in taken)
    assert all(f.path.read_bytes() == PREAMBLE + b"METADATA" for f in taken)
    assert StagingFile(tmp_path, b"META", pool).path not in ahead  # empty pool: made anew


async def test_committer_batches_and_fails_every_waiter() -> None:
    batches: list[int] = []
    published: list[Event] = []
    fail = False

    async def record(files: Sequence[NewFile]) -> list[LedgerRow]:
        if fail:
            raise ConnectionError("database away")
        batches.append(len(files))
        return [
            LedgerRow(i, f.source, f.uri, f.origin, f.size, f.correlation_id, None)
            for i, f in enumerate(files)
        ]

    async def publish(events: Sequence[Event]) -> None:
        if publish_fails:
            raise ConnectionError("broker away")
        published.extend(events)

    publish_fails = False
    committer = Committer(record=record, publish=publish, batch_size=100)
    new = NewFile("dicom:A", "file:///x.dcm", "A@127.0.0.1:1", 1, "assoc")
    waiters = [asyncio.create_task(committer.commit(new)) for _ in range(5)]
    await asyncio.sleep(0)  # all five queued before the committer runs
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    await asyncio.gather(*waiters)
    assert batches == [5]  # queued together, committed together
    assert all(isinstance(e, FileDiscovered) and e.correlation_id == "assoc" for e in published)

    fail = True  # the ledger is away: nothing names the files, they may go
    for result in await asyncio.gather(
        *(committer.commit(new) for _ in range(3)), return_exceptions=True
    ):
        assert isinstance(result, NotRecorded)

    fail, publish_fails = False, True  # recorded but not published: the file must stay
    with pytest.raises(ConnectionError):
        await committer.commit(new)

    stop.set()
    await runner

    # A waiter that gave up (commit timeout, answered 0xA700) is not recorded afterwards.
    publish_fails = False
    recorded_before = sum(batches)
    gave_up = asyncio.create_task(committer.commit(new))
    await asyncio.sleep(0)  # queued
    gave_up.cancel()
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    await committer.commit(new)  # one that waits: committed after the other was skipped
    stop.set()
    await runner
    assert sum(batches) == recorded_before + 1


def test_store_response_is_what_pydicom_encodes() -> None:
    expected = command_set(
        AffectedSOPClassUID=CMD.sop_class_uid,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=7,
        CommandDataSetType=0x0101,
        Status=0xA700,
        AffectedSOPInstanceUID=CMD.sop_instance_uid,
    )
    assert dimse.response(CMD, 0xA700) == expected
    echo = Command(dimse.C_ECHO_RQ, 3, "1.2.840.10008.1.1", "", False)
    assert decode(BytesIO(dimse.response(echo, 0)), True, True).CommandField == 0x8030


def test_request_decoded_from_pydicom_bytes() -> None:
    raw = command_set(
        AffectedSOPClassUID=CTImageStorage,
        CommandField=1,
        MessageID=9,
        Priority=0,
        CommandDataSetType=1,
        AffectedSOPInstanceUID="1.2.3.4",
    )
    assert Command.decode(raw) == Command(1, 9, CTImageStorage, "1.2.3.4", True)


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # no CommandField
        b"\x00\x00\x00\x01\x04\x00",  # truncated header
        b"\x00\x00\x00\x01\xff\xff\xff\x7f",  # length beyond the bytes
        b"\x08\x00\x16\x00\x02\x00\x00\x00ab",  # not group 0000
    ],
)
def test_hostile_command_sets_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        Command.decode(raw)


def test_store_problems() -> None:
    assert CMD.store_problem(CTImageStorage) is None
    assert "differs" in str(CMD.store_problem("1.2.840.10008.5.1.4.1.1.4"))
    bad_uid = Command(1, 1, CTImageStorage, "1.2.abc", True)
    assert "invalid" in str(bad_uid.store_problem(CTImageStorage))


def test_file_meta_is_what_pydicom_encodes() -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(CMD.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    meta.SourceApplicationEntityTitle = "STORESCU"
    assert dimse.file_meta(CMD, ExplicitVRLittleEndian, "STORESCU") == encode_file_meta(meta)


def _associate_rq(abstract: str, syntaxes: list[str]) -> bytes:
    return associate_rq(abstract, syntaxes)[pdus.HEADER.size :]


def test_negotiation_accepts_a_storage_context_with_uncompressed_first() -> None:
    rq = pdus.AssociateRequest.decode(
        _associate_rq(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    )
    assert (rq.calling_ae, rq.called_ae, rq.max_pdu) == ("SENDER", "DICOMFLOW", 16384)
    raw, accepted = pdus.negotiate(rq, supported_contexts(), max_pdu=0)
    assert list(accepted) == [1]
    assert accepted[1].transfer_syntax[0] == ImplicitVRLittleEndian  # ours comes first
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    assert ac.to_primitive().result == 0


def test_negotiation_rejects_a_context_we_do_not_store() -> None:
    rq = pdus.AssociateRequest.decode(_associate_rq("1.2.3.999", [ExplicitVRLittleEndian]))
    _, accepted = pdus.negotiate(rq, supported_contexts(), max_pdu=0)
    assert accepted == {}


def test_garbage_association_request_is_a_protocol_error() -> None:
    with pytest.raises(pdus.ProtocolError):
        pdus.AssociateRequest.decode(b"\x00\x01" + b"\xff" * 40)


def test_metric_labels_of_calling_aes_are_bounded(tmp_path: Path) -> None:
    """Any peer may send any calling AE title: the label values stay few (allowed callers by
    name, the rest as one value), so a scan of AE titles cannot grow the metrics forever."""
    from prometheus_client import CollectorRegistry

    from services.dicom_receiver.config import ReceiverSettings
    from services.dicom_receiver.pdus import AssociateRequest
    from services.dicom_receiver.scp import ReceiverMetrics, StoreSCP

    async def record(files: Sequence[NewFile]) -> list[LedgerRow]:
        return []

    async def publish(events: Sequence[Event]) -> None:
        return None

    registry = CollectorRegistry()
    settings = ReceiverSettings(
        staging_dir=tmp_path, min_free_mb=0, allowed_callers=["MODALITY1", "PACS@10.0.0.5"]
    )
    committer = Committer(record=record, publish=publish, batch_size=10)
    scp = StoreSCP(settings, committer, ReceiverMetrics.create(registry))
    for n in range(2000):
        rq = AssociateRequest.decode(
            associate_rq(CTImageStorage, [ExplicitVRLittleEndian], calling=f"SCAN{n:05d}")[6:]
        )
        assert scp.admit(rq, "10.9.9.9") is not None  # unknown callers are refused
    ok = AssociateRequest.decode(
        associate_rq(CTImageStorage, [ExplicitVRLittleEndian], calling="MODALITY1")[6:]
    )
    assert scp.admit(ok, "10.9.9.9") is None
    values = {
        s.labels["calling_ae"]
        for metric in registry.collect()
        if metric.name == "dicomflow_dicom_receiver_associations"
        for s in metric.samples
    }
    assert values == {"MODALITY1", "(not allowed)"}


def _pdus(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(PDU length, message control, PDV bytes) of each P-DATA-TF in `raw` (one PDV each)."""
    out, at = [], 0
    while at < len(raw):
        kind, length = pdus.HEADER.unpack_from(raw, at)
        assert kind == pdus.P_DATA_TF
        size, _, control = pdus.ITEM.unpack_from(raw, at + pdus.HEADER.size)
        assert size + 4 == length
        start = at + pdus.HEADER.size + pdus.ITEM.size
        out.append((length, control, raw[start : start + size - 2]))
        at += pdus.HEADER.size + length
    return out


@pytest.mark.parametrize("max_pdu", [0, 16382, 100])
def test_a_message_we_send_fits_the_peers_maximum_pdu(max_pdu: int) -> None:
    command, dataset = bytes(range(90)) * 3, bytes(range(256)) * 200
    pieces = _pdus(pdus.message_pdus(3, command, dataset, max_pdu))
    assert all(length <= max_pdu for length, _, _ in pieces) or max_pdu == 0
    commands = [p for p in pieces if p[1] & pdus.COMMAND]
    data = [p for p in pieces if not p[1] & pdus.COMMAND]
    assert b"".join(p[2] for p in commands) == command
    assert b"".join(p[2] for p in data) == dataset
    # the last bit on the last fragment of each, and only there
    assert [bool(p[1] & pdus.LAST) for p in commands] == [False] * (len(commands) - 1) + [True]
    assert [bool(p[1] & pdus.LAST) for p in data] == [False] * (len(data) - 1) + [True]
    assert len(data) == (1 if max_pdu == 0 else -(-len(dataset) // (max_pdu - 6)))


def test_n_action_request_decoded_and_answered_as_pynetdicom_encodes() -> None:
    raw = command_set(
        CommandField=dimse.N_ACTION_RQ,
        MessageID=5,
        CommandDataSetType=0x0001,
        RequestedSOPClassUID=STORAGE_COMMITMENT,
        RequestedSOPInstanceUID=WELL_KNOWN_INSTANCE,
        ActionTypeID=1,
    )
    cmd = Command.decode(raw)
    assert (cmd.field, cmd.message_id, cmd.has_dataset, cmd.action_type) == (0x0130, 5, True, 1)
    assert (cmd.requested_sop_class_uid, cmd.requested_sop_instance_uid) == (
        STORAGE_COMMITMENT,
        WELL_KNOWN_INSTANCE,
    )
    rsp = decode(BytesIO(action_response(cmd, 0x0000)), True, True)
    assert rsp.CommandGroupLength == len(action_response(cmd, 0x0000)) - 12
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8130, 5, 0)
    assert (rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID, rsp.ActionTypeID) == (
        STORAGE_COMMITMENT,
        WELL_KNOWN_INSTANCE,
        1,
    )
    report = decode(BytesIO(event_command(9, 2)), True, True)
    assert (report.CommandField, report.MessageID, report.EventTypeID) == (0x0100, 9, 2)
    assert report.CommandDataSetType == 0x0000


def test_a_response_command_is_decoded_by_the_id_it_answers() -> None:
    raw = command_set(
        AffectedSOPClassUID=STORAGE_COMMITMENT,
        CommandField=0x8100,
        MessageIDBeingRespondedTo=9,
        CommandDataSetType=0x0101,
        Status=0,
    )
    cmd = Command.decode(raw)
    assert cmd.is_response and cmd.message_id == 9 and not cmd.has_dataset


def commitment_request() -> tuple[Command, Dataset]:
    """An N-ACTION-RQ for storage commitment of one CT instance, and its data set."""
    cmd = Command(
        dimse.N_ACTION_RQ,
        1,
        "",
        "",
        True,
        requested_sop_class_uid=STORAGE_COMMITMENT,
        requested_sop_instance_uid=WELL_KNOWN_INSTANCE,
        action_type=1,
    )
    ds = Dataset()
    ds.TransactionUID = "1.2.3.4"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, "1.2.3.5"
    ds.ReferencedSOPSequence = [item]
    return cmd, ds


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"action_type": 2}, 0x0123),
        ({"requested_sop_instance_uid": "1.2.3"}, 0x0117),
        ({"requested_sop_class_uid": "1.2.840.10008.1.1"}, 0x0122),
    ],
)
def test_n_action_refusals(changes: dict[str, object], status: int) -> None:
    cmd, ds = commitment_request()
    data = encode(ds, True, True)
    assert data is not None
    assert parse_action(cmd, data, ImplicitVRLittleEndian) == Request(
        "1.2.3.4", [(CTImageStorage, "1.2.3.5")]
    )
    refused = replace(cmd, **changes)  # type: ignore[arg-type]
    assert parse_action(refused, data, ImplicitVRLittleEndian) == status
    del ds.TransactionUID
    assert parse_action(cmd, encode(ds, True, True) or b"", ImplicitVRLittleEndian) == 0x0120
    broken_sequence = b"\x08\x00\x99\x11\xff\xff\xff\xff\x01\x02"  # (0008,1199), then junk
    assert parse_action(cmd, broken_sequence, ImplicitVRLittleEndian) == 0x0110


class _Channel:
    calling_ae = "MODALITY"

    def may_report(self, context_id: int) -> bool:
        return False

    async def send_request(self, context_id: int, command: bytes, dataset: bytes) -> None:
        raise AssertionError("never reached: the lookup never finishes")

    def next_message_id(self) -> int:
        return 1


async def test_commitment_requests_beyond_the_bound_are_refused_for_now() -> None:
    never = asyncio.Event()

    async def lookup(source: str, refs: Sequence[tuple[str, str]]) -> dict[str, State]:
        await never.wait()
        return {}

    scp = CommitmentSCP(
        ae_title="DICOMFLOW", lookup=lookup, peers={}, wait_seconds=60, poll_seconds=1
    )
    cmd, ds = commitment_request()
    data = encode(ds, True, True) or b""

    def status() -> int:
        raw = scp.on_action(_Channel(), 1, ImplicitVRLittleEndian, cmd, data)
        return int(decode(BytesIO(raw), True, True).Status)

    assert [status() for _ in range(MAX_REPORTS)] == [0x0000] * MAX_REPORTS
    assert status() == 0x0213
    await scp.stop()
    assert status() == 0x0000  # room again once the others are done
    await scp.stop()


def received(root: Path, meta: bytes) -> StagingFile:
    """A staging file as the association hands it to the committer: everything flushed."""
    f = StagingFile(root, meta)
    f.flush()
    return f


async def test_committer_makes_a_group_durable_in_one_call_before_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files of a group are fdatasynced and their folder fsynced (once) in one sync call,
    before the ledger INSERT; a file that cannot be synced fails alone, a failed folder fsync
    fails the group (NotRecorded: the files may go, the senders resend), and the file of a
    waiter that gave up before its sync is removed, not recorded."""
    order: list[str] = []
    synced: list[int] = []
    real_fdatasync = os.fdatasync
    broken: set[int] = set()

    def fdatasync(fd: int) -> None:
        if fd in broken:
            raise OSError(5, "EIO")
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    folder_fails = False

    def folders(paths: Collection[Path]) -> None:
        if folder_fails:
            raise OSError("EIO")
        order.append("folders " + ",".join(sorted(p.name for p in paths)))

    monkeypatch.setattr(handlers, "sync_folders", folders)

    def sync(files: Sequence[StagingFile]) -> list[OSError | None]:
        order.append(f"sync {len(files)}")
        return make_durable(files)

    async def record(files: Sequence[NewFile]) -> list[LedgerRow]:
        order.append(f"record {len(files)}")
        return [
            LedgerRow(i, f.source, f.uri, f.origin, f.size, f.correlation_id, None)
            for i, f in enumerate(files)
        ]

    async def publish(events: Sequence[Event]) -> None:
        order.append(f"publish {len(events)}")

    committer = Committer(record=record, publish=publish, batch_size=100, sync=sync)
    new = NewFile("dicom:A", "file:///x.dcm", "A@127.0.0.1:1", 1, "assoc")
    files = [received(tmp_path, b"META") for _ in range(3)]
    waiters = [asyncio.create_task(committer.commit(new, f)) for f in files]
    await asyncio.sleep(0)
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    await asyncio.gather(*waiters)
    assert order == ["sync 3", f"folders {files[0].folder.name}", "record 3", "publish 3"]
    assert len(synced) == 3 and all(f.path.read_bytes() == PREAMBLE + b"META" for f in files)

    # One file that cannot be made durable (its fdatasync fails): it fails alone.
    bad, good = received(tmp_path, b"BAD"), received(tmp_path, b"GOOD")
    assert bad._fd is not None
    broken.add(bad._fd)
    results = await asyncio.gather(
        committer.commit(new, bad), committer.commit(new, good), return_exceptions=True
    )
    assert isinstance(results[0], NotRecorded) and results[1] is None
    assert order[-1] == "publish 1"

    folder_fails = True
    with pytest.raises(NotRecorded):
        await committer.commit(new, received(tmp_path, b"META"))
    assert order[-2:] == ["publish 1", "sync 1"]  # nothing recorded after the failed fsync
    folder_fails = False

    # A waiter that gave up before its group was synced: its file is removed, not recorded.
    stop.set()
    await runner
    gave_up_file = received(tmp_path, b"LATE")
    gave_up = asyncio.create_task(committer.commit(new, gave_up_file))
    await asyncio.sleep(0)  # queued
    gave_up.cancel()
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    await committer.commit(new, received(tmp_path, b"META"))
    assert not gave_up_file.path.exists() and order[-4:] == [
        "sync 1",
        f"folders {gave_up_file.folder.name}",
        "record 1",
        "publish 1",
    ]
    stop.set()
    await runner


async def test_committer_records_the_next_group_while_one_awaits_its_acknowledgement() -> None:
    """The broker's acknowledgement of one group does not hold back the next group's INSERT;
    each group is answered only after its own acknowledgement."""
    recorded: list[int] = []
    release_first = asyncio.Event()

    async def record(files: Sequence[NewFile]) -> list[LedgerRow]:
        recorded.append(len(files))
        return [
            LedgerRow(1, f.source, f.uri, f.origin, f.size, f.correlation_id, None) for f in files
        ]

    async def publish(events: Sequence[Event]) -> None:
        if len(recorded) == 1:  # the first group's acknowledgement is slow
            await release_first.wait()

    committer = Committer(record=record, publish=publish, batch_size=100)
    new = NewFile("dicom:A", "file:///x.dcm", "A@127.0.0.1:1", 1, "assoc")
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    first = asyncio.create_task(committer.commit(new))
    await eventually(lambda: recorded == [1])
    second = asyncio.create_task(committer.commit(new))
    await asyncio.wait_for(second, timeout=5)  # answered while the first still waits
    assert recorded == [1, 1] and not first.done()
    release_first.set()
    await asyncio.wait_for(first, timeout=5)
    stop.set()
    await runner


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def feed(reader: PduReader, data: bytes) -> None:
    """What the transport does: receive into get_buffer(), then buffer_updated()."""
    buf = reader.get_buffer()
    assert len(buf) >= len(data)
    buf[: len(data)] = data
    reader.buffer_updated(len(data))


async def test_pdu_reader_hands_out_views_moves_the_rest_and_pauses_when_full() -> None:
    reader = PduReader(capacity=1024)
    transport = FakeTransport()
    reader.transport = transport  # type: ignore[assignment]
    data = bytes(range(256)) * 8
    # Past capacity: the room left is below MIN_ROOM, so reading pauses.
    feed(reader, data[: len(reader.get_buffer()) - MIN_ROOM + 1])
    assert transport.paused
    first = await reader.readexactly(1000)
    assert bytes(first) == data[:1000]
    # 25 bytes unread; asking for 100 moves them to the front and resumes reading.
    waiting = asyncio.create_task(reader.readexactly(100))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert not transport.paused
    feed(reader, data[1025:1100])
    assert bytes(await waiting) == data[1000:1100]
    with pytest.raises(ValueError):
        await reader.readexactly(1025)


async def test_pdu_reader_end_of_stream_and_lost_connection() -> None:
    reader = PduReader(capacity=64)
    feed(reader, b"abc")
    waiting = asyncio.create_task(reader.readexactly(4))
    await asyncio.sleep(0)
    reader.finish(None)
    with pytest.raises(asyncio.IncompleteReadError) as exc:
        await waiting
    assert exc.value.partial == b"abc"

    broken = PduReader(capacity=64)
    broken.finish(ConnectionResetError("peer reset"))
    with pytest.raises(ConnectionResetError):
        await broken.readexactly(1)
