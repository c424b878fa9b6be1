from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings


class ReconcilerSettings(ServiceSettings):
    """Env prefix `RECONCILER_`."""

    model_config = SettingsConfigDict(env_prefix="RECONCILER_", frozen=True, extra="ignore")

    ops_port: Port = 8106
    interval_seconds: float = Field(default=10.0, gt=0)
    idle_seconds: float = Field(
        default=60.0,
        gt=0,
        description="No file reached an outcome for this long: the pipeline is idle.",
    )
    stale_seconds: float = Field(
        default=120.0, gt=0, description="A pending file not (re-)emitted for this long is stale."
    )
    reemit_batch_size: Count = Field(default=1000, description="Files re-emitted per round trip")
