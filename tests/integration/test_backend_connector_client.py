"""The connector's HTTP client against the test backend run as a real server: DICOM uploads,
409 taken as done, a refused request dead-lettered, an outage held; over HTTPS, the backend's
certificate verified against CONNECTOR_CA_BUNDLE (a CA made in the test) and refused without
it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydicom.data import get_testdata_file

from libs.contracts.events import PatientAttrs
from libs.http.delivery import (
    DeliveryMetrics,
    ReceiverHealth,
    ReceiverRejected,
    ReceiverUnavailable,
)
from libs.tools.dev_broker import free_port, wait_for_port
from services.backend_connector.backend import Backend
from services.backend_connector.config import ConnectorSettings
from tests.certs import Pki, make_pki

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def serve(*tls: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.e2e.his_backend:app", "--port", str(port), *tls],
        env={"HIS_FAIL_RATE": "0", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port)
    return proc, port


@pytest.fixture
def url() -> Iterator[str]:
    proc, port = serve()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def https_url(tmp_path: Path) -> Iterator[tuple[str, Pki]]:
    pki = make_pki(tmp_path / "pki")
    proc, port = serve("--ssl-certfile", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key))
    try:
        yield f"https://localhost:{port}", pki
    finally:
        proc.terminate()
        proc.wait(10)


def client(url: str, ca_bundle: Path | None = None) -> Backend:
    settings = ConnectorSettings(  # type: ignore[call-arg]
        url=url,
        max_attempts=3,
        backoff_seconds=0.01,
        max_backoff_seconds=0.02,
        upload="dicom",
        ca_bundle=ca_bundle,
    )
    metrics = DeliveryMetrics.create("backend-connector", CollectorRegistry())

    async def sleep(seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return True

    return Backend(
        settings, health=ReceiverHealth(metrics, target="backend"), metrics=metrics, sleep=sleep
    )


def held(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/state", timeout=10).json()
    return body


async def test_dicom_uploads_once_and_409_is_done(url: str) -> None:
    backend = client(url)
    try:
        patient = PatientAttrs(patient_id="P-1", patient_name="Doe^Jane", birth_date="19800102")
        assert await backend.find_patient("P-1") is None
        created = await backend.create_patient(patient, "corr")
        assert created is not None
        assert await backend.create_patient(patient, "corr") is None  # 409: exists
        assert await backend.find_patient("P-1") == created
        path = Path(get_testdata_file("CT_small.dcm") or "")
        for _ in range(2):  # the second answered 409: done, not an error
            await backend.upload(created, "1.2", "1.2.3", path, "application/dicom", "corr")
        state = held(url)
        assert state["patients"][0]["birth_date"] == "1980-01-02"
        assert state["images"] == {
            "1.2.3": {
                "patient": created,
                "study": "1.2",
                "type": "application/dicom",
                "size": path.stat().st_size,
                "jpeg": False,
            }
        }
        assert state["counts"]["conflicts"] == 2
        with pytest.raises(ReceiverRejected, match="HTTP 404"):  # an unknown patient
            await backend.upload("nobody", "1.2", "1.2.4", path, "application/dicom", "corr")
    finally:
        await backend.close()


async def test_a_backend_that_answers_nothing_is_an_outage_not_a_rejection() -> None:
    backend = client(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ReceiverUnavailable, match="backend unavailable after 3 attempts"):
            await backend.find_patient("P-1")
    finally:
        await backend.close()


async def test_the_backend_certificate_is_verified_against_the_ca_bundle(
    https_url: tuple[str, Pki], tmp_path: Path
) -> None:
    """Signed by a private CA: refused with the system's CAs (held as an outage, never sent
    unverified), accepted with CONNECTOR_CA_BUNDLE; a bundle that is not there stops the
    settings from loading."""
    url, pki = https_url
    untrusted, trusted = client(url), client(url, pki.ca)
    try:
        with pytest.raises(ReceiverUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.find_patient("P-1")
        assert await trusted.find_patient("P-1") is None
    finally:
        await untrusted.close()
        await trusted.close()
    with pytest.raises(ValueError, match="no such file"):
        ConnectorSettings(url=url, ca_bundle=tmp_path / "missing.pem")  # type: ignore[call-arg]
