from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings

PathList = Annotated[list[Path], NoDecode]


class NasWatcherSettings(ServiceSettings):
    """Env prefix `NAS_`."""

    model_config = SettingsConfigDict(env_prefix="NAS_", frozen=True, extra="ignore")

    ops_port: Port = 8101
    roots: PathList = Field(
        default_factory=lambda: [Path("./var/nas")],
        description="Folders watched continuously, comma-separated.",
    )
    import_roots: PathList = Field(
        default_factory=list,
        description="Folders an import task may read from (default: the watched roots).",
    )
    scan_interval_seconds: float = Field(default=30.0, gt=0)
    settle_seconds: float = Field(
        default=2.0,
        ge=0,
        description="A file is settled when its size and mtime are the same on two looks "
        "this far apart (a copy keeping timestamps gives a growing file an old mtime).",
    )
    watch: bool = Field(default=True, description="Scan the roots periodically.")
    task_lease_seconds: float = Field(default=60.0, gt=0)
    scan_batch_size: Count = Field(
        default=500, description="Files recorded and emitted per round trip during an import scan"
    )

    @field_validator("roots", "import_roots", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()).absolute() for p in value.split(",") if p.strip()]
        return value

    def allowed_import_roots(self) -> list[Path]:
        return [p.absolute() for p in (self.import_roots or self.roots)]
