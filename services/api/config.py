"""API settings (env prefix `API_`). `API_HOST`/`API_PORT` serve the API and its ops routes
(/health /ready /metrics) on one port, so they also set `ops_host`/`ops_port`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limits import parse_many
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import ExistingFile, ServiceSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
HARD_MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class ApiLimits:
    """What the routes need from the settings."""

    default_page_size: int = 50
    max_page_size: int = HARD_MAX_PAGE_SIZE
    publish_timeout_seconds: float = 10.0
    session_hours: float = 8.0
    rate_per_key: str = "600/minute"
    rate_per_address: str = "1200/minute"
    dicomweb_rate_per_key: str = "6000/minute"
    dicomweb_rate_per_address: str = "12000/minute"
    search_count_limit: int = 1000
    import_events_interval_seconds: float = 1.0
    import_events_heartbeat_seconds: float = 15.0


class ApiSettings(ServiceSettings):
    """Env prefix `API_`: API_HOST, API_PORT, API_DEFAULT_PAGE_SIZE, API_MAX_PAGE_SIZE,
    API_PUBLISH_TIMEOUT_SECONDS, API_SESSION_HOURS, API_RATE_PER_*, API_DICOMWEB_RATE_PER_*,
    API_SEARCH_COUNT_LIMIT, API_RENDER_*, API_STOW_*, API_PACKAGER_URL,
    API_PACKAGER_TIMEOUT_SECONDS, API_PACKAGER_CA_BUNDLE, API_VIEWER_DIR, API_EXPORT_*,
    API_IMPORT_EVENTS_INTERVAL_SECONDS, API_IMPORT_EVENTS_HEARTBEAT_SECONDS,
    API_HTTPS_CERTFILE, API_HTTPS_KEYFILE (HTTPS)."""

    model_config = SettingsConfigDict(env_prefix="API_", frozen=True, extra="ignore")

    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0 = any free port")
    default_page_size: int = Field(default=50, ge=1, le=HARD_MAX_PAGE_SIZE)
    max_page_size: int = Field(default=HARD_MAX_PAGE_SIZE, ge=1, le=HARD_MAX_PAGE_SIZE)
    publish_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long POST /v1/imports waits for the broker's ack"
    )
    session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, description="How long a browser stays signed in"
    )
    rate_per_key: str = Field(
        default="600/minute",
        description="Requests to /v1 one API key may make (`limits` notation: N/second|minute|"
        "hour, e.g. '10/second;600/minute'); beyond, 429 with Retry-After.",
    )
    rate_per_address: str = Field(
        default="1200/minute", description="The same for one client address (any key or none)."
    )
    dicomweb_rate_per_key: str = Field(
        default="6000/minute",
        description="Requests to /dicom-web and /wado one API key may make (its own window: "
        "a viewer opening a 600-slice CT asks for each of its frames).",
    )
    dicomweb_rate_per_address: str = Field(
        default="12000/minute", description="The same for one client address (any key or none)."
    )
    search_count_limit: int = Field(
        default=1000,
        ge=1,
        description="A study search counts its matches up to this many (or to the end of the "
        "page asked for); beyond, its total is a lower bound (`total_exact` false).",
    )
    viewer_dir: Path | None = Field(
        default=None, description="The OHIF Viewer build served at /viewer (deploy/dev/ohif.sh)"
    )
    render_workers: int = Field(default=1, ge=1, description="Processes rendering previews")
    render_memory_limit_mb: int = Field(default=1024, ge=128, description="RLIMIT_AS of each")
    render_timeout_seconds: float = Field(default=30.0, gt=0, description="Per rendering")
    stow_staging_dir: Path = Field(
        default=Path("./var/stow"), description="Where DICOMweb STOW-RS stages what it receives"
    )
    stow_max_instance_mb: int = Field(default=2048, ge=1, description="Largest STOW-RS instance")
    stow_max_request_mb: int = Field(default=8192, ge=1, description="Largest STOW-RS request")
    packager_url: str = Field(
        default="http://127.0.0.1:8107",
        pattern=r"^https?://",
        description="The packager's HTTP address; /v1/.../archive requests are relayed there",
    )
    packager_ca_bundle: ExistingFile | None = Field(
        default=None,
        description="PEM CA file an https:// API_PACKAGER_URL is verified against",
    )
    packager_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest wait for the packager's next bytes (a ZIP answers once built)",
    )
    export_dir: Path = Field(
        default=Path("./var/exports"),
        description="Where de-identified export archives are written and served from",
    )
    export_workers: int = Field(default=1, ge=1, description="Processes de-identifying files")
    export_memory_limit_mb: int = Field(default=1024, ge=128, description="RLIMIT_AS of each")
    export_timeout_seconds: float = Field(default=120.0, gt=0, description="Per instance")
    export_retention_hours: float = Field(
        default=72.0, gt=0, description="Completed export archives are removed after this"
    )
    export_max_attempts: int = Field(
        default=3, ge=1, description="Runs of one export interrupted by outages before it fails"
    )
    import_events_interval_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often an import's live progress is looked at"
    )
    import_events_heartbeat_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A live-progress stream that has nothing new sends a heartbeat this often",
    )
    render_queue: int = Field(
        default=8, ge=0, description="Renders waiting for a worker; beyond, 503 + Retry-After"
    )

    @model_validator(mode="before")
    @classmethod
    def _ops_on_api_port(cls, data: Any) -> Any:
        """The ops routes are part of the API app: one host and port for both."""
        if isinstance(data, dict):
            data = {
                **data,
                "ops_host": data.get("host", DEFAULT_HOST),
                "ops_port": data.get("port", DEFAULT_PORT),
            }
        return data

    @field_validator(
        "rate_per_key", "rate_per_address", "dicomweb_rate_per_key", "dicomweb_rate_per_address"
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_many(value)  # raises ValueError naming what it cannot read
        return value

    @model_validator(mode="after")
    def _page_sizes(self) -> ApiSettings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("API_DEFAULT_PAGE_SIZE must not exceed API_MAX_PAGE_SIZE")
        return self

    def limits(self) -> ApiLimits:
        return ApiLimits(
            default_page_size=self.default_page_size,
            max_page_size=self.max_page_size,
            publish_timeout_seconds=self.publish_timeout_seconds,
            session_hours=self.session_hours,
            rate_per_key=self.rate_per_key,
            rate_per_address=self.rate_per_address,
            dicomweb_rate_per_key=self.dicomweb_rate_per_key,
            dicomweb_rate_per_address=self.dicomweb_rate_per_address,
            search_count_limit=self.search_count_limit,
            import_events_interval_seconds=self.import_events_interval_seconds,
            import_events_heartbeat_seconds=self.import_events_heartbeat_seconds,
        )
