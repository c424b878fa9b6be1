"""How our HTTP clients verify an https:// peer: one rule for all of them."""

import ssl
from pathlib import Path


def tls_verify(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """What httpx verifies a peer's certificate with: the CA(s) of `ca_bundle` (a PEM file: a
    hospital's private CA), else the system's store. Never off."""
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return True
