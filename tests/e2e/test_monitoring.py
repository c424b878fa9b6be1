"""The dashboards and alerts work: a real Prometheus scrapes the stack (the repository's scrape
config, pointed at the processes' ops ports) while it imports a batch with poison files; then
every panel's query returns data, every alert evaluates over exported metrics, and the
dead-letter alert fires."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from trees import build_tree

from libs.dicom.synthetic import generate_corpus
from libs.tools.dev_broker import free_port
from libs.tools.monitoring.catalog import CONSUMERS, MONITORED
from libs.tools.monitoring.generate import DASHBOARDS, SCRAPE_CONFIG
from libs.tools.monitoring.promql import unknown_metrics
from load_test.dimse import storescu
from load_test.process_stack import PREFIX, Stack
from load_test.prometheus import Prometheus, local_config
from tests.polling import eventually

RULES = SCRAPE_CONFIG.parent / "alerts.yml"
# Grafana's variables, as Grafana would fill them in for a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
# Prometheus' own series, not exported by a service.
BUILTIN = {"up"}
RECEIVED = 4  # instances sent to the dicom-receiver
# Monitored services the stack fixture does not run (they need an upstream to be useful):
# their dashboards cannot be proven here. Keep this empty where possible: run the service in
# the stack (load_test/process_stack.py) instead.
NOT_IN_STACK = {
    "index-publisher",
    "orthanc-watcher",
    "dcm4chee-watcher",
    "pacs-watcher",
    "router",  # needs DICOM destinations (tests/e2e/test_routing.py checks its metrics)
    "backend-connector",  # needs a backend (tests/e2e/test_backend_connector.py)
}


@pytest.fixture
def extra_env(tmp_path: Path) -> dict[str, str]:
    """The iso-watcher runs when it has an inbox (an empty one: its rounds are what counts);
    the dicom-receiver on a free DICOM port."""
    inbox = tmp_path / "disc-inbox"
    inbox.mkdir()
    return {
        "ISO_INBOX": str(inbox),
        "RECEIVER_PORT": str(free_port()),
        "RECEIVER_STAGING_DIR": str(tmp_path / "receiver"),
        "RECEIVER_MIN_FREE_MB": "0",
    }


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel target, but those of services in
    NOT_IN_STACK (their dashboards, and the overview's lines named after them)."""
    out = []
    skipped = {f"service-{name}.json" for name in NOT_IN_STACK}
    for path in sorted(DASHBOARDS.glob("*.json")):
        if path.name in skipped:
            continue
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel["targets"]:
                if target["legendFormat"] in NOT_IN_STACK:
                    continue
                expr = target["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append((path.name, panel["title"], expr))
    return out


def of_service_not_in_stack(metric: str) -> bool:
    return any(metric.startswith(f"dicomflow_{n.replace('-', '_')}_") for n in NOT_IN_STACK)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for g in groups for rule in g["rules"]]


@pytest.fixture
async def prometheus(stack: Stack, tmp_path: Path) -> AsyncIterator[Prometheus]:
    # Services the stack knows how to run but the fixture does not start (beyond the pipeline).
    extra = [n for n in MONITORED if n in PREFIX and n not in set(stack.procs) | NOT_IN_STACK]
    for name in extra:
        stack.start(name)
    await stack.wait_ready(extra)
    targets = {name: port for name, port in stack.ports.items() if name in stack.procs}
    prom = Prometheus.start(tmp_path / "prometheus", local_config(targets))
    try:
        await prom.wait_ready()
        yield prom
    finally:
        prom.stop()


@pytest.mark.timeout(240)
@pytest.mark.stack_env(NAS_WATCH="true")  # the watcher's scan panels need scans
async def test_every_panel_and_alert_is_backed_by_live_metrics(
    stack: Stack, prometheus: Prometheus
) -> None:
    running = set(stack.procs)
    assert set(MONITORED) - running == NOT_IN_STACK, "every monitored service runs in the stack"

    async def all_up() -> bool:
        up = await prometheus.query("up == 1")
        return {r["metric"]["job"] for r in up} == running

    await eventually(all_up, 60, what="every service scraped", interval=0.5)

    tree = stack.root / "imports" / "monitored"
    expected = build_tree(tree, series_per_study=2, per_series=8, patients=2)
    task = await stack.wait_task(await stack.start_import(tree))
    assert task["status"] == "completed", task

    async def indexed_seen() -> bool:
        r = await prometheus.query(
            'sum(dicomflow_indexer_end_to_end_seconds_count{outcome="indexed"})'
        )
        return bool(r) and float(r[0]["value"][1]) >= expected.new

    await eventually(indexed_seen, 60, what="the import's instances reach Prometheus", interval=0.5)

    # A few instances over DICOM, for the receiver's panels (and the stored count below).
    sent = stack.root / "dicom-sent"
    generate_corpus(sent, RECEIVED, rows=16, columns=16, seed=7)
    port = int(stack.env["RECEIVER_PORT"])
    result = await asyncio.to_thread(storescu, "127.0.0.1", port, sent, calling="MONITOR")
    assert result.returncode == 0 and not result.failures, result.output

    # One archive download, for the packager's panels.
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        studies = (await client.get(f"{stack.api}/v1/studies")).json()["items"]
        packager = f"http://127.0.0.1:{stack.ports['packager']}"
        archive = await client.get(f"{packager}/v1/studies/{studies[0]['study_uid']}/archive")
        assert archive.status_code == 200, archive.text

    async def download_seen() -> bool:
        # two scrapes of it, so a rate() over it has data
        return bool(
            await prometheus.query("count_over_time(dicomflow_packager_downloads_total[1m]) >= 2")
        )

    await eventually(
        download_seen, 60, what="the archive download reaches Prometheus", interval=0.5
    )

    async def stores_seen() -> bool:
        query = "count_over_time(dicomflow_dicom_receiver_store_seconds_count[1m]) >= 2"
        return bool(await prometheus.query(query))

    await eventually(stores_seen, 60, what="the C-STOREs reach Prometheus", interval=0.5)

    async def previews_seen() -> bool:
        # The jpg-converter's labelled counters exist from its first outcome on; it follows
        # the import at its own pace (it failed CI once: no series yet at the panel check).
        query = "count_over_time(dicomflow_jpg_converter_previews_total[1m]) >= 2"
        return bool(await prometheus.query(query))

    await eventually(previews_seen, 90, what="the previews reach Prometheus", interval=0.5)

    async def dlq_alert_firing() -> list[dict[str, Any]]:
        alerts = (await prometheus.api("alerts"))["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "DicomflowDeadLetter" and a["state"] == "firing"
        ]

    firing = await eventually(
        dlq_alert_firing, 60, what="the dead-letter alert fires", interval=0.5
    )
    assert {"extractor"} <= {a["labels"]["job"] for a in firing}

    exported = set(await prometheus.api("label/__name__/values"))
    problems: list[str] = []
    for board, title, expr in panel_queries():
        unknown = unknown_metrics(expr, exported | BUILTIN)
        if unknown:
            problems.append(f"{board} / {title}: no service exports {unknown}: {expr}")
        elif not await prometheus.query(expr):
            problems.append(f"{board} / {title}: no data: {expr}")
    for rule in alert_rules():
        unknown = unknown_metrics(rule["expr"], exported | BUILTIN)
        if unknown and all(of_service_not_in_stack(m) for m in unknown):
            continue  # that service's own e2e test checks it exports them (test_routing.py)
        if unknown:
            problems.append(f"alert {rule['alert']}: no service exports {unknown}")
        await prometheus.query(rule["expr"])  # raises unless Prometheus accepts it
    assert not problems, "\n".join(problems)

    # The figures behind the overview are the import's, not just present.
    for stage in (s for s in CONSUMERS if s not in NOT_IN_STACK):
        metric = f"dicomflow_{stage.replace('-', '_')}_messages_total"
        r = await prometheus.query(f'sum(increase({metric}{{status="ok"}}[5m]))')
        assert r and float(r[0]["value"][1]) > 0, f"{stage} handled nothing"
    stored = await prometheus.query("sum(dicomflow_storage_writer_objects_stored_total)")
    assert float(stored[0]["value"][1]) == expected.new + expected.conflicts + RECEIVED
    tasks = await prometheus.query('max(dicomflow_api_import_tasks{status="completed"})')
    assert float(tasks[0]["value"][1]) >= 1
