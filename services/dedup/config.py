from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class DedupSettings(ServiceSettings):
    """Env prefix `DEDUP_`."""

    model_config = SettingsConfigDict(env_prefix="DEDUP_", frozen=True, extra="ignore")

    ops_port: Port = 8103
    concurrency: Count = 8
    database_pool_size: Count = 8
