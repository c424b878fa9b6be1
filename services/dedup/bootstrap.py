from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import asyncpg

from libs.contracts.events import InstanceExtracted
from libs.db import dedup
from libs.kafka.consumer import BatchRoute
from libs.runtime.service import Runtime
from services.dedup.handlers import ClaimManyFn, handle_extracted_batch


def make_claim_many(pool: asyncpg.Pool) -> ClaimManyFn:
    async def claim_many(events: Sequence[InstanceExtracted]) -> list[dedup.Claim]:
        requests = [
            dedup.ClaimRequest(
                e.header.instance.sop_instance_uid,
                e.hashes.content_sha256,
                e.file.file_id,
                e.header.indexed_digest(),
            )
            for e in events
        ]
        async with pool.acquire() as conn:
            return await dedup.claim_many(conn, requests)

    return claim_many


async def wire(rt: Runtime) -> None:
    pool = await rt.pool()
    handler = partial(handle_extracted_batch, claim_many=make_claim_many(pool))
    await rt.consumer({InstanceExtracted.TOPIC: BatchRoute(InstanceExtracted, handler)})
