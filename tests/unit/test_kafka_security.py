"""Kafka TLS and SASL settings reach every aiokafka client we build (producer, consumer, admin).

The embedded dev broker (Tansu) has no TLS or SASL listener, so the TLS part is checked against
a TLS server of the test's own that requires a client certificate: each client must complete
the handshake with the configured CA and present the configured certificate. SASL is checked
on the clients' settings (no SASL broker here).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from libs.contracts.settings import ServiceSettings, load_settings
from libs.kafka.admin import admin_client, ensure_topics
from libs.kafka.consumer import RetryPolicy, StageConsumer
from libs.kafka.producer import Producer
from libs.runtime.metrics import ConsumerMetrics, ProducerMetrics
from tests.certs import Pki, make_pki
from tests.polling import eventually


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsListener:
    """Accepts TLS connections (client certificate required) and notes who presented what."""

    def __init__(self, pki: Pki) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.clients: list[str] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        self.clients.append(dict(x[0] for x in cert.get("subject", ()))["commonName"])
        writer.close()  # not a broker: the client's first request goes unanswered

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = server.sockets[0].getsockname()[1]
        return server


@pytest.fixture
async def listener(pki: Pki) -> AsyncIterator[TlsListener]:
    tls = TlsListener(pki)
    server = await tls.start()
    yield tls
    server.close()


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> ServiceSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServiceSettings()


def _ssl_env(pki: Pki, port: int) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{port}",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(pki.ca),
        "KAFKA_SSL_CERTFILE": str(pki.client_cert),
        "KAFKA_SSL_KEYFILE": str(pki.client_key),
    }


def _producer(s: ServiceSettings) -> Producer:
    return Producer(
        s.kafka,
        idempotence=False,
        metrics=ProducerMetrics.create("t", CollectorRegistry()),
        client_id="t",
    )


def _consumer(s: ServiceSettings) -> StageConsumer:
    return StageConsumer(
        stage="t",
        group_id="t",
        routes={},
        bootstrap_servers=s.kafka,
        producer=_producer(ServiceSettings()),
        metrics=ConsumerMetrics.create("t", CollectorRegistry()),
        stopping=asyncio.Event(),
        retry=RetryPolicy(),
    )


async def test_producer_consumer_and_admin_connect_with_tls_and_a_client_certificate(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, listener: TlsListener
) -> None:
    s = _settings(monkeypatch, **_ssl_env(pki, listener.port))
    producer, consumer = _producer(s), _consumer(s)
    for start in (
        producer.start,
        consumer.start,
        lambda: ensure_topics(s.kafka, partitions=1, replication_factor=1),
    ):
        with pytest.raises(KafkaError):  # no broker behind the handshake
            await start()
    await producer.stop()
    await consumer.stop()
    clients = await eventually(lambda: len(listener.clients) >= 3 and listener.clients)
    assert set(clients) == {"dicomflow-test-client"}


async def test_a_broker_certificate_from_another_ca_is_refused(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, listener: TlsListener, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", ca_name="someone else")
    env = {**_ssl_env(pki, listener.port), "KAFKA_SSL_CAFILE": str(other.ca)}
    producer = _producer(_settings(monkeypatch, **env))
    with pytest.raises(KafkaError):
        await producer.start()
    await producer.stop()
    assert listener.clients == []  # the handshake never completed


async def test_sasl_ssl_settings_reach_every_client(
    monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    s = _settings(
        monkeypatch,
        KAFKA_BOOTSTRAP_SERVERS="broker:9093",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SSL_CAFILE=str(pki.ca),
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="dicomflow",
        KAFKA_SASL_PASSWORD="s3cret",
    )
    clients = [
        _producer(s)._producer.client,
        _consumer(s)._consumer._client,
        admin_client(s.kafka)._client,
    ]
    for client in clients:
        assert client._security_protocol == "SASL_SSL"
        assert isinstance(client._ssl_context, ssl.SSLContext)
        assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert (client._sasl_plain_username, client._sasl_plain_password) == (
            "dicomflow",
            "s3cret",
        )
    assert "s3cret" not in str(s.redacted())


async def test_plaintext_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _producer(_settings(monkeypatch))._producer.client
    assert client._security_protocol == "PLAINTEXT"
    assert client._ssl_context is None


def test_sasl_without_credentials_stops_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SystemExit):
        load_settings(ServiceSettings)
    assert "KAFKA_SASL_USERNAME" in capsys.readouterr().err


def test_a_key_that_is_not_the_certificates_stops_the_service(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", str(pki.client_cert))
    monkeypatch.setenv("KAFKA_SSL_KEYFILE", str(pki.server_key))
    with pytest.raises(SystemExit):
        load_settings(ServiceSettings)
    assert "TLS files unusable" in capsys.readouterr().err
