from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class IsoWatcherSettings(ServiceSettings):
    """Env prefix `ISO_`."""

    model_config = SettingsConfigDict(env_prefix="ISO_", frozen=True, extra="ignore")

    ops_port: Port = 8113
    inbox: Path = Field(
        default=Path("./var/+++"),
        description="Folder watched for .iso images and copied-CD folders (with a DICOMDIR).",
    )
    processed_dir: Path | None = Field(default=None, description="Default: <inbox>/processed")
    failed_dir: Path | None = Field(default=None, description="Default: <inbox>/failed")
    staging_dir: Path = Field(
        default=Path("./var/staging/iso"),
        description="Files read off a disc wait here; extractor and storage-writer read it.",
    )
    scan_interval_seconds: float = Field(default=5.0, gt=0)
    settle_seconds: float = Field(
        default=10.0, ge=0, description="A disc unchanged for this long is complete."
    )
    scan_batch_size: Count = Field(default=200, description="Files recorded per round trip.")

    @field_validator("inbox", "staging_dir", "processed_dir", "failed_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.absolute()

    @property
    def processed(self) -> Path:
        return self.processed_dir or self.inbox / "processed"

    @property
    def failed(self) -> Path:
        return self.failed_dir or self.inbox / "failed"
