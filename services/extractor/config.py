import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class ExtractorSettings(ServiceSettings):
    """Env prefix `EXTRACTOR_`."""

    model_config = SettingsConfigDict(env_prefix="EXTRACTOR_", frozen=True, extra="ignore")

    ops_port: Port = 8102
    workers: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        description="Parser processes (header parse and hashing run outside the event loop).",
    )
    concurrency: Count = 8
    memory_limit_mb: int = Field(default=1024, ge=64, description="Address-space cap per parser")
    parse_timeout_seconds: float = Field(default=30.0, gt=0)
    overlap_batches: int = Field(
        default=2,
        ge=1,
        le=4,
        description="Batches in flight: the next batch's files are parsed while the one before "
        "is announced and committed, so the parser processes never wait for a round trip.",
    )
    zero_hostile_preamble: bool = Field(
        default=False,
        description="Store files whose preamble is neither zeros nor a TIFF header with the "
        "preamble zeroed (recorded in instances.modifications) instead of refusing them.",
    )
    receiver_staging_dir: Path | None = Field(
        default=None,
        validation_alias="RECEIVER_STAGING_DIR",
        description="The DICOM receiver's staging folder (the receiver's own setting, read "
        "here too): its files are closed before they are announced, so their stamp needs no "
        "2 s of rest and the storage-writer copies them without hashing again (ADR 0031).",
    )
