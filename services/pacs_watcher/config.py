from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, StagingSettings
from libs.dicom_net.client import DEFAULT_MAX_PDU
from libs.dicom_net.tls import DicomTls

WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class Pacs(BaseModel):
    """One upstream PACS (an item of `WATCHER_PACS`, a JSON list)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    retrieve: Literal["move", "get"] = "move"
    max_concurrent: Count = Field(default=2, description="Retrieves at once from this PACS.")
    tls: bool = Field(
        default=False, description="DICOM over TLS to this PACS (WATCHER_TLS_* below)."
    )


class WatcherSettings(StagingSettings):
    """Env prefix `WATCHER_`. DICOM TLS: a PACS item with `"tls": true`, and
    WATCHER_TLS_CA / WATCHER_TLS_CERT / WATCHER_TLS_KEY."""

    model_config = SettingsConfigDict(env_prefix="WATCHER_", frozen=True, extra="ignore")

    ops_port: Port = 8118
    pacs: list[Pacs] = Field(default_factory=list, description="Upstream PACS, a JSON list.")
    calling_ae: str = Field(default="DICOMFLOW", min_length=1, max_length=16)
    move_destination: str = Field(
        default="DICOMFLOW", min_length=1, max_length=16, description="Our receiver's AE title."
    )
    poll_interval_seconds: float = Field(default=300.0, gt=0)
    lookback_days: int = Field(default=7, ge=0, description="First poll: studies this recent.")
    overlap_days: int = Field(default=1, ge=0, description="Late arrivals: look back this far.")
    timeout_seconds: float = Field(default=300.0, gt=0, description="Per DICOM call.")
    max_pdu: int = Field(
        default=DEFAULT_MAX_PDU,
        ge=16384,
        le=1 << 30,
        description="Largest PDU we accept from a PACS (announced; a longer one is aborted).",
    )
    max_backoff_seconds: float = Field(default=900.0, gt=0)
    night_window: str = Field(
        default="", description="Retrieve only between HH:MM-HH:MM (local time); empty = always."
    )
    staging_dir: Path = Field(default=Path("./var/pacs-get"), description="C-GET destination.")
    # On-demand retrieves (POST /v1/retrieve): tasks looked for every `retrieve_poll_seconds`.
    retrieve_poll_seconds: float = Field(default=2.0, gt=0, description="Looks for new tasks.")
    retrieve_lease_seconds: float = Field(
        default=60.0, ge=5, description="A crashed watcher's task is taken over after this."
    )
    retrieve_max_attempts: int = Field(
        default=5, ge=1, description="Attempts while the PACS is away, then the task fails."
    )
    retrieve_backoff_seconds: float = Field(
        default=30.0, gt=0, description="Wait after the first failed attempt; doubles."
    )
    retrieve_max_studies: int = Field(
        default=200, ge=1, description="A query matching more studies to retrieve fails."
    )

    tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle a TLS PACS's certificate is verified against; unset: system.",
    )
    tls_cert: Path | None = Field(
        default=None, description="Our PEM certificate, for PACS that require mutual TLS."
    )
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("WATCHER_TLS_CERT and WATCHER_TLS_KEY go together")
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        return self

    def dicom_tls(self, pacs: Pacs) -> DicomTls | None:
        if not pacs.tls:
            return None
        return DicomTls(ca_file=self.tls_ca, cert_file=self.tls_cert, key_file=self.tls_key)

    @field_validator("night_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value and not WINDOW.match(value):
            raise ValueError("night_window is HH:MM-HH:MM, e.g. 22:00-06:00")
        return value

    def in_window(self, now: time) -> bool:
        if not self.night_window:
            return True
        start_s, end_s = self.night_window.split("-")
        start, end = time.fromisoformat(start_s), time.fromisoformat(end_s)
        return start <= now < end if start <= end else (now >= start or now < end)
