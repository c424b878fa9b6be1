"""Prometheus metrics, always on an injected registry (tests get their own).

Names follow `dicomflow_<stage>_<what>`; the stage is part of the name so one
dashboard row per stage reads naturally, and `stage` is not a label to forget.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


def metric_prefix(stage: str) -> str:
    return "dicomflow_" + stage.replace("-", "_")


@dataclass(frozen=True)
class ConsumerMetrics:
    """What every consuming stage exports."""

    messages: Counter
    handler_seconds: Histogram
    lag: Gauge
    dlq: Counter
    retries: Counter

    @classmethod
    def create(cls, stage: str, registry: CollectorRegistry) -> ConsumerMetrics:
        p = metric_prefix(stage)
        return cls(
            messages=Counter(
                f"{p}_messages_total",
                "Messages handled, by outcome (ok, dlq).",
                ["topic", "status"],
                registry=registry,
            ),
            handler_seconds=Histogram(
                f"{p}_handler_seconds",
                "Time to handle one message, retries included.",
                ["topic"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            lag=Gauge(
                f"{p}_consumer_lag",
                "Messages not yet consumed, per partition (high-water mark minus position).",
                ["topic", "partition"],
                registry=registry,
            ),
            dlq=Counter(
                f"{p}_dlq_messages_total",
                "Messages sent to a dead-letter topic.",
                ["topic"],
                registry=registry,
            ),
            retries=Counter(
                f"{p}_retries_total",
                "Handler attempts that failed and were retried.",
                ["topic", "kind"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class ProducerMetrics:
    produced: Counter

    @classmethod
    def create(cls, stage: str, registry: CollectorRegistry) -> ProducerMetrics:
        return cls(
            produced=Counter(
                f"{metric_prefix(stage)}_events_produced_total",
                "Events produced, by topic.",
                ["topic"],
                registry=registry,
            )
        )
