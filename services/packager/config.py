"""Packager settings (env prefix `PACKAGER_`). Its HTTP port (`PACKAGER_OPS_PORT`) serves the
archive downloads and the ops routes (/health /ready /metrics) together."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Port, ServiceSettings

GIB = 1 << 30


class PackagerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PACKAGER_", frozen=True, extra="ignore")

    ops_port: Port = 8107
    cache_dir: Path = Field(
        default=Path("./var/archives"),
        validation_alias=AliasChoices("PACKAGER_CACHE_DIR", "CACHE_DIR"),
        description="Where built archives are kept (one file per study revision and format)",
    )
    cache_max_bytes: int = Field(
        default=50 * GIB, ge=0, description="Least recently used archives go beyond this"
    )
    zstd_level: int = Field(default=3, ge=1, le=22, description="zstd compression level")
    zstd_threads: int = Field(
        default=-1, ge=-1, description="zstd worker threads; -1 = one per CPU, 0 = none"
    )
    prebuild: bool = Field(
        default=False, description="Build a study's archive when dicom.metadata.v1 says stable"
    )
