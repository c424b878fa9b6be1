from __future__ import annotations

from functools import partial

import asyncpg

from libs.contracts.events import InstanceExtracted
from libs.db import dedup
from libs.kafka.consumer import Route
from libs.runtime.service import Runtime
from services.dedup.handlers import ClaimFn, handle_extracted


def make_claim(pool: asyncpg.Pool) -> ClaimFn:
    async def claim(event: InstanceExtracted) -> dedup.Claim:
        async with pool.acquire() as conn:
            return await dedup.claim(
                conn,
                sop_instance_uid=event.header.instance.sop_instance_uid,
                content_sha256=event.hashes.content_sha256,
                file_id=event.file.file_id,
            )

    return claim


async def wire(rt: Runtime) -> None:
    pool = await rt.pool()
    handler = partial(handle_extracted, claim=make_claim(pool))
    await rt.consumer({InstanceExtracted.TOPIC: Route(InstanceExtracted, handler)})
