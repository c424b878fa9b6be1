from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class IndexerSettings(ServiceSettings):
    """Env prefix `INDEXER_`, except `STUDY_STABLE_SECONDS` (shared with other stages)."""

    model_config = SettingsConfigDict(env_prefix="INDEXER_", frozen=True, extra="ignore")

    ops_port: Port = 8105
    concurrency: Count = 4
    database_pool_size: Count = 8
    study_stable_seconds: float = Field(
        default=60.0,
        gt=0,
        validation_alias="STUDY_STABLE_SECONDS",
        description="A study with no new instance for this long is announced stable.",
    )
    stable_check_seconds: float = Field(default=5.0, gt=0)
