"""Prometheus metrics, always on an injected registry (tests get their own).

Names follow `dicomflow_<stage>_<what>`; the stage is part of the name so one
dashboard row per stage reads naturally, and `stage` is not a label to forget.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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

    def init_topic(self, topic: str) -> None:
        """Export a topic's series at zero from the start: rates, dashboards and alerts see
        the stage before its first message (and its first dead letter)."""
        for status in ("ok", "dlq"):
            self.messages.labels(topic, status)
        self.handler_seconds.labels(topic)
        self.dlq.labels(topic)
        for kind in ("error", "unreachable"):
            self.retries.labels(topic, kind)


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


@dataclass(frozen=True)
class StorageMetrics:
    """New objects written to canonical storage (a redelivered identical copy is not new)."""

    objects: Counter
    bytes: Counter

    @classmethod
    def create(cls, stage: str, registry: CollectorRegistry) -> StorageMetrics:
        p = metric_prefix(stage)
        return cls(
            objects=Counter(
                f"{p}_objects_stored_total", "Objects written to storage.", registry=registry
            ),
            bytes=Counter(
                f"{p}_bytes_stored_total", "Bytes written to storage.", registry=registry
            ),
        )


OUTCOMES = ("indexed", "duplicate", "conflict")


def end_to_end_histogram(stage: str, registry: CollectorRegistry) -> Histogram:
    """Seconds from a file's discovery (its ledger row) to its final outcome, recorded once
    per file by the stage that records the outcome."""
    histogram = Histogram(
        f"{metric_prefix(stage)}_end_to_end_seconds",
        "Seconds from discovery to the file's final outcome (indexed, duplicate, conflict).",
        ["outcome"],
        buckets=E2E_BUCKETS,
        registry=registry,
    )
    for outcome in OUTCOMES:
        histogram.labels(outcome)
    return histogram


def redelivered_counter(stage: str, registry: CollectorRegistry) -> Counter:
    return Counter(
        f"{metric_prefix(stage)}_redelivered_skipped_total",
        "Events delivered again after their file reached an outcome and its staged copy was "
        "removed: skipped, not dead-lettered.",
        registry=registry,
    )


TASK_STATES = ("pending", "running", "paused", "cancelling", "cancelled", "completed", "failed")


def import_tasks_gauge(stage: str, registry: CollectorRegistry) -> Gauge:
    gauge = Gauge(
        f"{metric_prefix(stage)}_import_tasks",
        "Import tasks in the database, by state (every replica reports the same: use max).",
        ["status"],
        registry=registry,
    )
    for state in TASK_STATES:
        gauge.labels(state).set(0)
    return gauge


class DiskCollector(Collector):
    """Free and total bytes of the volumes a service writes to, read at scrape time.
    Not stage-prefixed: one alert covers every service's volumes (`job` tells them apart)."""

    def __init__(self) -> None:
        self.volumes: dict[str, Path] = {}

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "dicomflow_disk_free_bytes", "Bytes free on a volume.", labels=["volume", "path"]
        )
        size = GaugeMetricFamily(
            "dicomflow_disk_size_bytes", "Size of a volume in bytes.", labels=["volume", "path"]
        )
        for volume, path in self.volumes.items():
            try:
                usage = shutil.disk_usage(path)
            except OSError:
                continue  # not created yet: nothing to report, and `absent` is not "full"
            free.add_metric([volume, str(path)], usage.free)
            size.add_metric([volume, str(path)], usage.total)
        yield free
        yield size
