from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class StorageWriterSettings(ServiceSettings):
    """Env prefix `STORAGE_WRITER_`; the destination is the shared `STORAGE_URL`."""

    model_config = SettingsConfigDict(env_prefix="STORAGE_WRITER_", frozen=True, extra="ignore")

    ops_port: Port = 8104
    concurrency: Count = 16
