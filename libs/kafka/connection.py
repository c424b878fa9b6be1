"""How every Kafka client of dicomflow reaches the brokers: the bootstrap servers and, on a
secured cluster, TLS (`SSL`), SASL (`SASL_PLAINTEXT`) or both (`SASL_SSL`).

Every aiokafka producer, consumer and admin client is built with `client_args(kafka)`, so the
security settings reach each of them the same way. A plain string is the bootstrap servers of
a PLAINTEXT cluster (the embedded dev broker, Tansu, has no TLS or SASL listener).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: str | None = None  # None: the system's CAs
    ssl_certfile: str | None = None  # client certificate (mutual TLS), PEM
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=self.ssl_key_password,
        )
        return context


Kafka = str | KafkaConnection


def connection(kafka: Kafka) -> KafkaConnection:
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)


def client_args(kafka: Kafka) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    c = connection(kafka)
    args: dict[str, Any] = {
        "bootstrap_servers": c.bootstrap_servers,
        "security_protocol": c.security_protocol,
    }
    if c.uses_tls:
        args["ssl_context"] = c.ssl_context()
    if c.security_protocol.startswith("SASL"):
        args["sasl_mechanism"] = c.sasl_mechanism
        args["sasl_plain_username"] = c.sasl_username
        args["sasl_plain_password"] = c.sasl_password
    return args
