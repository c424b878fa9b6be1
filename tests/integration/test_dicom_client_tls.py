"""DicomClient over DICOM TLS against DCMTK's storescp (+tls, BCP 195 profile, client
certificate required): the association succeeds with the test CA and our certificate, and is
refused without our certificate, with a peer certificate from another CA, and in plain TCP."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.dicom_net.client import DicomClient
from libs.dicom_net.errors import DicomNetError
from libs.dicom_net.models import Peer
from libs.dicom_net.tls import DicomTls
from libs.tools.dev_broker import free_port, wait_for_port
from load_test.peers import require_binary
from services.pacs_watcher.config import Pacs, WatcherSettings
from services.router.bootstrap import client_for
from services.router.config import RouterSettings
from services.router.rules import Destination
from tests.certs import Pki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("received")


@pytest.fixture(scope="module")
def storescp_tls(pki: Pki, received: Path) -> Iterator[Peer]:
    out = received
    port = free_port()
    proc = subprocess.Popen(
        [
            require_binary("storescp"),
            *("+tls", str(pki.server_key), str(pki.server_cert)),
            *("+cf", str(pki.ca)),  # trusted for client certificates (required: -rc default)
            *("-aet", "TLSSCP", "-od", str(out), str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield Peer(ae_title="TLSSCP", host="localhost", port=port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _client(peer: Peer, tls: DicomTls | None) -> DicomClient:
    return DicomClient(peer, calling_ae="DFTLS", tls=tls, retries=0, connect_timeout=2)


async def test_echo_over_tls_with_our_certificate(storescp_tls: Peer, pki: Pki) -> None:
    tls = DicomTls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    await _client(storescp_tls, tls).echo()


async def test_no_client_certificate_is_refused(storescp_tls: Peer, pki: Pki) -> None:
    with pytest.raises(DicomNetError):
        await _client(storescp_tls, DicomTls(ca_file=pki.ca)).echo()


async def test_a_peer_certificate_from_another_ca_is_refused(
    storescp_tls: Peer, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", ca_name="someone else")
    tls = DicomTls(ca_file=other.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    with pytest.raises(DicomNetError):
        await _client(storescp_tls, tls).echo()


async def test_plain_tcp_to_a_tls_port_fails(storescp_tls: Peer) -> None:
    with pytest.raises(DicomNetError):
        await _client(storescp_tls, None).echo()


def test_the_pacs_watcher_uses_tls_for_the_pacs_that_ask_for_it(pki: Pki) -> None:
    settings = WatcherSettings(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)  # type: ignore[call-arg]
    secure = Pacs(name="main", ae_title="PACS", host="pacs", port=2762, tls=True)
    plain = Pacs(name="old", ae_title="OLD", host="old", port=104)
    assert settings.dicom_tls(secure) == DicomTls(pki.ca, pki.client_cert, pki.client_key)
    assert settings.dicom_tls(plain) is None
    with pytest.raises(ValueError, match="WATCHER_TLS_CERT and WATCHER_TLS_KEY"):
        WatcherSettings(tls_cert=pki.client_cert)  # type: ignore[call-arg]


async def test_the_router_stores_over_tls_to_a_tls_destination(
    storescp_tls: Peer, pki: Pki, received: Path, tmp_path: Path
) -> None:
    """C-STORE carries images: a `tls: true` destination gets them over TLS, byte for byte."""
    sop = synthetic_uid("tls-store")
    ds = make_dataset(
        patient_id="TLS1",
        patient_name="Tls^Test",
        study_uid=synthetic_uid("tls-study"),
        series_uid=synthetic_uid("tls-series"),
        sop_uid=sop,
        rows=16,
        columns=16,
    )
    path = tmp_path / "one.dcm"
    write_instance(path, ds)
    settings = RouterSettings(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)  # type: ignore[call-arg]
    destination = Destination(
        name="tlsdest", ae_title=storescp_tls.ae_title, host="localhost",
        port=storescp_tls.port, tls=True,
    )  # fmt: skip
    client = client_for(settings, destination)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    async with client.storing([(str(ds.SOPClassUID), syntax)]) as session:
        assert await session.send(path, str(ds.SOPClassUID), syntax) == 0
    (got,) = [p for p in received.iterdir() if sop in p.name]
    assert pydicom.dcmread(got).PixelData == ds.PixelData
