"""Settings of the central-index publisher (env prefix `INDEX_PUBLISHER_`).

The target (`URL`, `CENTER`) is optional here so that an unconfigured deployment still loads
its settings; `require_target()` fails fast when the service or `dicomflow publish` starts
without it (`dicomflow up` does not start the publisher at all without a URL).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, ExistingFile, Port, ServiceSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PayloadFormat = Literal["default", "native"]


class IndexPublisherSettings(ServiceSettings):
    """Env prefix `INDEX_PUBLISHER_`."""

    model_config = SettingsConfigDict(env_prefix="INDEX_PUBLISHER_", frozen=True, extra="ignore")

    ops_port: Port = 8109
    concurrency: Count = Field(default=4, description="Studies delivered at once")
    database_pool_size: Count = 8
    url: str | None = Field(
        default=None, description="Central index endpoint studies are POSTed to"
    )
    center: str = Field(default="", description="Site/center code sent with every study")
    api_key: SecretStr | None = Field(default=None, description="Sent in `auth_header`")
    auth_header: str = Field(default="X-API-Key", min_length=1)
    idempotency_header: str = Field(default="Idempotency-Key", min_length=1)
    payload_format: PayloadFormat = "default"
    timeout_seconds: float = Field(default=10.0, gt=0)
    ca_bundle: ExistingFile | None = Field(
        default=None,
        description="PEM CA file the receiver's certificate is verified against (default: the "
        "system's CAs); verification cannot be turned off",
    )
    max_attempts: Count = Field(default=6, description="HTTP attempts per study revision")
    backoff_seconds: float = Field(default=0.5, gt=0, description="First retry delay (doubles)")
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    retry_after_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest Retry-After honoured"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and parts.hostname in LOOPBACK:
            return value  # development receivers on this host only
        raise ValueError("must be an https:// URL (http:// only for a loopback receiver)")

    @field_validator("center")
    @classmethod
    def _center(cls, value: str) -> str:
        if value and not (value.isascii() and value.isprintable()):
            raise ValueError("must be printable ASCII (it is part of an HTTP header)")
        return value.strip()

    def require_target(self) -> str:
        """The receiver URL, or a ValueError naming what is missing."""
        if not self.url:
            raise ValueError("INDEX_PUBLISHER_URL is not set: nothing to publish to")
        if not self.center:
            raise ValueError("INDEX_PUBLISHER_CENTER is not set: the receiver needs the site code")
        return self.url
