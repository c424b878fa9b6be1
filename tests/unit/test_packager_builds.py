"""Archive builds with an in-memory store and listings: contents, single flight, revisions,
verification, determinism and the cache's LRU eviction."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from libs.contracts.events import ArchiveBuilt, Event
from libs.db.archives import ArchiveInstance, ArchiveListing
from libs.storage import instance_key
from libs.storage.memory import MemoryStore
from services.packager.cache import ArchiveCache
from services.packager.packager import ArchiveError, Encoding, Packager

STUDY = "1.2.840.1"
SERIES = ["1.2.840.1.1", "1.2.840.1.2"]


class World:
    """A study in a memory store, its index listing, and a packager over both."""

    def __init__(self, tmp: Path, max_bytes: int = 1 << 30) -> None:
        self.store = MemoryStore()
        self.instances: list[ArchiveInstance] = []
        self.published: list[Event] = []
        self.builds = 0
        self.cache = ArchiveCache(tmp / "cache", max_bytes)
        self.cache.prepare()

        async def listings(study: str, series: str | None) -> ArchiveListing | None:
            rows = [i for i in self.instances if series is None or i.series_uid == series]
            if study != STUDY or not rows:
                return None
            return ArchiveListing(STUDY, "O'Brien^Zoë", datetime(2024, 5, 1).date(), rows)

        async def publish(*events: Event) -> None:
            self.published.extend(events)

        def counted() -> None:
            self.builds += 1

        self.packager = Packager(
            store=self.store,
            cache=self.cache,
            listings=listings,
            publish=publish,
            encoding=Encoding(3, 2),
            on_build=counted,
        )

    def add(self, series: int, number: int | None, data: bytes, desc: str = "CT chest") -> str:
        sop = f"{SERIES[series]}.{len(self.instances) + 1}"
        self.store.objects[instance_key(STUDY, SERIES[series], sop)] = data
        self.instances.append(
            ArchiveInstance(
                SERIES[series],
                series + 1,
                desc,
                sop,
                number,
                len(data),
                hashlib.sha256(data).hexdigest(),
                datetime(2024, 5, 2, tzinfo=UTC),
            )
        )
        return sop


def untar(data: bytes) -> dict[str, bytes]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        return {n: z.read(n) for n in z.namelist()}


async def test_tar_zst_holds_the_instances_and_a_manifest(tmp_path: Path) -> None:
    w = World(tmp_path)
    payloads = {w.add(0, n, os.urandom(3000 + n)): n for n in (1, 2, 10)}
    w.add(1, None, b"DICM" * 5000, desc="../../etc")
    plan = await w.packager.plan(STUDY, None, "tar.zst")
    assert plan is not None
    files = untar((await w.packager.ensure(plan)).read_bytes())
    root = "O_Brien_Zoë_20240501"
    assert set(files) == {f"{root}/manifest.json"} | {m.path for m in plan.members}
    assert f"{root}/1_CT_chest/10.dcm" in files
    assert any(p.startswith(f"{root}/2_etc/") for p in files)
    manifest = json.loads(files[f"{root}/manifest.json"])
    assert len(manifest["files"]) == 4
    for entry in manifest["files"]:
        assert hashlib.sha256(files[entry["path"]]).hexdigest() == entry["sha256"]
        key = instance_key(STUDY, entry["series_uid"], entry["sop_instance_uid"])
        assert files[entry["path"]] == w.store.objects[key]
    assert len(payloads) == 3
    [event] = w.published
    assert isinstance(event, ArchiveBuilt) and event.revision == plan.key
    assert event.instance_count == 4


async def test_zip_and_series_variants(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add(0, 1, b"a" * 100)
    sop = w.add(1, 1, b"b" * 200)
    plan = await w.packager.plan(STUDY, SERIES[1], "zip")
    assert plan is not None
    files = unzip((await w.packager.ensure(plan)).read_bytes())
    assert [m.sop_instance_uid for m in plan.members] == [sop]
    assert files[plan.members[0].path] == b"b" * 200
    assert await w.packager.plan(STUDY, "1.2.3.999", "zip") is None


async def test_concurrent_requests_build_once_and_followers_get_the_same_bytes(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    for n in range(30):
        w.add(n % 2, n, os.urandom(200_000))
    plan = await w.packager.plan(STUDY, None, "tar.zst")
    assert plan is not None

    async def follow() -> bytes:
        return b"".join([c async for c in w.packager.follower(w.packager.start(plan))])

    first, second, *paths = await asyncio.gather(
        follow(), follow(), *(w.packager.ensure(plan) for _ in range(5))
    )
    assert w.builds == 1
    assert len(set(paths)) == 1
    assert first == second == paths[0].read_bytes()
    assert await w.packager.ensure(plan) == paths[0] and w.builds == 1  # cache hit


async def test_a_changed_study_gets_a_new_revision_and_builds_are_deterministic(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.add(0, 1, os.urandom(5000))
    old = await w.packager.plan(STUDY, None, "tar.zst")
    assert old is not None
    old_bytes = (await w.packager.ensure(old)).read_bytes()
    new_sop = w.add(0, 2, os.urandom(5000))
    new = await w.packager.plan(STUDY, None, "tar.zst")
    assert new is not None and new.key != old.key
    files = untar((await w.packager.ensure(new)).read_bytes())
    assert any(new_sop == m.sop_instance_uid for m in new.members)
    assert len(files) == 3
    # Evicted and rebuilt, the old revision has the very same bytes (its ETag stays true).
    w.cache.path(old).unlink()
    w.instances.pop()
    again = await w.packager.plan(STUDY, None, "tar.zst")
    assert again is not None and again.key == old.key
    assert (await w.packager.ensure(again)).read_bytes() == old_bytes


async def test_bytes_that_differ_from_the_index_fail_the_build(tmp_path: Path) -> None:
    w = World(tmp_path)
    sop = w.add(0, 1, b"original")
    w.store.objects[instance_key(STUDY, SERIES[0], sop)] = b"tampered"
    plan = await w.packager.plan(STUDY, None, "tar.zst")
    assert plan is not None
    with pytest.raises(ArchiveError, match="differs from the index"):
        await w.packager.ensure(plan)
    assert [p.name for p in w.cache.root.iterdir()] == [".boot-id"]  # no archive, no partial
    assert w.published == []


async def test_the_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    w = World(tmp_path, max_bytes=1)  # room for the newest only
    w.add(0, 1, os.urandom(4000))
    first = await w.packager.plan(STUDY, None, "tar.zst")
    zipped = await w.packager.plan(STUDY, None, "zip")
    assert first is not None and zipped is not None
    await w.packager.ensure(first)
    await w.packager.ensure(zipped)
    assert w.cache.lookup(first) is None
    assert w.cache.lookup(zipped) is not None


def test_the_cache_is_emptied_after_a_reboot_and_keeps_whole_archives_otherwise(
    tmp_path: Path,
) -> None:
    cache = ArchiveCache(tmp_path / "c", 1 << 30)
    cache.prepare()
    (cache.root / "abc.tar.zst").write_bytes(b"whole")
    (cache.root / "abc.tar.zst.123.partial").write_bytes(b"half")
    cache.prepare()  # a restart in the same boot
    assert sorted(p.name for p in cache.root.iterdir()) == [".boot-id", "abc.tar.zst"]
    (cache.root / ".boot-id").write_text("another boot")
    cache.prepare()
    assert sorted(p.name for p in cache.root.iterdir()) == [".boot-id"]


async def test_a_missing_object_fails_the_build_and_its_followers(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add(0, 1, os.urandom(1000))
    sop = w.add(0, 2, os.urandom(1000))
    del w.store.objects[instance_key(STUDY, SERIES[0], sop)]
    plan = await w.packager.plan(STUDY, None, "tar.zst")
    assert plan is not None
    follower = w.packager.follower(w.packager.start(plan))
    with pytest.raises(ArchiveError, match="archive build failed"):
        async for _ in follower:
            pass
    with pytest.raises(ArchiveError, match="missing from storage"):
        await w.packager.ensure(plan)
