"""Settings shared by every service, read once from the environment at start.

Shared connection settings have fixed names (`KAFKA_BOOTSTRAP_SERVERS`,
`DATABASE_URL`, `STORAGE_URL`, `LOG_LEVEL`); each service subclasses
`ServiceSettings` with its own `env_prefix` for the rest (e.g. `EXTRACTOR_`).
Invalid values stop the service at once with a message naming the variable.
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.kafka.connection import KafkaConnection

# Constrained types, so a service that overrides a default keeps the check.
Port = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(ge=1)]


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


# A file the service reads at start (a CA bundle): missing, it stops the service with the path.
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/dicomflow"


class ServiceSettings(BaseSettings):
    """What every stage needs: the bus, the database, storage, logs and its ops port."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    kafka_enable_idempotence: bool = Field(
        default=True,
        validation_alias="KAFKA_ENABLE_IDEMPOTENCE",
        description="Idempotent producer; off for brokers that refuse InitProducerId (Tansu).",
    )
    kafka_session_timeout_ms: int = Field(
        default=30_000,
        ge=1000,
        validation_alias="KAFKA_SESSION_TIMEOUT_MS",
        description="Consumer-group session; Tansu delays joins by about this, so dev uses 3000.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="SSL: TLS to the brokers; SASL_SSL: TLS and a SASL login (Tansu has neither)",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        validation_alias="KAFKA_SSL_CAFILE",
        description="PEM CA bundle the brokers' certificates are verified against; unset: system",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None,
        validation_alias="KAFKA_SSL_CERTFILE",
        description="Client certificate (PEM) for brokers that require mutual TLS",
    )
    kafka_ssl_keyfile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_KEYFILE")
    kafka_ssl_key_password: str | None = Field(
        default=None, validation_alias="KAFKA_SSL_KEY_PASSWORD"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: str | None = Field(default=None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_topic_partitions: int = Field(default=6, ge=1, validation_alias="KAFKA_TOPIC_PARTITIONS")
    kafka_replication_factor: int = Field(
        default=1, ge=1, validation_alias="KAFKA_REPLICATION_FACTOR"
    )
    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    database_pool_size: Count = Field(default=4, description="Connections per process")
    storage_url: str = Field(default="file://./var/storage", validation_alias="STORAGE_URL")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    profile_dir: Path | None = Field(
        default=None,
        validation_alias="DICOMFLOW_PROFILE_DIR",
        description="Development: run under cProfile and write <service>-<pid>.prof here",
    )
    ops_host: str = "127.0.0.1"
    ops_port: Port = Field(default=0, description="/health /ready /metrics; 0 = any")
    https_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the service's HTTP server: set, it serves HTTPS",
    )
    https_keyfile: Path | None = Field(default=None, description="Its PEM private key")
    max_retries: int = Field(default=3, ge=0, description="Retries of a failing message before DLQ")
    retry_backoff_seconds: float = Field(default=0.2, gt=0)
    batch_size: Count = Field(default=200, description="Messages fetched per poll")
    batch_linger_ms: int = Field(
        default=25,
        ge=0,
        le=1000,
        description="How long a poll that returned less than a batch waits for more before "
        "the batch is handled: per-batch costs shared by more messages vs. latency",
    )
    concurrency: Count = Field(default=1, description="Messages of a batch handled at once")
    producer_linger_ms: int = Field(
        default=5,
        ge=0,
        description="How long the producer waits to batch events: throughput vs. latency",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"postgresql", "postgres"}:
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        pairs = [
            ("HTTPS_CERTFILE/HTTPS_KEYFILE", self.https_certfile, self.https_keyfile),
            (
                "KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE",
                self.kafka_ssl_certfile,
                self.kafka_ssl_keyfile,
            ),
        ]
        for names, cert, key in pairs:
            if (cert is None) != (key is None):
                raise ValueError(f"{names} go together: set both or neither")
        for path in (
            self.https_certfile,
            self.https_keyfile,
            self.kafka_ssl_cafile,
            self.kafka_ssl_certfile,
            self.kafka_ssl_keyfile,
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        # Unreadable PEM files or a key that is not the certificate's: stop here, at start.
        try:
            self.kafka.ssl_context()  # SASL without credentials fails here too
            if self.https_certfile is not None and self.https_keyfile is not None:
                server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                server.load_cert_chain(self.https_certfile, self.https_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS files unusable: {exc}") from None
        return self

    @property
    def kafka(self) -> KafkaConnection:
        """What every Kafka client of the service is built with (libs.kafka.connection)."""
        return KafkaConnection(
            self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            ssl_cafile=_str(self.kafka_ssl_cafile),
            ssl_certfile=_str(self.kafka_ssl_certfile),
            ssl_keyfile=_str(self.kafka_ssl_keyfile),
            ssl_key_password=self.kafka_ssl_key_password,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
        )

    @property
    def http_tls(self) -> HttpTls | None:
        if self.https_certfile is None or self.https_keyfile is None:
            return None
        return HttpTls(self.https_certfile, self.https_keyfile)

    def redacted(self) -> dict[str, Any]:
        """The settings as they may be logged: passwords in URLs and secret settings masked.
        A secret is named by its last word (`password`, `webhook_secret`, `api_key`); a name
        that merely contains one (`rate_per_key`, `tls_key` the path of a key file) is shown."""
        out = self.model_dump(mode="json")
        for name, value in out.items():
            if isinstance(value, str) and "://" in value:
                out[name] = redact_url(value)
            elif is_secret(name):
                out[name] = "***" if value else value
        return out


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass(frozen=True)
class HttpTls:
    """The certificate and key an HTTP server (uvicorn) serves HTTPS with."""

    certfile: Path
    keyfile: Path


SECRET_NAMES = ("password", "secret", "token", "api_key", "passphrase")


def is_secret(name: str) -> bool:
    """A setting whose value must never be logged: its name is, or ends in, a secret's name."""
    return any(name == word or name.endswith(f"_{word}") for word in SECRET_NAMES)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment, or exit with a message naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            env = name if name.isupper() else (prefix + name).upper()
            lines.append(f"  {env}: {err['msg']} (got {err.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


class StagingSettings(ServiceSettings):
    """A service that stages what it receives (under its own env prefix): how long staged
    copies are kept once the pipeline is done with them (`libs.staging.cleanup`)."""

    keep_done_hours: float = Field(
        default=24.0,
        ge=0,
        description="How long staged copies of indexed/duplicate instances are kept.",
    )
    keep_failed_days: float = Field(
        default=30.0,
        ge=0,
        description="How long staged copies of failed/conflicting instances are kept (a DLQ "
        "replay needs them); the receiver's hour folders older than this go with what is left.",
    )
    cleanup_interval_seconds: float = Field(default=600.0, gt=0)


class OwnStagingSettings(ServiceSettings):
    """A stage that reads what our own sources staged (the extractor, the storage-writer):
    their staging folders, each read from its source's own setting. A file in one was
    closed before it was announced and is never written again (streamed to a temporary name
    and renamed into place, or created under a random name; the staging cleanup only unlinks
    names), so the extractor stamps it without 2 s of rest (ADR 0031) and the storage-writer
    stores it as a hard link when the storage is on the same filesystem (ADR 0034). Only
    folders set in the environment count (`dicomflow up` sets them all)."""

    receiver_staging_dir: Path | None = Field(
        default=None,
        validation_alias="RECEIVER_STAGING_DIR",
        description="The DICOM receiver's staging folder (the receiver's own setting).",
    )
    orthanc_staging_dir: Path | None = Field(
        default=None,
        validation_alias="ORTHANC_STAGING_DIR",
        description="The Orthanc watcher's staging folder (its own setting).",
    )
    iso_staging_dir: Path | None = Field(
        default=None,
        validation_alias="ISO_STAGING_DIR",
        description="The ISO watcher's staging folder (its own setting).",
    )
    pacs_staging_dir: Path | None = Field(
        default=None,
        validation_alias="WATCHER_STAGING_DIR",
        description="The PACS watcher's C-GET folder (its own setting).",
    )
    stow_staging_dir: Path | None = Field(
        default=None,
        validation_alias="API_STOW_STAGING_DIR",
        description="The API's STOW-RS staging folder (its own setting).",
    )

    def own_staging(self) -> list[Path]:
        """The staging folders of our own sources that are set."""
        folders = (
            self.receiver_staging_dir,
            self.orthanc_staging_dir,
            self.iso_staging_dir,
            self.pacs_staging_dir,
            self.stow_staging_dir,
        )
        return [f for f in folders if f is not None]
