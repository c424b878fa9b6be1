"""Settings of the backend connector (env prefix `CONNECTOR_`). Without `CONNECTOR_URL` the
service refuses to start and `dicomflow up` does not start it."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, ExistingFile, Port, ServiceSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ConnectorSettings(ServiceSettings):
    """Env prefix `CONNECTOR_`."""

    model_config = SettingsConfigDict(env_prefix="CONNECTOR_", frozen=True, extra="ignore")

    ops_port: Port = 8124
    url: str | None = Field(
        default=None, description="Base URL of the backend's REST API (…/patients under it)"
    )
    api_key: SecretStr | None = Field(default=None, description="Sent in `auth_header`")
    auth_header: str = Field(default="X-API-Key", min_length=1)
    upload: Literal["jpeg", "dicom"] = Field(
        default="jpeg", description="What is uploaded per image: a JPEG preview or the DICOM file"
    )
    timeout_seconds: float = Field(default=30.0, gt=0)
    ca_bundle: ExistingFile | None = Field(
        default=None,
        description="PEM CA file the backend's certificate is verified against (default: the "
        "system's CAs); verification cannot be turned off",
    )
    max_attempts: Count = Field(default=6, description="HTTP attempts per request")
    backoff_seconds: float = Field(default=0.5, gt=0, description="First retry delay (doubles)")
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    retry_after_max_seconds: float = Field(default=300.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value.rstrip("/")
        if parts.scheme == "http" and parts.hostname in LOOPBACK:
            return value.rstrip("/")  # development backends on this host only
        raise ValueError("must be an https:// URL (http:// only for a loopback backend)")

    def require_url(self) -> str:
        if not self.url:
            raise ValueError("CONNECTOR_URL is not set: no backend to connect to")
        return self.url
