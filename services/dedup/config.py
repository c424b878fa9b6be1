from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class DedupSettings(ServiceSettings):
    """Env prefix `DEDUP_`."""

    model_config = SettingsConfigDict(env_prefix="DEDUP_", frozen=True, extra="ignore")

    ops_port: int = 8103
    concurrency: int = 8
    database_pool_size: int = 8
