"""DicomClient against real peers, Orthanc and DCMTK dcmqrscp: C-ECHO, C-FIND at every
level, C-GET, C-MOVE, and its errors."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from libs.dicom.synthetic import generate_corpus
from libs.dicom_net.client import Cancelled, DicomClient
from libs.dicom_net.errors import ConnectionFailed, FailureStatus
from libs.dicom_net.models import Level, Peer, Progress, Query, Root
from libs.tools.dev_broker import free_port, wait_for_port
from load_test.dimse import StoreSCP, storescu
from load_test.peers import PEER_ENV, Orthanc, require_binary

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
    deadline = time.monotonic() + 30
    while len([p for p in upstream.scp.folder.rglob("*") if p.is_file()]) < 50:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


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


QR_CONFIG = """\
NetworkTCPPort  = {port}
MaxPDUSize      = 131072
MaxAssociations = 16

HostTable BEGIN
dfclient = (DFCLIENT, 127.0.0.1, 0)
storescp = (STORESCP, 127.0.0.1, {scp_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
DCMQRSCP  {db}  RW  (200, 1024mb)  ANY
AETable END
"""


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, StoreSCP, int]]:
    """DCMTK's dcmqrscp holding one synthetic study of 20 instances (sent with storescu)."""
    root = tmp_path_factory.mktemp("dcmqrscp")
    generate_corpus(root / "corpus", 20, rows=32, columns=32)
    scp = StoreSCP(root / "moved")
    scp.start()
    port = free_port()
    (root / "db").mkdir()
    config = root / "qr.cfg"
    config.write_text(QR_CONFIG.format(port=port, scp_port=scp.port, db=root / "db"))
    proc = subprocess.Popen(
        [require_binary("dcmqrscp"), "-c", str(config)],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port)
        sent = storescu("127.0.0.1", port, root / "corpus", called="DCMQRSCP")
        assert sent.returncode == 0, sent.output
        yield port, scp, 20
    finally:
        proc.terminate()
        proc.wait(10)
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
    deadline = time.monotonic() + 30
    while len([p for p in scp.folder.rglob("*") if p.is_file()]) < count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
