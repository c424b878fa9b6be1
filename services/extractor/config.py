import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from libs.contracts.settings import Count, OwnStagingSettings, Port
from libs.dicom.source_file import RootGroups

PathList = Annotated[list[Path], NoDecode]


class ExtractorSettings(OwnStagingSettings):
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
    # The NAS watcher's own variables, read under their names: a file named under its roots is
    # read only if it really is inside them when it is opened (`libs.dicom.source_file`).
    nas_roots: PathList = Field(
        default_factory=lambda: [Path("./var/nas")],
        validation_alias="NAS_ROOTS",
        description="The NAS watcher's watched roots (NAS_ROOTS): files under them are read "
        "only if they really are inside them.",
    )
    nas_import_roots: PathList = Field(
        default_factory=list,
        validation_alias="NAS_IMPORT_ROOTS",
        description="The NAS watcher's import roots (NAS_IMPORT_ROOTS; default: NAS_ROOTS).",
    )

    @field_validator("nas_roots", "nas_import_roots", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value

    def source_roots(self) -> RootGroups:
        """The groups a file must stay inside: the watched roots, the import roots."""
        watched = tuple(str(p.absolute()) for p in self.nas_roots)
        imports = tuple(str(p.absolute()) for p in self.nas_import_roots) or watched
        return (watched, imports)
