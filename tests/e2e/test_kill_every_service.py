"""kill -9 of every service mid-import: nothing lost, nothing stored twice, every stored byte
what its source holds. Each watcher is killed while its source is delivering a study: an
Orthanc, a PACS (C-GET), a dcm4chee archive and the index-publisher's central index are real
peers beside the import (tests/e2e/kill_sources.py)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import pytest
from discs import dicomdir, disc_tree, iso
from faults import (
    RECEIVER,
    Sender,
    partial_writes,
    receiver_env,
    sources_under,
    task_finished,
    verify_storage,
)
from kill_sources import Feed, Peers, all_indexed, ledger_exact, publications_behind, resends
from test_resilience import counts, handled, handled_more, scanned_at_least
from trees import Expected, build_tree

from libs.tools.dev_broker import free_port
from load_test.dcm4chee_archive import close_archive, open_archive
from load_test.process_stack import Stack
from tests.integration.index_publisher.conftest import make_tls, serve_central
from tests.polling import eventually

# Every service that `dicomflow up` runs here, killed in groups (a pipeline stage with a
# service or two beside it), the groups of a round one after another; each group's running
# check and peer feed are taken just before its kill. The services that boot a worker pool
# (extractor, jpg-converter, iso-watcher) are never in one group. The watchers of a peer come
# last: each waits for its watcher to begin taking a new study (seconds, at its poll interval),
# and the 2,000-file import now completes within those seconds, so the groups judged by the
# import go first, back to back (CI: the storage-writer's group came after the import ended).
KILL_STEPS = [
    ("nas-watcher", "jpg-converter", "storage-writer"),
    ("extractor", "api", RECEIVER),
    ("dedup", "packager", "reconciler"),
    ("indexer", "iso-watcher"),
    ("orthanc-watcher", "index-publisher"),
    ("pacs-watcher", "dcm4chee-watcher"),
]
PEER_SERVICES = ("index-publisher", "pacs-watcher", "dcm4chee-watcher")  # not started alone
KILL_ROUNDS = 2


def kill_env(tmp_path: Path) -> dict[str, str]:
    return {
        **receiver_env(tmp_path, free_port()),
        "ISO_INBOX": str(tmp_path / "inbox"),
        "PACKAGER_PREBUILD": "true",  # the packager builds each study's archive once stable
        "EXTRACTOR_WORKERS": "1",  # each restart boots one parser process, not two
        # A storage-writer killed mid-write leaves a temp file; swept once this old.
        "STORAGE_WRITER_PARTIAL_MAX_AGE_SECONDS": "30",
        "STORAGE_WRITER_PARTIAL_SWEEP_SECONDS": "2",
    }


async def kill_every_service(
    stack: Stack, pool: asyncpg.Pool, task_id: str, discs: list[Path], peers: Peers
) -> dict[str, int]:
    """KILL_ROUNDS rounds of kill -9 + restart of every service; a disc is put in the ISO
    inbox as each round begins, and a watcher of a peer is killed once it has begun taking a
    new study from it. The groups of a round are killed one after another without waiting
    for the previous group to be ready again (the import is faster than six restarts in a
    row); the round ends when every service is ready. The first round begins once the import
    has outcomes, so its kills find work in flight. Returns how many kills of each landed
    mid-import (for a watcher of a peer: mid-delivery of its study)."""
    mid_import: dict[str, int] = {}
    inbox = Path(stack.env["ISO_INBOX"])
    await eventually(partial(import_outcomes, pool, task_id), 120, interval=0.05)
    for round_ in range(KILL_ROUNDS):
        shutil.move(discs[round_], inbox / discs[round_].name)
        for step in KILL_STEPS:
            running = await import_running(pool, task_id)
            for name in step:
                feed = peers.feeds.get(name)
                mid = await feed.in_flight(pool) if feed else running
                mid_import[name] = mid_import.get(name, 0) + mid
            for name in step:
                stack.kill(name, signal.SIGKILL)
            for name in step:
                stack.start(name)
            print(f"round {round_ + 1}: {'+'.join(step)} killed, import running: {running}")
        await stack.wait_ready([n for step in KILL_STEPS for n in step], timeout=300)
    return mid_import


async def import_outcomes(pool: asyncpg.Pool, task_id: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM ingest_files WHERE task_id = $1 AND status <> 'pending'",
            task_id,
        )
    )


async def import_running(pool: asyncpg.Pool, task_id: str) -> bool:
    """From the database: the API may be one of the services being restarted."""
    status = await pool.fetchval("SELECT status FROM import_tasks WHERE id = $1", task_id)
    return status not in ("completed", "failed")


async def settled(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM ingest_files WHERE status = 'pending'")


async def pending_rows(stack: Stack, pool: asyncpg.Pool) -> str:
    rows = await pool.fetch(
        """SELECT source, origin, stage, emitted, now() - updated_at AS age FROM ingest_files
            WHERE status = 'pending' ORDER BY id LIMIT 10"""
    )
    return "\n".join(map(str, rows)) + "\n" + stack.tail("reconciler", 10)


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[Peers]:
    """Orthanc, a PACS, a dcm4chee archive on MariaDB and a central index over HTTPS."""
    tls = make_tls(tmp_path / "tls")
    archive = await open_archive("arc5-mariadb")
    try:
        with serve_central(tls) as central:
            made = Peers.create(tmp_path / "peers", archive, central, tls["ca"])
            try:
                made.orthanc.start()
                made.pacs.start()
                yield made
            finally:
                made.orthanc.stop()
                made.pacs.stop()
    finally:
        await close_archive(archive)


@pytest.fixture
def extra_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """With `peers` (asked for by the test), their four services are configured too."""
    env = kill_env(tmp_path)
    if "peers" in request.fixturenames:
        env.update(request.getfixturevalue("peers").env())
    return env


@dataclass
class Inputs:
    tree: Path
    expected: Expected
    discs: list[Path]
    disc_sources: dict[str, Path]


def build_inputs(root: Path) -> Inputs:
    tree = root / "imports" / "kill-all"
    expected = build_tree(tree, patients=4, series_per_study=2, per_series=250)
    discs, disc_sources = build_kill_discs(root / "discs", KILL_ROUNDS)
    return Inputs(tree, expected, discs, disc_sources)


@pytest.fixture
def inputs(tmp_path: Path) -> Iterator[Future[Inputs]]:
    """Built in a thread while the stack starts (a fixture requested after this one)."""
    with ThreadPoolExecutor(1) as builder:
        yield builder.submit(build_inputs, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.stack_also("jpg-converter", "packager", RECEIVER, *PEER_SERVICES)
async def test_kill_9_of_every_service_twice_during_a_2000_file_import(
    inputs: Future[Inputs], peers: Peers, stack: Stack, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """kill -9 of every service, each twice, while a 2,000-file folder import, a C-STORE
    stream, two ISO discs and studies from Orthanc, a PACS and a dcm4chee archive are under
    way; then exact counts, each instance stored once, every stored object read back and
    compared with its source, and the central index holding every study's final state.

    On local storage only: the gs variant below covers what the backend changes (the
    storage-writer's and the readers' calls to GCS); the other kills do not depend on it."""
    t0 = time.monotonic()
    made = await asyncio.wrap_future(inputs)
    tree, expected, discs, disc_sops = made.tree, made.expected, made.discs, made.disc_sources
    assert expected.files >= 2000
    print(f"\ninputs ready after the stack by {time.monotonic() - t0:.0f}s", flush=True)
    sender = Sender(int(stack.env["RECEIVER_PORT"]), tmp_path / "sent")
    sender.start()
    started = time.monotonic()
    task_id = await stack.start_import(tree)
    try:
        mid_import = await kill_every_service(stack, pool, task_id, discs, peers)
    finally:
        acked = sender.stop()
    killed_for = time.monotonic() - started
    task = await eventually(partial(task_finished, stack, task_id), 240, interval=0.5)
    margin = time.monotonic() - started - killed_for  # after the last round was ready again
    assert task["status"] == "completed", task
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    inbox = Path(stack.env["ISO_INBOX"])
    await eventually(
        lambda: all((inbox / "processed" / d.name).exists() for d in discs), 120,
        what=lambda: stack.tail("iso-watcher"), interval=0.5,
    )  # fmt: skip
    await peers.delivered()
    fed = peers.sources()
    await eventually(
        partial(all_indexed, pool, set(fed)), 120, what=partial(peers_tail, stack), interval=0.5
    )
    await eventually(partial(settled, pool), 180, what=partial(pending_rows, stack, pool))
    sources = {**sources_under(tree), **acked, **disc_sops, **fed}
    instances, counted, conflicts = await counts(pool)
    assert instances == counted == expected.new + len(acked) + len(disc_sops) + len(fed)
    assert conflicts == expected.conflicts
    indexed = {
        r["sop_instance_uid"] for r in await pool.fetch("SELECT sop_instance_uid FROM instances")
    }
    assert set(acked) <= indexed and set(disc_sops) <= indexed and set(fed) <= indexed
    failed = await pool.fetch(
        """SELECT f.source, f.uri, f.stage, f.reason, f.emitted, f.discovered_at, f.updated_at,
                  (SELECT count(*) FROM ingest_files g WHERE g.uri = f.uri) AS same_uri
             FROM ingest_files f WHERE status = 'failed'"""
    )
    assert len(failed) == expected.failed, "only the tree's not-DICOM files fail:\n" + "\n".join(
        f"{r['source']} {r['uri']} {r['stage']}: {r['reason']} (emitted {r['emitted']}, "
        f"{r['same_uri']} rows, {r['discovered_at']:%T.%f}..{r['updated_at']:%T.%f})"
        for r in failed
        if "/bad/" not in r["uri"]
    )
    await check_peers(stack, pool, peers)
    await eventually(
        lambda: not partial_writes(stack), 120, what=lambda: str(partial_writes(stack)[:5])
    )
    check = await verify_storage(stack, pool, sources, sent=set(acked) | peers.sent())
    assert check.instances == instances
    # The packager, killed while building, still serves a whole archive.
    async with stack.client() as c:
        r = await c.head(f"/v1/studies/{expected.study_uids[0]}/archive?format=tar.zst")
    assert r.status_code == 200 and int(r.headers["content-length"]) > 0
    for name in [n for step in KILL_STEPS for n in step]:
        assert stack.procs[name].poll() is None, f"{name} died:\n{stack.tail(name)}"
    # At least one kill of each service lands mid-import (a watcher of a peer: both,
    # mid-delivery); one after the import ended tests only a restart. The second round begins
    # once every service is ready again, by when the import has usually ended.
    assert all(mid_import[n] >= 1 for n in mid_import), mid_import
    assert all(mid_import[n] == KILL_ROUNDS for n in peers.feeds), mid_import
    print(
        f"\nkill -9 x{KILL_ROUNDS} of {len(mid_import)} services ({sum(mid_import.values())}"
        f" of {KILL_ROUNDS * len(mid_import)} mid-import) in {killed_for:.0f}s, the import"
        f" completed {margin:.1f}s after the last round was ready; "
        f"{instances} instances ({len(acked)} by C-STORE, {sender.retries} resends; "
        f"{len(disc_sops)} from discs, {len(fed)} from Orthanc, the PACS and the archive), "
        f"{check.bytes_verified} bytes verified; central index: {resends(peers.central)[0]} "
        "idempotent re-sends"
    )


def peers_tail(stack: Stack) -> str:
    return "\n".join(f"--- {n}\n{stack.tail(n, 10)}" for n in ("orthanc-watcher", *PEER_SERVICES))


async def check_peers(stack: Stack, pool: asyncpg.Pool, peers: Peers) -> None:
    """Each peer's study came in once: one ledger row per instance fed, indexed; each
    archive task complete and exact; the central index got every study's final state, each
    revision applied once and in order (a repeat only as a re-send under the same key)."""
    for name in ("orthanc-watcher", "pacs-watcher", "dcm4chee-watcher"):
        feed = peers.feeds[name]
        assert isinstance(feed, Feed)
        ledger = await ledger_exact(pool, feed)
        assert ledger["indexed"] and set(ledger["others"]) <= {"duplicate"}, (name, ledger)
        print(f"\n{name}: {len(feed.sources)} instances, {ledger['extra']} taken again")
    archive_tasks = await pool.fetch("SELECT id::text FROM import_tasks WHERE kind = 'dcm4chee'")
    new = 0
    for row in archive_tasks:
        task = await eventually(partial(task_finished, stack, row["id"]), 60, interval=0.5)
        assert task["status"] == "completed" and task["counters"]["failed"] == 0, task
        assert task["counters"]["pending"] == 0, task
        new += task["counters"]["new_instances"]
    assert new == len(peers.feeds["dcm4chee-watcher"].sources)
    central = peers.central
    behind: list[str] = []

    async def caught_up() -> bool:
        behind[:] = await publications_behind(pool, central)
        return not behind

    await eventually(
        caught_up, 120, interval=0.5, what=lambda: f"{behind[:5]}\n{stack.tail('index-publisher')}"
    )
    assert resends(central)[1] == [], "a study's revisions applied out of order"
    delivered = await pool.fetch("SELECT study_uid, delivered_revision FROM index_publications")
    revisions = await pool.fetch("SELECT study_uid, revision FROM studies")
    assert {r["study_uid"]: r["delivered_revision"] for r in delivered} == {
        r["study_uid"]: r["revision"] for r in revisions
    }


async def handled_more_once_up(stack: Stack, stage: str, than: float) -> bool:
    """`handled_more`, and False while the (re)started service does not listen yet."""
    try:
        return await handled_more(stack, stage, than)
    except httpx.TransportError:
        return False


def build_kill_discs(work: Path, count: int) -> tuple[list[Path], dict[str, Path]]:
    """`count` ISO images of one small study each; returns them and {SOP UID: source}."""
    images: list[Path] = []
    sources: dict[str, Path] = {}
    for n in range(count):
        tree = work / f"disc{n}"
        sops = disc_tree(tree, [f"Disc^Patient{n}"], per_series=4)
        dicomdir(tree)
        images.append(iso(tree, work / f"kill{n}.iso"))
        sources.update({sop: tree / rel for sop, rel in sops.items()})
    return images, sources


@pytest.mark.parametrize("storage_backend", ["gs"])
async def test_kill_9_of_the_storage_users_on_gcs(
    stack: Stack, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The gs variant: only the services whose work is a GCS call (the storage-writer's
    verified uploads, the jpg-converter's and packager's reads and writes) are killed, each
    twice, the storage-writer with a backlog in hand; the same exact counts and byte checks."""
    tree = stack.root / "imports" / "kill-gcs"
    expected = build_tree(tree, patients=2, per_series=75)  # 310 files
    for name in ("jpg-converter", "packager"):
        stack.start(name)
    await stack.wait_ready(["jpg-converter", "packager"])
    stack.pause("storage-writer")  # let its input pile up
    task_id = await stack.start_import(tree)
    await eventually(partial(scanned_at_least, stack, task_id, expected.files), 60)
    stack.resume("storage-writer")
    mid_import = 0
    before = await handled(stack, "storage-writer")
    # Its first batch takes 200 of the 310; the restarted one's, 100 of what is left.
    stack.env["STORAGE_WRITER_BATCH_SIZE"] = "100"
    for _ in range(2):
        # Killed right after its first batch (the restarted one counts from zero), with the
        # rest of the backlog in hand: it is not waited for before, or it could handle all
        # of it meanwhile.
        await eventually(
            partial(handled_more_once_up, stack, "storage-writer", before), 60,
            what=partial(stack.tail, "storage-writer"), interval=0.02,
        )  # fmt: skip
        mid_import += await task_finished(stack, task_id) is None
        for name in ("storage-writer", "jpg-converter", "packager"):
            stack.kill(name, signal.SIGKILL)
            stack.start(name)
        before = 0
    del stack.env["STORAGE_WRITER_BATCH_SIZE"]
    await stack.wait_ready(["storage-writer", "jpg-converter", "packager"])
    task = await eventually(partial(task_finished, stack, task_id), 180, interval=0.5)
    assert task["status"] == "completed", task
    assert {k: task["counters"][k] for k in expected.counters()} == expected.counters()
    assert mid_import == 2, "each kill should land while the import is under way"
    instances, counted, conflicts = await counts(pool)
    assert instances == counted == expected.new
    assert conflicts == expected.conflicts
    check = await verify_storage(stack, pool, sources_under(tree))
    print(f"\ngs: {instances} instances, {check.bytes_verified} bytes verified")
