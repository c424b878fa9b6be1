from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, OwnStagingSettings, Port


class StorageWriterSettings(OwnStagingSettings):
    """Env prefix `STORAGE_WRITER_`; the destination is the shared `STORAGE_URL`."""

    model_config = SettingsConfigDict(env_prefix="STORAGE_WRITER_", frozen=True, extra="ignore")

    ops_port: Port = 8104
    concurrency: Count = 16
    overlap_batches: int = Field(
        default=2,
        ge=1,
        le=4,
        description="Batches in flight: the next batch's copies are made while the one before "
        "is flushed, named, announced and committed (commits stay in order).",
    )
    direct_io: bool = Field(
        default=False,
        description="Local storage: write copies with O_DIRECT (past the page cache), four at a "
        "time, instead of copy_file_range through the page cache (ADR 0032).",
    )
    partial_max_age_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Local storage: a temp file not written to for this long was left by a "
        "writer that died mid-write, and is removed (no write in progress is ever that old).",
    )
    partial_sweep_seconds: float = Field(
        default=300.0, gt=0, description="Local storage: how often such leftovers are looked for."
    )
