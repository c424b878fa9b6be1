from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings

ARCHIVE_SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql"}
ARCHIVE_SCHEMES["mariadb"] = "mysql"

StorageRoots = Annotated[dict[str, Path], NoDecode]


class Dcm4cheeWatcherSettings(ServiceSettings):
    """Env prefix `DCM4CHEE_`. Only useful when `DCM4CHEE_ARCHIVE_URL` is set (required)."""

    model_config = SettingsConfigDict(env_prefix="DCM4CHEE_", frozen=True, extra="ignore")

    ops_port: Port = 8110
    archive_url: str = Field(
        description="The archive's database: postgresql://, mysql:// or mariadb:// (read only)."
    )
    schema_version: Literal["arc5", "dcm4chee2"] = Field(
        default="arc5",
        validation_alias="DCM4CHEE_SCHEMA",
        description="arc5: dcm4chee-arc-light 5.x; dcm4chee2: the legacy 2.x schema (MySQL, "
        "MariaDB or PostgreSQL).",
    )
    mode: Literal["metadata", "full"] = Field(
        default="metadata",
        description="metadata: index study metadata only; full: feed each file to the pipeline.",
    )
    name: str = Field(
        default="dcm4chee",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Names this archive: the watermark's key and part of ledger URIs.",
    )
    storage_roots: StorageRoots = Field(
        default_factory=dict,
        description="key=/local/dir,...: storage_id (5.x) or filesystem dirpath (2.x) -> folder.",
    )
    poll_interval_seconds: float = Field(default=30.0, gt=0)
    settle_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Studies changed more recently (archive clock) wait for the next round.",
    )
    study_batch_size: Count = Field(default=50, description="Studies read per round trip.")
    archive_pool_size: Count = Field(default=2, description="Connections to the archive.")
    deletion_check_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often a batch of the studies taken from the archive is checked "
        "against it; a study it no longer has is marked deleted at the source in the index.",
    )
    deletion_batch_size: Count = Field(
        default=1000, description="Studies checked per deletion check."
    )
    # The archive's DICOM side: full mode fetches the files it cannot read by C-MOVE.
    dicom_host: str = Field(
        default="",
        description="The archive's DICOM host; set (full mode): unreachable files are "
        "fetched by C-MOVE to our receiver. Empty: they fail with the reason.",
    )
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    dicom_ae_title: str = Field(default="DCM4CHEE", min_length=1, max_length=16)
    calling_ae: str = Field(default="DICOMFLOW", min_length=1, max_length=16)
    move_destination: str = Field(
        default="DICOMFLOW",
        min_length=1,
        max_length=16,
        description="Our receiver's AE title, as the archive knows it (its host and port).",
    )
    dicom_timeout_seconds: float = Field(default=300.0, gt=0, description="Per DICOM call.")
    move_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often instances to fetch are looked for."
    )
    move_study_batch: Count = Field(default=10, description="Studies fetched per round.")
    move_max_attempts: Count = Field(
        default=5,
        description="Refused C-MOVEs (not an archive that is away, which is waited for) "
        "before its instances fail.",
    )
    move_backoff_seconds: float = Field(
        default=30.0, gt=0, description="Wait after a failed attempt; doubles."
    )
    move_max_backoff_seconds: float = Field(default=900.0, gt=0)
    move_link_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A moved instance none of whose copies reached the index by then fails.",
    )

    @field_validator("storage_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        roots: dict[str, Path] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            key, sep, folder = item.rpartition("=")
            if not sep or not key.strip() or not folder.strip():
                raise ValueError(f"expected key=/folder, got {item!r}")
            roots[key.strip()] = Path(folder.strip()).absolute()
        return roots

    @model_validator(mode="after")
    def _archive(self) -> "Dcm4cheeWatcherSettings":
        if self.archive_dialect() is None:
            raise ValueError("DCM4CHEE_ARCHIVE_URL: use postgresql://, mysql:// or mariadb://")
        if self.mode == "full" and not self.storage_roots and not self.dicom_host:
            raise ValueError(
                "DCM4CHEE_MODE=full needs DCM4CHEE_STORAGE_ROOTS (key=/folder,...) "
                "or DCM4CHEE_DICOM_HOST (every file fetched by C-MOVE)"
            )
        if self.dicom_host and self.mode != "full":
            raise ValueError("DCM4CHEE_DICOM_HOST is for DCM4CHEE_MODE=full (files fetched)")
        return self

    def retrieves(self) -> bool:
        """Unreachable files are fetched by C-MOVE."""
        return self.mode == "full" and bool(self.dicom_host)

    def archive_dialect(self) -> str | None:
        return ARCHIVE_SCHEMES.get(urlsplit(self.archive_url).scheme)
