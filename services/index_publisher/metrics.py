"""The publisher's own metrics, next to the consumer metrics every stage exports."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from libs.runtime.metrics import LATENCY_BUCKETS, metric_prefix


@dataclass(frozen=True)
class PublisherMetrics:
    attempts: Counter
    deliveries: Counter
    request_seconds: Histogram
    receiver_up: Gauge

    @classmethod
    def create(cls, stage: str, registry: CollectorRegistry) -> PublisherMetrics:
        p = metric_prefix(stage)
        return cls(
            attempts=Counter(
                f"{p}_attempts_total",
                "HTTP attempts, by answer (2xx, 4xx, 5xx, no_answer).",
                ["answer"],
                registry=registry,
            ),
            deliveries=Counter(
                f"{p}_deliveries_total",
                "Study revisions, by outcome (delivered, rejected, gave_up).",
                ["outcome"],
                registry=registry,
            ),
            request_seconds=Histogram(
                f"{p}_request_seconds",
                "Time of one HTTP attempt.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            receiver_up=Gauge(
                f"{p}_receiver_up",
                "1 while the central index accepts deliveries, 0 during an outage.",
                registry=registry,
            ),
        )
