"""Routing in the stack: imported instances forwarded by the router to DCMTK's storescp (CT
only) and to Orthanc (everything). Orthanc is stopped mid-way and the router restarted while
Orthanc's queue waits: storescp is not held up, and in the end each destination holds each
instance it was routed exactly once. Then kill -9 of the router mid-send: what it left in
doubt is settled (looked up at Orthanc, sent again to storescp) and the rest sent."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import pydicom
import pytest
import yaml

from load_test.dimse import StoreSCP
from load_test.peers import Orthanc
from load_test.process_stack import Stack
from tests.polling import eventually

ROUTER = "router"
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture
def destinations(tmp_path: Path) -> Iterator[tuple[StoreSCP, Orthanc]]:
    scp = StoreSCP(tmp_path / "scp-received", unique_names=True)  # a file per C-STORE
    orthanc = Orthanc(root=tmp_path / "orthanc", extra={"DicomAlwaysAllowFind": True})
    scp.start()
    orthanc.start()
    yield scp, orthanc
    scp.stop()
    orthanc.stop()


@pytest.fixture
def extra_env(tmp_path: Path, destinations: tuple[StoreSCP, Orthanc]) -> dict[str, str]:
    scp, orthanc = destinations
    rules = {
        "destinations": [
            {"name": "scp", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port},
            {
                "name": "pacs",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "verify": "c-find",
            },
        ],
        "rules": [
            {"name": "ct-to-scp", "match": {"modality": "CT"}, "to": ["scp"]},
            {"name": "all-to-pacs", "to": ["pacs"]},
        ],
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return {
        "ROUTER_RULES_FILE": str(path),
        "ROUTER_BACKOFF_SECONDS": "0.2",
        "ROUTER_MAX_BACKOFF_SECONDS": "1",
        "ROUTER_POLL_SECONDS": "0.2",
        "ROUTER_DEPTH_INTERVAL_SECONDS": "0.5",
        "ROUTER_CONNECT_TIMEOUT_SECONDS": "2",
    }


def received(folder: Path) -> list[str]:
    """SOP Instance UIDs of the files storescp wrote, one per C-STORE it answered."""
    return sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.iterdir()
        if p.is_file()
    )


def at_orthanc(orthanc: Orthanc) -> list[str]:
    """SOP Instance UIDs Orthanc holds, in one request (a poll that asks per instance loads
    Orthanc and the test as much as the router)."""
    r = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Instance", "Query": {}, "Expand": True},
        auth=orthanc.auth,
        timeout=10,
    )
    r.raise_for_status()
    return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in r.json())


async def router_metric(stack: Stack, line_start: str) -> float | None:
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"http://127.0.0.1:{stack.ports[ROUTER]}/metrics")).text
    for line in body.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def uids(pool: asyncpg.Pool, modality: str | None = None) -> list[str]:
    rows = await pool.fetch(
        """SELECT i.sop_instance_uid FROM instances i JOIN series s USING (series_uid)
            WHERE $1::text IS NULL OR s.modality = $1 ORDER BY 1""",
        modality,
    )
    return [r["sop_instance_uid"] for r in rows]


async def start_import(stack: Stack, name: str, per_series: int) -> str:
    """An import of one study: a CT and an MR series of `per_series` instances each."""
    from trees import build_tree

    tree = stack.root / "imports" / name
    build_tree(tree, patients=1, series_per_study=2, per_series=per_series, extras=False)
    return await stack.start_import(tree)


async def import_tree(stack: Stack, name: str) -> None:
    task_id = await start_import(stack, name, per_series=4)
    assert (await stack.wait_task(task_id))["status"] == "completed"


async def test_each_instance_reaches_each_destination_once_through_an_outage_and_a_restart(
    stack: Stack, pool: asyncpg.Pool, destinations: tuple[StoreSCP, Orthanc]
) -> None:
    scp, orthanc = destinations
    log = partial(stack.tail, ROUTER, 30)

    await import_tree(stack, "first")  # 4 CT + 4 MR
    ct = await uids(pool, "CT")
    assert len(ct) == 4
    await eventually(lambda: received(scp.folder) == ct, 60, what=log)
    await eventually(lambda: len(at_orthanc(orthanc)) == 8, 60, what=log)

    orthanc.stop()  # mid-way: the second import is routed while the PACS is away
    await import_tree(stack, "second")
    ct = await uids(pool, "CT")
    assert len(ct) == 8
    # storescp's queue is not held up by Orthanc's.
    await eventually(lambda: received(scp.folder) == ct, 60, what=log)

    async def pacs_waiting() -> bool:
        waiting = await router_metric(
            stack, 'dicomflow_router_queue{destination="pacs",state="queued"}'
        )
        down = await router_metric(stack, 'dicomflow_router_destination_up{destination="pacs"}')
        return waiting == 8 and down == 0

    await eventually(pacs_waiting, 30, what=log)

    # The router restarts (SIGTERM) while the queue waits: the queue is in PostgreSQL.
    assert stack.kill(ROUTER, signal.SIGTERM) == 0
    stack.start(ROUTER)
    await stack.wait_ready([ROUTER])
    orthanc.start()  # same storage, same ports

    everything = await uids(pool)
    assert len(everything) == 16
    await eventually(lambda: at_orthanc(orthanc) == everything, 90, what=log)
    rows = await pool.fetch(
        "SELECT destination, state, count(*) AS n FROM route_queue GROUP BY 1, 2 ORDER BY 1"
    )
    assert [(r["destination"], r["state"], r["n"]) for r in rows] == [
        ("pacs", "sent", 16),
        ("scp", "sent", 8),
    ]
    # Exactly once each: one file per C-STORE at storescp, nothing sent to it twice; the
    # restarted router sent Orthanc the 8 that waited, none of the first 8 again.
    assert received(scp.folder) == ct
    assert await router_metric(stack, 'dicomflow_router_sent_total{destination="pacs"}') == 8

    # The routing alerts' series exist on the router (the monitoring e2e does not run it).
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"http://127.0.0.1:{stack.ports[ROUTER]}/metrics")).text
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    used = {
        name
        for group in rules
        for rule in group["rules"]
        for name in re.findall(r"dicomflow_router_[a-z_]+", rule["expr"])
    }
    assert used, "no routing alert"
    assert {name for name in used if name not in body} == set()


async def test_a_router_killed_mid_send_settles_what_was_in_doubt_and_sends_the_rest(
    stack: Stack, pool: asyncpg.Pool, destinations: tuple[StoreSCP, Orthanc]
) -> None:
    """kill -9 of the router while it sends (a C-STORE under way: a `sending` row), then a
    restart: every instance reaches each destination; what the dead sender left in doubt is
    looked up at Orthanc (C-FIND: found, not sent again) and sent to storescp again (no
    verification configured: at-least-once, one extra copy at most per instance in doubt)."""
    scp, orthanc = destinations
    log = partial(stack.tail, ROUTER, 30)
    task_id = await start_import(stack, "killed", per_series=60)

    async def mid_send() -> bool:
        states = await queue_states(pool)
        return states.get("sending", 0) > 0 and states.get("sent", 0) >= 5

    await eventually(mid_send, 120, interval=0.01, what=log)
    assert stack.kill(ROUTER, signal.SIGKILL) == -signal.SIGKILL
    at_kill = await queue_states(pool)  # frozen: nobody else sends these destinations
    doubt = {
        r["destination"]: r["n"]
        for r in await pool.fetch(
            "SELECT destination, count(*) AS n FROM route_queue WHERE state = 'sending' GROUP BY 1"
        )
    }
    print(f"\nrouter killed: {at_kill}, in doubt {doubt}")
    assert at_kill.get("sent", 0) < 180, "killed after the queues were sent: not mid-send"
    stack.start(ROUTER)
    await stack.wait_ready([ROUTER])
    assert (await stack.wait_task(task_id))["status"] == "completed"

    everything = await uids(pool)
    ct = await uids(pool, "CT")
    assert len(everything) == 120 and len(ct) == 60
    await eventually(lambda: at_orthanc(orthanc) == everything, 90, what=log)
    await eventually(lambda: sorted(set(received(scp.folder))) == ct, 90, what=log)

    async def all_sent() -> bool:
        return await queue_states(pool) == {"sent": 180}

    await eventually(all_sent, 30, what=log)
    # Each instance in doubt was settled once, the way its destination allows: Orthanc is
    # asked (found if its C-STORE had been applied, else sent again), storescp is sent again.
    settled = {
        (dest, how): await router_metric(
            stack,
            f'dicomflow_router_in_doubt_total{{destination="{dest}",resolution="{how}"}}',
        )
        or 0
        for dest in ("pacs", "scp")
        for how in ("found", "resent")
    }
    print(f"settled after the restart: {settled}")
    assert settled["pacs", "found"] + settled["pacs", "resent"] == doubt.get("pacs", 0), log()
    assert settled["scp", "resent"] == doubt.get("scp", 0) and not settled["scp", "found"]
    # storescp: one file per C-STORE; only an instance in doubt may have arrived twice.
    copies = received(scp.folder)
    assert len(copies) - len(set(copies)) <= doubt.get("scp", 0)


async def queue_states(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM route_queue GROUP BY 1")
    return {r["state"]: r["n"] for r in rows}
