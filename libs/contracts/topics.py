"""The one declarative list of topics: created by services at start in development
and by the compose init job in production (`dicomflow topics create`)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.contracts.events import PIPELINE_EVENTS


@dataclass(frozen=True)
class TopicSpec:
    name: str
    retention_ms: int = 7 * 24 * 3600 * 1000
    dlq: bool = True


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


TOPICS: tuple[TopicSpec, ...] = tuple(
    TopicSpec(
        name=event.TOPIC,
        # The public metadata topic is the study history downstream consumers rebuild from.
        retention_ms=-1 if event.TOPIC == "dicom.metadata.v1" else 7 * 24 * 3600 * 1000,
    )
    for event in PIPELINE_EVENTS
)


def all_topic_names() -> list[str]:
    names: list[str] = []
    for spec in TOPICS:
        names.append(spec.name)
        if spec.dlq:
            names.append(dlq_topic(spec.name))
    return names
