from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, ExistingFile, Port, ServiceSettings


class OrthancWatcherSettings(ServiceSettings):
    """Env prefix `ORTHANC_`. The webhook is served with /health /ready /metrics on
    `ORTHANC_OPS_HOST:ORTHANC_OPS_PORT`."""

    model_config = SettingsConfigDict(env_prefix="ORTHANC_", frozen=True, extra="ignore")

    ops_port: Port = 8112
    url: str = Field(description="Orthanc's REST API, e.g. http://orthanc:8042 (required).")
    username: str = ""
    password: str = ""
    ca_bundle: ExistingFile | None = Field(
        default=None, description="PEM CA file an https:// ORTHANC_URL is verified against."
    )
    staging_dir: Path = Field(
        default=Path("./var/staging/orthanc"),
        description="Downloaded instances wait here; extractor and storage-writer read it.",
    )
    follow_changes: bool = Field(default=True, description="Follow the /changes feed.")
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    changes_limit: Count = Field(default=100, le=1000, description="Changes read per request.")
    start_at_end: bool = Field(
        default=False,
        description="With no cursor yet: skip what Orthanc already holds (default: take it all).",
    )
    webhook_secret: str = Field(
        default="", description="Shared secret accepted in X-Dicomflow-Secret (or an API key)."
    )
    delete_after_indexed: bool = Field(
        default=False, description="Delete each instance from Orthanc once stored and indexed."
    )
    cleanup_interval_seconds: float = Field(default=10.0, gt=0)
    request_timeout_seconds: float = Field(default=60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of Orthanc's REST API")
        return value.rstrip("/")

    @field_validator("staging_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.absolute()
