"""The Orthanc watcher's rounds with in-memory ports: the cursor moves with the ledger rows,
an instance is taken in once however often it is announced, and stored instances are deleted
from Orthanc only when asked (never a conflict's)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from libs.contracts.events import Event, FileDiscovered
from libs.db.ledger import LedgerRow
from libs.db.orthanc import Finished, StagedInstance
from services.orthanc_watcher.client import Change, ChangesPage, Level, ResourceNotFound
from services.orthanc_watcher.rounds import (
    clean_up,
    follow_once,
    ingest_resource,
    staged_path,
)

I1, I2, I3 = (f"{n:08x}-00000000-00000000-00000000-00000000" for n in (1, 2, 3))
STUDY = "5" * 8 + "-55555555" * 4


class FakeOrthanc:
    url = "http://orthanc.test"

    def __init__(self, changes: list[Change]) -> None:
        self._changes = changes
        self.files = {I1: b"one", I2: b"two!", I3: b"three"}
        self.deleted: list[str] = []

    async def changes(self, since: int, limit: int) -> ChangesPage:
        page = [c for c in self._changes if c.seq > since][:limit]
        last = page[-1].seq if page else since
        return ChangesPage(page, last, done=last == self._changes[-1].seq)

    async def instances_of(self, level: Level, resource_id: str) -> list[str]:
        if resource_id != STUDY:
            raise ResourceNotFound(resource_id)
        return [I1, I2, I3]

    async def download(self, instance_id: str, target: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.files[instance_id])
        return len(self.files[instance_id])

    async def delete(self, instance_id: str) -> None:
        self.deleted.append(instance_id)


class MemoryStore:
    def __init__(self) -> None:
        self.last: int | None = None
        self.rows: dict[str, LedgerRow] = {}
        self.status: dict[str, str] = {}
        self.cleaned: set[str] = set()

    async def cursor(self) -> int | None:
        return self.last

    async def unknown(self, instance_ids: Sequence[str]) -> list[str]:
        return [i for i in dict.fromkeys(instance_ids) if i not in self.rows]

    async def record(
        self, staged: Sequence[StagedInstance], last_seq: int | None = None
    ) -> list[LedgerRow]:
        out = []
        for s in staged:
            if s.instance_id in self.rows:
                continue
            f = s.file
            row = LedgerRow(len(self.rows) + 1, f.source, f.uri, f.origin, f.size, "c", None)
            self.rows[s.instance_id] = row
            self.status[s.instance_id] = "pending"
            out.append(row)
        if last_seq is not None:
            self.last = last_seq
        return out

    async def finished(self) -> list[Finished]:
        return [
            Finished(i, r.uri.removeprefix("file://"), self.status[i])
            for i, r in self.rows.items()
            if i not in self.cleaned and self.status[i] in ("indexed", "duplicate", "conflict")
        ]

    async def mark_cleaned(self, instance_ids: Sequence[str]) -> None:
        self.cleaned.update(instance_ids)


def feed() -> list[Change]:
    return [
        Change(1, "NewInstance", "Instance", I1),
        Change(2, "NewSeries", "Series", "x"),
        Change(3, "NewInstance", "Instance", I2),
        Change(4, "StableStudy", "Study", STUDY),
        Change(5, "StableSeries", "Series", "x"),
    ]


async def test_feed_is_followed_once_and_the_cursor_moves_with_the_rows(tmp_path: Path) -> None:
    orthanc, store, sent = FakeOrthanc(feed()), MemoryStore(), []

    async def publish(events: Sequence[Event]) -> None:
        sent.extend(events)

    ports = {"orthanc": orthanc, "store": store, "publish": publish, "staging": tmp_path}
    assert await follow_once(**ports, limit=2) == (1, False)  # type: ignore[arg-type]
    assert store.last == 2
    assert await follow_once(**ports, limit=2) == (2, False)  # type: ignore[arg-type]
    assert await follow_once(**ports, limit=2) == (0, True)  # type: ignore[arg-type]
    assert store.last == 5
    assert await follow_once(**ports, limit=2) == (0, True)  # type: ignore[arg-type]
    # The webhook for the same study adds nothing.
    assert await ingest_resource("Study", STUDY, **ports) == 0  # type: ignore[arg-type]
    assert await ingest_resource("Study", "f" * 8 + "-ffffffff" * 4, **ports) == 0  # type: ignore[arg-type]
    assert [e.file.size for e in sent if isinstance(e, FileDiscovered)] == [3, 4, 5]
    assert all(e.source == "orthanc" for e in sent)
    assert staged_path(tmp_path, I2).read_bytes() == b"two!"


@pytest.mark.parametrize("delete", [False, True])
async def test_clean_up_removes_stored_copies_only(tmp_path: Path, delete: bool) -> None:
    orthanc, store = FakeOrthanc(feed()), MemoryStore()

    async def publish(events: Sequence[Event]) -> None:
        pass

    await ingest_resource(
        "Study", STUDY, orthanc=orthanc, store=store, publish=publish, staging=tmp_path
    )
    store.status.update({I1: "indexed", I2: "failed", I3: "conflict"})
    assert await clean_up(orthanc=orthanc, store=store, delete_from_orthanc=delete) == 2
    assert not staged_path(tmp_path, I1).exists()
    assert not staged_path(tmp_path, I3).exists()
    assert orthanc.deleted == ([I1] if delete else [])  # a conflict stays in Orthanc


def test_only_orthanc_ids_become_paths(tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "ABCDEF01-00000000-00000000-00000000-00000000", I1 + "/x"):
        with pytest.raises(ValueError):
            staged_path(tmp_path, bad)
