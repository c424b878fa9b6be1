"""DICOM over TLS (PS3.15 B.1, the BCP 195 profiles): what a DicomClient needs to verify a
peer and, for peers that require mutual TLS, to present its own certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DicomTls:
    ca_file: Path | None = None  # the peer's certificate is verified against it; None: system
    cert_file: Path | None = None  # ours, PEM (with its chain), for peers requiring one
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a TLS certificate and its key go together")

    def client_context(self) -> ssl.SSLContext:
        """Verifies the peer's certificate and host name; TLS 1.2 or later (BCP 195)."""
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(certfile=str(self.cert_file), keyfile=str(self.key_file))
        return ctx
