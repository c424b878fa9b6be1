"""Settings of the router (env prefix `ROUTER_`). The destinations and rules are in the YAML
file `ROUTER_RULES_FILE` (`services/router/rules.py`); without it the service has nothing to
do and `dicomflow up` does not start it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.contracts.settings import Count, Port, ServiceSettings
from libs.dicom_net.client import DEFAULT_MAX_PDU
from services.router.rules import RoutingConfig, load_rules


class RouterSettings(ServiceSettings):
    """Env prefix `ROUTER_`."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", frozen=True, extra="ignore")

    ops_port: Port = 8120
    database_pool_size: Count = Field(
        default=8,
        description="Connections: 2 per destination (its lock and its queries) and 2 more",
    )
    tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle a `tls: true` destination is verified against"
    )
    tls_cert: Path | None = Field(
        default=None, description="Our PEM certificate, for destinations requiring mutual TLS"
    )
    tls_key: Path | None = None
    rules_file: Path | None = Field(
        default=None, description="YAML file of destinations and rules (docs/configuration.md)"
    )
    calling_ae: str = Field(default="DICOMFLOW", min_length=1, max_length=16)
    send_batch: Count = Field(
        default=100, description="Instances sent per association (per round) to a destination"
    )
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per C-STORE or C-FIND")
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    max_pdu: int = Field(default=DEFAULT_MAX_PDU, ge=16384, le=1 << 30)
    max_attempts: Count = Field(
        default=5, description="Refusals of one instance by a destination before it fails"
    )
    backoff_seconds: float = Field(
        default=5.0, gt=0, description="First wait after a failure (doubles, with jitter)"
    )
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    poll_seconds: float = Field(
        default=1.0, gt=0, description="How often an idle destination's queue is looked at"
    )
    depth_interval_seconds: float = Field(default=5.0, gt=0, description="Queue depth gauges")

    def routing(self) -> RoutingConfig:
        """The rules file, read and validated; ValueError naming the problem."""
        if self.rules_file is None:
            raise ValueError("ROUTER_RULES_FILE is not set: nothing to route")
        config = load_rules(self.rules_file)
        needed = 2 * len(config.destinations) + 2
        if self.database_pool_size < needed:
            raise ValueError(
                f"ROUTER_DATABASE_POOL_SIZE is {self.database_pool_size}: "
                f"{len(config.destinations)} destinations need at least {needed}"
            )
        return config
