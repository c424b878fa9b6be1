from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class JpgConverterSettings(ServiceSettings):
    """Env prefix `JPG_CONVERTER_`; reads and writes the shared `STORAGE_URL`."""

    model_config = SettingsConfigDict(env_prefix="JPG_CONVERTER_", frozen=True, extra="ignore")

    ops_port: Port = 8111
    concurrency: Count = 2
    workers: Count = Field(default=1, description="Render processes (decode + JPEG encode)")
    memory_limit_mb: int = Field(default=1024, ge=128, description="RLIMIT_AS per render process")
    render_timeout_seconds: float = Field(default=60.0, gt=0)
    thumbnail_size: int = Field(default=256, ge=16, le=2048, description="Longest side, pixels")
    jpeg_quality: int = Field(default=90, ge=1, le=95)
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Scheduling niceness of the converter and its render processes: previews "
        "yield the CPU to ingest while an import runs and take it when it is idle.",
    )
    eager: Literal["series", "all"] = Field(
        default="series",
        description="Render ahead the first image of each series (others on first request, "
        "by the API) or every image.",
    )
