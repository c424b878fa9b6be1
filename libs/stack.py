"""`dicomflow up` with embedded defaults: a fresh machine with nothing configured gets the
embedded broker, PostgreSQL on localhost, local storage and a seeded demo NAS folder."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from libs.broker import broker_argv, wait_for_port
from libs.db.apikeys import create_key
from libs.db.migrations import migrate
from libs.db.pool import DatabaseUnavailable, create_pool
from libs.settings import ServiceSettings, load_settings
from libs.supervisor import ProcSpec, Supervisor

EMBEDDED_BROKER_PORT = 9092
# Services that are useful only once configured: `dicomflow up` starts them when this
# variable is set (or when named with --only).
CONFIGURED_BY = {
    "index-publisher": "INDEX_PUBLISHER_URL",
    "orthanc-watcher": "ORTHANC_URL",
    "iso-watcher": "ISO_INBOX",
    "dcm4chee-watcher": "DCM4CHEE_ARCHIVE_URL",
    "pacs-watcher": "WATCHER_PACS",
}


def configured(service: str, env: Mapping[str, str]) -> bool:
    variable = CONFIGURED_BY.get(service)
    return variable is None or bool(env.get(variable))


def say(msg: str) -> None:
    print(f"dicomflow | {msg}", flush=True)


async def _admin_key(database_url: str, var: Path) -> str:
    """One admin key per state folder, created on first start (kept 0600 in var/)."""
    path = var / "admin-key"
    if path.exists():
        return path.read_text().strip()
    pool = await create_pool(database_url, size=1)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            _, plaintext = await create_key(conn, "admin", "dicomflow up (first start)")
    finally:
        await pool.close()
    path.write_text(plaintext + "\n")
    path.chmod(0o600)
    return plaintext


def _seed_demo(nas: Path) -> None:
    if nas.exists():
        return
    from libs.dicom.synthetic import generate_demo_set

    count = generate_demo_set(nas)
    say(f"seeded {nas} with {count} synthetic demo instances (no real patient data)")


async def up(var: Path, *, only: list[str] | None) -> int:
    from libs.cli import SERVICES

    var = var.absolute()
    var.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    specs: list[ProcSpec] = []
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        port = int(os.environ.get("DICOMFLOW_BROKER_PORT", EMBEDDED_BROKER_PORT))
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{port}"
        env["KAFKA_ENABLE_IDEMPOTENCE"] = "false"
        env.setdefault(
            "KAFKA_SESSION_TIMEOUT_MS", os.environ.get("KAFKA_SESSION_TIMEOUT_MS", "3000")
        )
        say(f"embedded Tansu broker on 127.0.0.1:{port} (in memory; idempotent producer off)")
        specs.append(ProcSpec("broker", broker_argv(port), infrastructure=True))
    if not os.environ.get("STORAGE_URL"):
        env["STORAGE_URL"] = (var / "storage").as_uri()
    if not (os.environ.get("PACKAGER_CACHE_DIR") or os.environ.get("CACHE_DIR")):
        env["PACKAGER_CACHE_DIR"] = str(var / "archives")
    if not os.environ.get("NAS_ROOTS"):
        nas = var / "nas"
        _seed_demo(nas)
        env["NAS_ROOTS"] = str(nas)
    if not os.environ.get("RECEIVER_STAGING_DIR"):
        env["RECEIVER_STAGING_DIR"] = str(var / "receiver")
    viewer = var / "ohif" / "dist"
    if not os.environ.get("API_VIEWER_DIR") and (viewer / "index.html").is_file():
        env["API_VIEWER_DIR"] = str(viewer)
    os.environ.update(env)
    settings = load_settings(ServiceSettings)
    try:
        key = await _admin_key(settings.database_url, var)
    except DatabaseUnavailable as exc:
        say(str(exc))
        return 1
    host = os.environ.get("API_HOST", "127.0.0.1")
    api_port = os.environ.get("API_PORT", "8000")
    say(f"API:        http://{host}:{api_port}   (OpenAPI: http://{host}:{api_port}/docs)")
    say(f"admin key:  {key}   (kept in {var / 'admin-key'})")
    if os.environ.get("API_VIEWER_DIR"):
        say(f"viewer:     http://{host}:{api_port}/viewer   (sign in with a key)")
    else:
        say("viewer:     not installed (bash deploy/dev/ohif.sh, or make deps)")
    say(f'try:        curl -H "Authorization: Bearer {key}" http://{host}:{api_port}/v1/studies')
    names = only or [n for n in SERVICES if configured(n, os.environ)]
    skipped = [n for n in SERVICES if n not in names and not only]
    if skipped:
        say(f"not configured, not started: {', '.join(skipped)} (see docs/configuration.md)")
    specs += [ProcSpec(n, [sys.executable, "-m", SERVICES[n]]) for n in names]
    if "dicom-receiver" in names:
        aet = os.environ.get("RECEIVER_AE_TITLE", "DICOMFLOW")
        say(f"DICOM:      C-STORE to {aet} at 127.0.0.1:{os.environ.get('RECEIVER_PORT', 11112)}")
    supervisor = Supervisor(specs)
    if specs and specs[0].name == "broker":
        supervisor.on_started["broker"] = lambda: asyncio.to_thread(
            wait_for_port, "127.0.0.1", int(env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
        )
    await supervisor.run()
    return 0
