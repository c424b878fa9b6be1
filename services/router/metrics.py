"""The router's own metrics, next to the consumer metrics every stage exports."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from libs.runtime.metrics import LATENCY_BUCKETS, metric_prefix


@dataclass(frozen=True)
class RouterMetrics:
    sent: Counter
    failed: Counter
    refused: Counter
    in_doubt: Counter
    queue: Gauge
    destination_up: Gauge
    store_seconds: Histogram

    @classmethod
    def create(cls, stage: str, registry: CollectorRegistry) -> RouterMetrics:
        p = metric_prefix(stage)
        return cls(
            sent=Counter(
                f"{p}_sent_total",
                "Instances a destination accepted (C-STORE success or warning).",
                ["destination"],
                registry=registry,
            ),
            failed=Counter(
                f"{p}_failed_total",
                "Instances given up for a destination (state failed), by reason kind.",
                ["destination", "reason"],
                registry=registry,
            ),
            refused=Counter(
                f"{p}_refused_total",
                "Refusals of an instance by a destination, retried later (by DIMSE status).",
                ["destination", "reason"],
                registry=registry,
            ),
            in_doubt=Counter(
                f"{p}_in_doubt_total",
                "Instances found 'sending' after a crash, by how they were settled "
                "(found: at the destination, not sent again; resent).",
                ["destination", "resolution"],
                registry=registry,
            ),
            queue=Gauge(
                f"{p}_queue",
                "Instances waiting per destination and state (queued, sending, failed).",
                ["destination", "state"],
                registry=registry,
            ),
            destination_up=Gauge(
                f"{p}_destination_up",
                "1 while the destination accepts associations, 0 while it is backed off.",
                ["destination"],
                registry=registry,
            ),
            store_seconds=Histogram(
                f"{p}_store_seconds",
                "Time of one C-STORE.",
                ["destination"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
