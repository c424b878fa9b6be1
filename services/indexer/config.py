from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class IndexerSettings(ServiceSettings):
    """Env prefix `INDEXER_`, except `STUDY_STABLE_SECONDS` (shared with other stages)."""

    model_config = SettingsConfigDict(env_prefix="INDEXER_", frozen=True, extra="ignore")

    ops_port: int = 8105
    concurrency: int = 4
    database_pool_size: int = 8
    study_stable_seconds: float = Field(
        default=60.0,
        gt=0,
        validation_alias="STUDY_STABLE_SECONDS",
        description="A study with no new instance for this long is announced stable.",
    )
    stable_check_seconds: float = Field(default=5.0, gt=0)
