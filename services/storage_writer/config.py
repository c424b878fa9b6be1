from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class StorageWriterSettings(ServiceSettings):
    """Env prefix `STORAGE_WRITER_`; the destination is the shared `STORAGE_URL`."""

    model_config = SettingsConfigDict(env_prefix="STORAGE_WRITER_", frozen=True, extra="ignore")

    ops_port: Port = 8104
    concurrency: Count = 16
    partial_max_age_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Local storage: a temp file not written to for this long was left by a "
        "writer that died mid-write, and is removed (no write in progress is ever that old).",
    )
    partial_sweep_seconds: float = Field(
        default=300.0, gt=0, description="Local storage: how often such leftovers are looked for."
    )
