"""The sender's verdicts with in-memory ports: a refusal counts against the instance, an
outage or 'out of resources' against nobody, and the give-up after max_attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from libs.db.routing import QueueItem
from libs.dicom_net.errors import ConnectionFailed, FailureStatus
from libs.dicom_net.models import Match, Query
from services.router.metrics import RouterMetrics
from services.router.rules import Destination
from services.router.sender import Sender


def item(uid: str) -> QueueItem:
    return QueueItem("pacs", uid, "1.2", "1.2.1", "1.2.840.10008.5.1.4.1.1.2",
                     "1.2.840.10008.1.2.1", "file:///x", "all", f"corr-{uid}", 0, None)  # fmt: skip


class Routes:
    def __init__(self, uids: list[str]) -> None:
        self.rows = {u: {"state": "queued", "attempts": 0, "error": None} for u in uids}

    async def in_doubt(self, destination: str) -> list[QueueItem]:
        return [self._q(u) for u, r in self.rows.items() if r["state"] == "sending"]

    async def due(self, destination: str, limit: int) -> list[QueueItem]:
        return [self._q(u) for u, r in self.rows.items() if r["state"] == "queued"][:limit]

    async def next_due_in(self, destination: str) -> float | None:
        return 0.0 if any(r["state"] == "queued" for r in self.rows.values()) else None

    def _q(self, uid: str) -> QueueItem:
        base = item(uid)
        return QueueItem(**{**vars(base), "attempts": self.rows[uid]["attempts"]})

    async def sending(self, i: QueueItem) -> None:
        self.rows[i.sop_instance_uid]["state"] = "sending"

    async def sent(self, i: QueueItem) -> None:
        self.rows[i.sop_instance_uid]["state"] = "sent"

    async def requeue(
        self, i: QueueItem, *, delay_seconds: float, error: str | None, attempt: bool
    ) -> None:
        row = self.rows[i.sop_instance_uid]
        row.update(state="queued", attempts=row["attempts"] + int(attempt), error=error)

    async def failed(self, i: QueueItem, error: str) -> None:
        row = self.rows[i.sop_instance_uid]
        row.update(state="failed", attempts=row["attempts"] + 1, error=error)


class Session:
    def __init__(self, verdicts: dict[str, Exception]) -> None:
        self.verdicts = verdicts

    async def send(self, path: Path, sop_class: str, syntax: str) -> int:
        uid = path.name
        if uid in self.verdicts:
            raise self.verdicts[uid]
        return 0


class Client:
    def __init__(self, verdicts: dict[str, Exception], *, down: bool = False) -> None:
        self.verdicts = verdicts
        self.down = down

    @asynccontextmanager
    async def storing(self, contexts: Sequence[tuple[str, str]]) -> AsyncIterator[Any]:
        if self.down:
            raise ConnectionFailed("cannot reach PACS")
        yield Session(self.verdicts)

    async def find(self, query: Query, *, time_limit: float | None = None) -> list[Match]:
        return []


@asynccontextmanager
async def files(i: QueueItem) -> AsyncIterator[Path]:
    yield Path(i.sop_instance_uid)


def sender(routes: Routes, client: Client) -> tuple[Sender, RouterMetrics]:
    metrics = RouterMetrics.create("router", CollectorRegistry())
    s = Sender(
        Destination(name="pacs", ae_title="PACS", host="h", port=104),
        routes=routes,
        client=client,  # type: ignore[arg-type]
        files=files,
        metrics=metrics,
        stopping=asyncio.Event(),
        batch=10,
        max_attempts=3,
        backoff_seconds=0.01,
        max_backoff_seconds=0.01,
        poll_seconds=0.01,
    )
    return s, metrics


async def rounds(s: Sender, n: int) -> None:
    for _ in range(n):
        s._down_until = 0.0
        await s.round()


async def test_a_refused_instance_is_retried_then_failed_the_others_sent() -> None:
    routes = Routes(["1", "2", "3"])
    s, metrics = sender(routes, Client({"2": FailureStatus("C-STORE", 0xA900)}))
    await rounds(s, 4)
    assert {u: r["state"] for u, r in routes.rows.items()} == {
        "1": "sent",
        "2": "failed",
        "3": "sent",
    }
    assert routes.rows["2"]["attempts"] == 3
    assert "0xA900" in str(routes.rows["2"]["error"]) and "after 3 attempts" in str(
        routes.rows["2"]["error"]
    )
    assert metrics.refused.labels("pacs", "0xA900")._value.get() == 2
    assert metrics.failed.labels("pacs", "refused")._value.get() == 1


async def test_out_of_resources_and_an_unreachable_peer_count_against_nobody() -> None:
    routes = Routes(["1", "2"])
    full, _ = sender(routes, Client({"1": FailureStatus("C-STORE", 0xA700)}))
    wait = await full.round()
    assert wait is not None and wait.seconds > 0
    assert routes.rows["1"] == {
        "state": "queued",
        "attempts": 0,
        "error": routes.rows["1"]["error"],
    }
    assert routes.rows["2"]["state"] == "queued"  # the round stopped at the full destination

    down, metrics = sender(routes, Client({}, down=True))
    for _ in range(5):
        down._down_until = 0.0
        await down.round()
    assert [r["attempts"] for r in routes.rows.values()] == [0, 0]
    assert metrics.destination_up.labels("pacs")._value.get() == 0

    back, metrics = sender(routes, Client({}))
    await rounds(back, 1)
    assert [r["state"] for r in routes.rows.values()] == ["sent", "sent"]
