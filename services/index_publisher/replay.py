"""The ops endpoint that replays `dicom.metadata.v1.dlq` to the publisher (once the central
index accepts again): the generic DLQ replay of `libs/kafka/dlq.py` behind an API key with
the `imports` permission (role ops or admin), audited like every other endpoint."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from libs.contracts.events import StudyMetadata
from libs.http.auth import Authenticator, Caller
from libs.kafka import dlq
from libs.kafka.connection import Kafka
from libs.kafka.producer import Producer


class ReplayOut(BaseModel):
    dry_run: bool
    replayed: list[str]  # positions (partition:offset) republished, or that would be
    passed_over: int
    unreadable: int


def replay_router(pool: asyncpg.Pool, bootstrap_servers: Kafka, producer: Producer) -> APIRouter:
    router = APIRouter(tags=["operations"])
    replayer = Depends(Authenticator(pool).require("imports", "dlq.replay"))

    @router.post("/ops/dlq/replay", response_model=ReplayOut)
    async def replay_dead_letters(
        dry_run: Annotated[bool, Query(description="List what would be replayed")] = False,
        error_type: Annotated[str | None, Query(description="e.g. ReceiverRejected")] = None,
        pattern: Annotated[str | None, Query(description="regex searched in the error")] = None,
        since: Annotated[datetime | None, Query(description="failed at or after")] = None,
        caller: Caller = replayer,
    ) -> ReplayOut:
        """Republish the study revisions in `dicom.metadata.v1.dlq` that match the filters
        (all by default) to `dicom.metadata.v1`; letters passed over are not offered again
        to this replay. A revision older than the one the receiver has is skipped as stale."""
        flt = dlq.LetterFilter(error_type=error_type, pattern=pattern, since=since)
        report = await dlq.replay(
            bootstrap_servers, StudyMetadata.TOPIC, producer, flt, dry_run=dry_run
        )
        caller.saw(len(report.replayed))
        return ReplayOut(
            dry_run=dry_run,
            replayed=[item.position for item in report.replayed],
            passed_over=report.passed_over,
            unreadable=report.unreadable,
        )

    return router
