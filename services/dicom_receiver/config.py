from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from libs.contracts.settings import Count, Port, StagingSettings
from services.dicom_receiver.commitment import parse_peers


@dataclass(frozen=True)
class Caller:
    """An allowed calling AE title, optionally bound to the peer's IP address (`AE@10.0.0.5`)."""

    ae: str
    ip: str | None = None

    @classmethod
    def parse(cls, text: str) -> Caller:
        ae, _, ip = text.strip().partition("@")
        ae = ae.strip()
        if not ae or len(ae) > 16 or "\\" in ae:
            raise ValueError(f"{text!r}: an AE title is 1-16 characters without backslash")
        if ip:
            ipaddress.ip_address(ip.strip())  # raises ValueError with the reason
        return cls(ae, ip.strip() or None)

    def allows(self, ae: str, ip: str) -> bool:
        return self.ae == ae and (self.ip is None or self.ip == ip)


def is_loopback(host: str) -> bool:
    """Only this machine can connect: localhost or a loopback address (not 0.0.0.0/::)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it resolves to who knows what
        return False


StrList = Annotated[list[str], NoDecode]


class ReceiverSettings(StagingSettings):
    """Env prefix `RECEIVER_`."""

    model_config = SettingsConfigDict(env_prefix="RECEIVER_", frozen=True, extra="ignore")

    ops_port: Port = 8117
    # A sender waits for each C-STORE answer, and the answer waits for the Kafka ack:
    # batching events for 5 ms would cost every instance 5 ms (65 -> 90 inst/s measured).
    producer_linger_ms: int = Field(default=0, ge=0)
    ae_title: str = Field(default="DICOMFLOW", min_length=1, max_length=16)
    host: str = Field(default="127.0.0.1", description="Address the DICOM port listens on.")
    port: Port = Field(default=11112, description="DICOM port (0 = any free port).")
    allowed_callers: StrList = Field(
        default_factory=list,
        description="Calling AE titles accepted, comma-separated, each optionally `AE@IP`; "
        "empty accepts any caller: refused beyond loopback unless RECEIVER_ALLOW_ANY_CALLER.",
    )
    allow_any_caller: bool = Field(
        default=False,
        description="Start on a non-loopback RECEIVER_HOST with an empty allow-list (any "
        "calling AE may store); without it the receiver refuses to start.",
    )
    staging_dir: Path = Field(default=Path("./var/receiver"))
    min_free_mb: int = Field(
        default=1024,
        ge=0,
        description="Refuse associations, and each C-STORE (0xA700), when staging has less "
        "free space.",
    )
    max_instance_mb: int = Field(
        default=4096, ge=0, description="Largest instance accepted (0xA700 beyond); 0 = no cap."
    )
    max_associations: Count = Field(
        default=16, description="Associations open at once, per receiver process."
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Receiver processes sharing the DICOM port (SO_REUSEPORT: the kernel "
        "spreads associations); process i > 0 serves its ops port on RECEIVER_OPS_PORT + i.",
    )
    # Set by the first process for the others it starts (0: the first process itself).
    process_index: int = Field(default=0, ge=0)
    max_pdu: int = Field(default=0, ge=0, description="Maximum PDU we receive; 0 = unlimited.")
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    commit_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait for ledger + Kafka before a failure status."
    )
    commit_batch_size: Count = Field(default=256, description="Instances per ledger/Kafka batch.")
    fsync: bool = Field(default=True, description="fsync each instance before acknowledging it.")
    commitment: bool = Field(
        default=True, description="Serve Storage Commitment Push Model (N-ACTION/N-EVENT-REPORT)."
    )
    commitment_peers: StrList = Field(
        default_factory=list,
        description="Where to send a commitment report when the requesting association is "
        "gone: `AE=host:port`, comma-separated.",
    )
    commitment_wait_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait for requested instances still in the pipeline; then failed.",
    )
    commitment_poll_seconds: float = Field(default=1.0, gt=0)
    tls_cert: Path | None = Field(default=None, description="PEM server certificate: enables TLS.")
    tls_key: Path | None = None
    tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle: when set, clients must present a certificate."
    )

    @field_validator("allowed_callers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list):
            for item in value:
                Caller.parse(str(item))  # fail fast with the reason
        return value

    @field_validator("commitment_peers", mode="before")
    @classmethod
    def _peers(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list):
            parse_peers([str(v) for v in value])  # fail fast with the reason
        return value

    @model_validator(mode="after")
    def _tls(self) -> ReceiverSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("RECEIVER_TLS_CERT and RECEIVER_TLS_KEY go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("RECEIVER_TLS_CA needs RECEIVER_TLS_CERT and RECEIVER_TLS_KEY")
        return self

    @model_validator(mode="after")
    def _open_to_anyone(self) -> ReceiverSettings:
        if not self.allowed_callers and not self.allow_any_caller and not is_loopback(self.host):
            raise ValueError(
                f"the DICOM port would listen on {self.host}, beyond this host, and accept any "
                "calling AE: list the senders in RECEIVER_ALLOWED_CALLERS (AE or AE@IP, "
                "comma-separated), or set RECEIVER_ALLOW_ANY_CALLER=true to accept anyone"
            )
        return self

    def allows(self, ae: str, ip: str) -> bool:
        callers = [Caller.parse(c) for c in self.allowed_callers]
        return not callers or any(c.allows(ae, ip) for c in callers)
