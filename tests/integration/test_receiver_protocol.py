"""The receiver's upper layer against a real pynetdicom SCU and against hostile bytes: it
answers what it understands, aborts what breaks the protocol, never leaves a partial file,
answers 0xA700 when it cannot record, and keeps serving the next association."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from libs.contracts.events import Event
from libs.db.ledger import LedgerRow, NewFile
from libs.dicom.synthetic import make_dataset, synthetic_uid
from libs.dicom_net.transport import release
from load_test.dimse import associate_rq, command_set
from load_test.peers import require_binary
from services.dicom_receiver import pdus
from services.dicom_receiver.committer import Committer
from services.dicom_receiver.config import ReceiverSettings
from services.dicom_receiver.scp import ReceiverMetrics, StoreSCP
from tests.polling import eventually

pytestmark = pytest.mark.timeout(120)


@dataclass
class Ledger:
    recorded: list[NewFile] = field(default_factory=list)
    published: list[Event] = field(default_factory=list)
    failing: bool = False

    async def record(self, files: Sequence[NewFile]) -> list[LedgerRow]:
        if self.failing:
            raise ConnectionError("database away")
        self.recorded.extend(files)
        return [
            LedgerRow(i, f.source, f.uri, f.origin, f.size, f.correlation_id, None)
            for i, f in enumerate(files, start=len(self.recorded))
        ]

    async def publish(self, events: Sequence[Event]) -> None:
        self.published.extend(events)


@dataclass
class Receiver:
    scp: StoreSCP
    ledger: Ledger
    port: int
    staging: Path

    def files(self) -> list[Path]:
        """Staged files with content (the receiver keeps a few empty ones created ahead,
        `handlers.FilePool`)."""
        return sorted(p for p in self.staging.rglob("*") if p.is_file() and p.stat().st_size)


@pytest.fixture
async def receiver(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    overrides = getattr(request, "param", {})
    if overrides == "tls":
        overrides = request.getfixturevalue("tls_receiver_settings")
    settings = ReceiverSettings(
        **{
            "port": 0,
            "staging_dir": tmp_path / "staging",
            "min_free_mb": 0,
            "acse_timeout_seconds": 2,
            "network_timeout_seconds": 2,
            **overrides,
        }
    )
    ledger = Ledger()
    committer = Committer(record=ledger.record, publish=ledger.publish, batch_size=64)
    scp = StoreSCP(settings, committer, ReceiverMetrics.create(CollectorRegistry()))
    _, port = await scp.start()
    stop = asyncio.Event()
    runner = asyncio.create_task(committer.run(stop))
    try:
        yield Receiver(scp, ledger, port, settings.staging_dir)
    finally:
        await scp.stop()
        stop.set()
        await runner


def scu(called: str = "DICOMFLOW") -> AE:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def store_request(sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set as pydicom encodes it."""
    return command_set(
        AffectedSOPClassUID=CTImageStorage,
        CommandField=0x0001,
        MessageID=1,
        Priority=0,
        CommandDataSetType=0x0001,
        AffectedSOPInstanceUID=sop_instance_uid,
    )


def store_and_echo(port: int, called: str = "DICOMFLOW") -> tuple[bool, int | None, int | None]:
    ds = make_dataset(
        patient_id="P1",
        patient_name="Test^Receiver",
        study_uid=synthetic_uid("receiver:study"),
        series_uid=synthetic_uid("receiver:series"),
        sop_uid=synthetic_uid(f"receiver:{uuid.uuid4()}"),
        rows=16,
        columns=16,
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = scu().associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False, None, None
    try:
        echo = assoc.send_c_echo()
        stored = assoc.send_c_store(ds)
        return True, int(echo.Status), int(stored.Status)
    finally:
        assoc.release()


async def test_store_and_echo_from_pynetdicom(receiver: Receiver) -> None:
    ok, echo, stored = await asyncio.to_thread(store_and_echo, receiver.port)
    assert (ok, echo, stored) == (True, 0x0000, 0x0000)
    [path] = receiver.files()
    ds = dcmread(path)
    assert ds.file_meta.SourceApplicationEntityTitle == "SENDER"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    [new] = receiver.ledger.recorded
    assert new.uri == path.as_uri() and new.source == "dicom:SENDER"
    assert len(receiver.ledger.published) == 1
    # The empty files created ahead (FilePool) go when the receiver stops; the stored stays.
    await receiver.scp.stop()
    assert [p for p in receiver.staging.rglob("*") if p.is_file()] == [path]


async def test_wrong_called_ae_is_rejected(receiver: Receiver) -> None:
    answer = await raw_exchange(
        receiver.port, associate_rq(CTImageStorage, [ExplicitVRLittleEndian], called="OTHER")
    )
    assert answer == pdus.reject(0x01, 0x01, 0x07)  # permanent, called AE not recognised
    assert receiver.files() == []


async def pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = pdus.HEADER.unpack(await reader.readexactly(pdus.HEADER.size))
    return kind, await reader.readexactly(length)


async def still_open(reader: asyncio.StreamReader, seconds: float = 0.5) -> bool:
    """Nothing arrives, not even the end of the stream, for `seconds`."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("requestor_closes", [True, False])
async def test_after_a_rejection_or_a_release_the_requestor_closes_first(
    receiver: Receiver, requestor_closes: bool
) -> None:
    """PS3.8 9.2 (Sta13): after our A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes the
    connection; the receiver closes it only when the ARTIM timer (here the 2 s ACSE
    timeout) expires. Closing at once raced the requestor's read of the answer."""
    for answer_to in ("rejected", "released"):
        if answer_to == "rejected":
            reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
            writer.write(associate_rq(CTImageStorage, [ExplicitVRLittleEndian], called="OTHER"))
            assert (await pdu(reader))[0] == pdus.ASSOCIATE_RJ
        else:
            reader, writer = await associated(receiver.port)
            writer.write(pdus.HEADER.pack(pdus.RELEASE_RQ, 4) + b"\x00" * 4)
            assert (await pdu(reader))[0] == pdus.RELEASE_RP
        assert await still_open(reader), f"{answer_to}: the receiver closed first"
        started = asyncio.get_running_loop().time()
        if requestor_closes:
            writer.close()
        else:  # the receiver closes it once its timer expires
            assert await asyncio.wait_for(reader.read(), 10) == b""
            assert asyncio.get_running_loop().time() - started < 5
            writer.close()
        await eventually(lambda: not receiver.scp.associations, 10, interval=0.05)


async def test_cannot_record_answers_out_of_resources(receiver: Receiver) -> None:
    receiver.ledger.failing = True
    _, _, stored = await asyncio.to_thread(store_and_echo, receiver.port)
    assert stored == 0xA700
    assert receiver.files() == []  # no ledger row names it: the sender resends, it goes


async def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send bytes, return what the receiver answered before closing the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not DICOM at all
        pdus.HEADER.pack(pdus.ASSOCIATE_RQ, 0x7FFFFFFF),  # absurd length
        pdus.HEADER.pack(pdus.ASSOCIATE_RQ, 40) + b"\xff" * 40,  # undecodable
        pdus.HEADER.pack(0x42, 4) + b"\x00" * 4,  # unknown PDU type
    ],
)
async def test_hostile_bytes_are_aborted_and_the_next_association_served(
    receiver: Receiver, payload: bytes
) -> None:
    answer = await raw_exchange(receiver.port, payload)
    assert answer[:1] == bytes([pdus.ABORT])
    ok, _, stored = await asyncio.to_thread(store_and_echo, receiver.port)
    assert ok and stored == 0


async def test_silent_peer_is_dropped_after_the_acse_timeout(receiver: Receiver) -> None:
    answer = await raw_exchange(receiver.port, b"")
    assert answer[:1] == bytes([pdus.ABORT])


async def associated(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection on which CT Image Storage (explicit VR LE) is accepted as context 1."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(associate_rq(CTImageStorage, [ExplicitVRLittleEndian]))
    kind, length = pdus.HEADER.unpack(await reader.readexactly(pdus.HEADER.size))
    assert kind == pdus.ASSOCIATE_AC
    await reader.readexactly(length)
    return reader, writer


def pdata(*items: tuple[int, bytes]) -> bytes:
    """One P-DATA-TF with PDV items (message control header, bytes) on context 1."""
    body = b"".join(pdus.ITEM.pack(len(data) + 2, 1, control) + data for control, data in items)
    return pdus.HEADER.pack(pdus.P_DATA_TF, len(body)) + body


async def response_status(reader: asyncio.StreamReader) -> int:
    kind, length = pdus.HEADER.unpack(await reader.readexactly(pdus.HEADER.size))
    assert kind == pdus.P_DATA_TF
    body = await reader.readexactly(length)
    command = decode(BytesIO(body[pdus.ITEM.size :]), True, True)
    return int(command.Status)


DATASET = b"\x08\x00\x16\x00\x1a\x00\x00\x00" + CTImageStorage.encode() + b"\x00" * 1


async def test_fragments_across_pdus_and_statuses(receiver: Receiver) -> None:
    """A command split over two PDUs and a data set over three store fine; a SOP class that
    is not the context's is refused 0x0122; a UID with leading zeros (older modalities) is
    accepted; each answer on the same association."""
    reader, writer = await associated(receiver.port)
    try:
        command = store_request("1.2.840.113619.2.55.3.0604")
        writer.write(pdata((0x01, command[:20])))
        writer.write(pdata((0x03, command[20:]), (0x00, DATASET[:5])))
        writer.write(pdata((0x00, DATASET[5:9])))
        writer.write(pdata((0x02, DATASET[9:])))
        assert await response_status(reader) == 0x0000
        [path] = receiver.files()
        assert path.read_bytes().endswith(DATASET)

        mr = command_set(
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.4",
            CommandField=0x0001,
            MessageID=2,
            Priority=0,
            CommandDataSetType=0x0001,
            AffectedSOPInstanceUID="1.2.3.5",
        )
        writer.write(pdata((0x03, mr), (0x02, DATASET)))
        assert await response_status(reader) == 0x0122
        assert len(receiver.files()) == 1
        writer.write(pdus.HEADER.pack(pdus.RELEASE_RQ, 4) + b"\x00" * 4)
        assert await reader.read() == pdus.release_reply()
    finally:
        writer.close()


@pytest.mark.parametrize(
    "after_association",
    [
        pdus.HEADER.pack(pdus.RELEASE_RQ, 300_000_000),  # a release "body" of 300 MB
        pdata((0x03, store_request("1.2.3.4").replace(b"1.2.3.4", b"1.2.3.\xe9"))),  # not ASCII
        pdata((0x02, DATASET)),  # a data set without its command
        pdata((0x03, store_request("1.2.3.4")), (0x00, DATASET))  # release mid-data-set
        + pdus.HEADER.pack(pdus.RELEASE_RQ, 4)
        + b"\x00" * 4,
    ],
)
async def test_protocol_errors_after_association_are_aborted(
    receiver: Receiver, after_association: bytes
) -> None:
    reader, writer = await associated(receiver.port)
    try:
        writer.write(after_association)
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        assert answer[:1] == bytes([pdus.ABORT])
    finally:
        writer.close()
    await eventually(lambda: receiver.files() == [], 10, interval=0.05)
    ok, _, stored = await asyncio.to_thread(store_and_echo, receiver.port)
    assert ok and stored == 0


async def test_abort_mid_data_set_leaves_no_partial_file(receiver: Receiver) -> None:
    _, writer = await associated(receiver.port)
    try:
        writer.write(pdus.command_pdu(1, store_request("1.2.3.4")))
        half = b"\x08\x00\x16\x00" + b"\x00" * 100
        item = pdus.ITEM.pack(len(half) + 2, 1, 0x00)  # data set fragment, not the last
        writer.write(pdus.HEADER.pack(pdus.P_DATA_TF, len(item) + len(half)) + item + half)
        await writer.drain()
        await eventually(
            lambda: len(receiver.files()) == 1, 10, interval=0.05
        )  # streamed to staging as it arrives
        writer.write(pdus.abort(0x00, source=0x00))
        await writer.drain()
        await eventually(lambda: receiver.files() == [], 10, interval=0.05)
        assert receiver.ledger.recorded == []
    finally:
        writer.close()


async def test_peer_silent_mid_data_set_is_aborted_after_the_network_timeout(
    receiver: Receiver,
) -> None:
    """The idle watchdog (network timeout, 2 s here): a peer that stops sending in the middle
    of a PDU gets an A-ABORT, and its partial file is removed; the next association is
    served."""
    reader, writer = await associated(receiver.port)
    try:
        writer.write(pdus.command_pdu(1, store_request("1.2.3.5")))
        half = b"\x08\x00\x16\x00" + b"\x00" * 100
        item = pdus.ITEM.pack(len(half) + 2, 1, 0x00)
        pdu = pdus.HEADER.pack(pdus.P_DATA_TF, len(item) + len(half)) + item + half
        writer.write(pdu + pdu[:20])  # a whole PDU, then the start of the next: silence
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)
        assert answer[:1] == bytes([pdus.ABORT])
        await eventually(lambda: receiver.files() == [], 10, interval=0.05)
        assert receiver.ledger.recorded == []
    finally:
        writer.close()
    ok, _, stored = await asyncio.to_thread(store_and_echo, receiver.port)
    assert ok and stored == 0


@pytest.mark.parametrize("receiver", [{"max_associations": 1}], indirect=True)
async def test_associations_beyond_the_limit_are_rejected(receiver: Receiver) -> None:
    first = await asyncio.to_thread(
        scu().associate, "127.0.0.1", receiver.port, ae_title="DICOMFLOW"
    )
    try:
        assert first.is_established
        second = await asyncio.to_thread(
            scu().associate, "127.0.0.1", receiver.port, ae_title="DICOMFLOW"
        )
        # Failed once in CI (is_rejected False though the receiver logged the rejection): say
        # what the requestor saw instead.
        seen = {k: getattr(second, f"is_{k}") for k in ("established", "aborted", "released")}
        assert second.is_rejected, f"not rejected: {seen}"
    finally:  # in a thread: the receiver answers the A-RELEASE-RQ on this event loop
        assert await asyncio.to_thread(release, first), "the receiver did not release"


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            require_binary("openssl"),
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_receiver_settings(tls_files: tuple[Path, Path]) -> dict[str, object]:
    return {"tls_cert": tls_files[0], "tls_key": tls_files[1]}


@pytest.mark.parametrize("receiver", ["tls"], indirect=True)
async def test_tls_association_stores_and_plain_tcp_is_refused(
    receiver: Receiver, tls_files: tuple[Path, Path]
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_files[0]))

    def echo_over_tls() -> int | None:
        assoc = scu().associate(
            "127.0.0.1", receiver.port, ae_title="DICOMFLOW", tls_args=(ctx, "localhost")
        )
        assert assoc.is_established
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()

    assert await asyncio.to_thread(echo_over_tls) == 0
    ok, _, _ = await asyncio.to_thread(store_and_echo, receiver.port)  # no TLS
    assert not ok


@pytest.mark.parametrize("receiver", [{"max_instance_mb": 1}], indirect=True)
async def test_an_instance_over_the_size_cap_is_refused_and_nothing_kept(
    receiver: Receiver,
) -> None:
    """A data set growing past RECEIVER_MAX_INSTANCE_MB: its file goes at once, the rest is
    read and dropped, 0xA700 answers it; the next instance on the association is stored."""
    reader, writer = await associated(receiver.port)
    try:
        writer.write(pdus.command_pdu(1, store_request("1.2.3.4")))
        chunk = b"\x00" * (256 * 1024)
        for _ in range(8):  # 2 MiB of data set in 8 fragments
            writer.write(pdata((0x00, chunk)))
        await writer.drain()
        await eventually(lambda: receiver.files() == [], 10, interval=0.05)  # gone past 1 MiB
        writer.write(pdata((0x02, DATASET)))
        assert await response_status(reader) == 0xA700
        assert receiver.files() == [] and receiver.ledger.recorded == []
        writer.write(pdus.command_pdu(1, store_request("1.2.3.5")) + pdata((0x02, DATASET)))
        assert await response_status(reader) == 0x0000
        assert len(receiver.files()) == 1
    finally:
        writer.close()


@pytest.fixture
def small_staging(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs as the receiver's staging folder (root is available in CI), mounted
    before the receiver starts (it creates staging files ahead)."""
    staging = tmp_path / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(staging)], check=True)
    try:
        yield staging
    finally:
        subprocess.run(["umount", "-l", str(staging)], check=True)


@pytest.mark.parametrize("receiver", [{"min_free_mb": 4}], indirect=True)
async def test_free_disk_is_checked_for_every_instance(
    small_staging: Path, receiver: Receiver
) -> None:
    """The disk fills after the association was accepted: the next C-STORE is answered
    0xA700 before anything is written (the sender keeps it), and once space is freed the
    same association stores again."""
    reader, writer = await associated(receiver.port)  # 8 MiB free: admitted
    try:
        filler = small_staging / "filler"
        filler.write_bytes(b"\x00" * (5 << 20))  # 3 MiB left, under RECEIVER_MIN_FREE_MB
        writer.write(pdus.command_pdu(1, store_request("1.2.3.4")) + pdata((0x02, DATASET)))
        assert await response_status(reader) == 0xA700
        assert receiver.files() == [filler] and receiver.ledger.recorded == []
        filler.unlink()
        writer.write(pdus.command_pdu(1, store_request("1.2.3.5")) + pdata((0x02, DATASET)))
        assert await response_status(reader) == 0x0000
        assert len(receiver.files()) == 1
    finally:
        writer.close()
