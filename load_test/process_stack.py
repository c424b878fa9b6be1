"""The stack as separate processes (exactly what `dicomflow up` runs), on a given database,
broker and free ports, driven through its API. Used by the e2e tests and `make bench`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from libs.tools.dev_broker import free_port
from libs.tools.devstack import SERVICES

# The env prefix of each service's own settings (its ops port is <PREFIX>OPS_PORT).
PREFIX = {
    "nas-watcher": "NAS_",
    "extractor": "EXTRACTOR_",
    "dedup": "DEDUP_",
    "storage-writer": "STORAGE_WRITER_",
    "indexer": "INDEXER_",
    "reconciler": "RECONCILER_",
    "index-publisher": "INDEX_PUBLISHER_",
    "jpg-converter": "JPG_CONVERTER_",
    "packager": "PACKAGER_",
    "orthanc-watcher": "ORTHANC_",
    "iso-watcher": "ISO_",
    "dcm4chee-watcher": "DCM4CHEE_",
    "dicom-receiver": "RECEIVER_",
    "pacs-watcher": "WATCHER_",
    "router": "ROUTER_",
    "backend-connector": "CONNECTOR_",
}
PIPELINE = ["nas-watcher", "extractor", "dedup", "storage-writer", "indexer", "reconciler"]
# Sources (and the router) that run only when configured, like under `dicomflow up`
# (libs.tools.devstack.CONFIGURED_BY).
OPTIONAL = ["orthanc-watcher", "iso-watcher", "router", "backend-connector"]


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    key: str = ""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str) -> None:
        """Start a service, or another replica of one: `extractor#2` runs `extractor` in the
        same consumer group, on its own ops port."""
        service = name.split("#", 1)[0]
        env = {**os.environ, **self.env}
        if name != service:
            self.ports.setdefault(name, free_port())
            env[f"{PREFIX[service]}OPS_PORT"] = str(self.ports[name])
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path(name).open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", SERVICES[service]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and wait for the process to end."""
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused process cannot drain
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"{name} did not stop on SIGTERM")

    async def wait_ready(self, names: list[str], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            for name in names:
                url = f"http://127.0.0.1:{self.ports[name]}/ready"
                while True:
                    proc = self.procs[name]
                    if proc.poll() is not None:
                        raise AssertionError(
                            f"{name} exited with {proc.returncode}:\n{self.tail(name)}"
                        )
                    try:
                        if (await client.get(url, timeout=2)).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{name} not ready after {timeout}s:\n{self.tail(name)}"
                        )
                    await asyncio.sleep(0.2)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    async def task(self, task_id: str) -> dict[str, Any]:
        async with self.client() as c:
            body: dict[str, Any] = (await c.get(f"/v1/imports/{task_id}")).json()
            return body

    async def start_import(self, path: Path) -> str:
        async with self.client() as c:
            r = await c.post("/v1/imports", json={"source_path": str(path), "description": "test"})
        assert r.status_code == 202, r.text
        return str(r.json()["task_id"])

    async def wait_task(self, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with self.client() as c:
            while True:
                body: dict[str, Any] = (await c.get(f"/v1/imports/{task_id}")).json()
                if body["status"] in ("completed", "failed", "cancelled"):
                    return body
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {n}\n{self.tail(n, 15)}" for n in self.procs)
                    raise AssertionError(f"task not finished after {timeout}s: {body}\n{logs}")
                await asyncio.sleep(0.25)


def stack_env(
    root: Path, database_url: str, bootstrap: str
) -> tuple[dict[str, str], dict[str, int]]:
    ports = {name: free_port() for name in dict.fromkeys([*PIPELINE, *OPTIONAL, "api", *PREFIX])}
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_TOPIC_PARTITIONS": "3",
        "STORAGE_URL": (root / "storage").as_uri(),
        "NAS_ROOTS": str(root / "nas"),
        "NAS_IMPORT_ROOTS": str(root / "imports"),
        "NAS_WATCH": "false",
        "NAS_SCAN_INTERVAL_SECONDS": "1",
        "NAS_SETTLE_SECONDS": "0",
        "NAS_SCAN_BATCH_SIZE": "25",
        "STUDY_STABLE_SECONDS": "2",
        "INDEXER_STABLE_CHECK_SECONDS": "0.5",
        "RECONCILER_INTERVAL_SECONDS": "1",
        "RECONCILER_IDLE_SECONDS": "3",
        "RECONCILER_STALE_SECONDS": "3",
        "EXTRACTOR_WORKERS": "2",
        "PACKAGER_CACHE_DIR": str(root / "archives"),
        "ORTHANC_STAGING_DIR": str(root / "staging" / "orthanc"),
        # Every service reads it, as under `dicomflow up`: the extractor stamps received files
        # at once, the storage-writer links them instead of copying (ADRs 0031, 0034).
        "RECEIVER_STAGING_DIR": str(root / "staging" / "receiver"),
        "ORTHANC_POLL_INTERVAL_SECONDS": "0.5",
        "ORTHANC_CLEANUP_INTERVAL_SECONDS": "1",
        "ISO_STAGING_DIR": str(root / "staging" / "iso"),
        "API_STOW_STAGING_DIR": str(root / "staging" / "stow"),
        "API_EXPORT_DIR": str(root / "exports"),
        "ISO_SCAN_INTERVAL_SECONDS": "0.5",
        "ISO_SETTLE_SECONDS": "0.5",
        "API_PORT": str(ports["api"]),
        # Tests and Locust drive the API from one address with one key, far faster than a
        # person: the production rate limits would answer 429.
        "API_RATE_PER_KEY": "1000000/minute",
        "API_RATE_PER_ADDRESS": "1000000/minute",
        "API_DICOMWEB_RATE_PER_KEY": "1000000/minute",
        "API_DICOMWEB_RATE_PER_ADDRESS": "1000000/minute",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    for name, prefix in PREFIX.items():
        env[f"{prefix}OPS_PORT"] = str(ports[name])
    env["API_PACKAGER_URL"] = f"http://127.0.0.1:{ports['packager']}"  # archives on the API
    (root / "nas").mkdir(parents=True, exist_ok=True)
    (root / "imports").mkdir(parents=True, exist_ok=True)
    return env, ports
