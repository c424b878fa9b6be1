"""`dicomflow up` with embedded defaults: a fresh machine with nothing configured gets the
embedded broker, PostgreSQL on localhost, local storage and a seeded demo NAS folder."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from libs.contracts.settings import ServiceSettings, load_settings
from libs.db.audit import create_key_audited
from libs.db.migrations import migrate
from libs.db.pool import DatabaseUnavailable, create_pool
from libs.tools.dev_broker import broker_argv, wait_for_port
from libs.tools.supervisor import ProcSpec, Supervisor

# Every service `dicomflow up` can run, by name, with the module `python -m` runs.
SERVICES: dict[str, str] = {
    "nas-watcher": "services.nas_watcher",
    "extractor": "services.extractor",
    "dedup": "services.dedup",
    "storage-writer": "services.storage_writer",
    "indexer": "services.indexer",
    "reconciler": "services.reconciler",
    "api": "services.api",
    "index-publisher": "services.index_publisher",
    "jpg-converter": "services.jpg_converter",
    "packager": "services.packager",
    "orthanc-watcher": "services.orthanc_watcher",
    "iso-watcher": "services.iso_watcher",
    "dcm4chee-watcher": "services.dcm4chee_watcher",
    "dicom-receiver": "services.dicom_receiver",
    "pacs-watcher": "services.pacs_watcher",
    "router": "services.router",
    "backend-connector": "services.backend_connector",
}

EMBEDDED_BROKER_PORT = 9092
# Services that are useful only once configured: `dicomflow up` starts them when this
# variable is set (or when named with --only).
CONFIGURED_BY = {
    "index-publisher": "INDEX_PUBLISHER_URL",
    "orthanc-watcher": "ORTHANC_URL",
    "iso-watcher": "ISO_INBOX",
    "dcm4chee-watcher": "DCM4CHEE_ARCHIVE_URL",
    "pacs-watcher": "WATCHER_PACS",
    "router": "ROUTER_RULES_FILE",
    "backend-connector": "CONNECTOR_URL",
}


def configured(service: str, env: Mapping[str, str]) -> bool:
    variable = CONFIGURED_BY.get(service)
    return variable is None or bool(env.get(variable))


def say(msg: str) -> None:
    print(f"dicomflow | {msg}", flush=True)


async def admin_key(database_url: str, var: Path) -> tuple[str, bool]:
    """One admin key per state folder, created on first start: (key, created now). The file
    is created 0600 in one step (never readable by others, even for an instant) and renamed
    into place, so a crash leaves either no key file or a whole one."""
    path = var / "admin-key"
    if path.exists():
        return path.read_text().strip(), False
    pool = await create_pool(database_url, size=1)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            _, plaintext = await create_key_audited(
                conn, "admin", "dicomflow up (first start)", via="dicomflow up"
            )
    finally:
        await pool.close()
    tmp = var / f".admin-key.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (plaintext + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return plaintext, True


def _seed_demo(nas: Path) -> None:
    if nas.exists():
        return
    from libs.dicom.synthetic import generate_demo_set

    count = generate_demo_set(nas)
    say(f"seeded {nas} with {count} synthetic demo instances (no real patient data)")


async def up(var: Path, *, only: list[str] | None) -> int:
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
    if os.environ.get("PACKAGER_OPS_PORT") and not os.environ.get("API_PACKAGER_URL"):
        # The API relays archive downloads to the packager (default http://127.0.0.1:8107).
        env["API_PACKAGER_URL"] = f"http://127.0.0.1:{os.environ['PACKAGER_OPS_PORT']}"
    if not os.environ.get("NAS_ROOTS"):
        nas = var / "nas"
        _seed_demo(nas)
        env["NAS_ROOTS"] = str(nas)
    # Each source's staging folder, named here so the extractor and the storage-writer
    # know them as our own (stamped at once, stored as hard links: ADR 0031, ADR 0034).
    staging = {
        "RECEIVER_STAGING_DIR": var / "receiver",
        "ORTHANC_STAGING_DIR": var / "staging" / "orthanc",
        "ISO_STAGING_DIR": var / "staging" / "iso",
        "WATCHER_STAGING_DIR": var / "pacs-get",
        "API_STOW_STAGING_DIR": var / "stow",
    }
    for name, folder in staging.items():
        if not os.environ.get(name):
            env[name] = str(folder)
    if not os.environ.get("API_EXPORT_DIR"):
        env["API_EXPORT_DIR"] = str(var / "exports")
    viewer = var / "ohif" / "dist"
    if not os.environ.get("API_VIEWER_DIR") and (viewer / "index.html").is_file():
        env["API_VIEWER_DIR"] = str(viewer)
    os.environ.update(env)
    settings = load_settings(ServiceSettings)
    try:
        key, created = await admin_key(settings.database_url, var)
    except DatabaseUnavailable as exc:
        say(str(exc))
        return 1
    host = os.environ.get("API_HOST", "127.0.0.1")
    api_port = os.environ.get("API_PORT", "8000")
    say(f"API:        http://{host}:{api_port}   (OpenAPI: http://{host}:{api_port}/docs)")
    if created:  # shown once; later starts only say where it is
        say(f"admin key:  {key}   (created now, kept in {var / 'admin-key'}, mode 0600)")
    else:
        say(f"admin key:  in {var / 'admin-key'}")
    say(f"browser:    http://{host}:{api_port}/   (sign in with the admin key)")
    if os.environ.get("API_VIEWER_DIR"):
        say(f"viewer:     http://{host}:{api_port}/viewer   (sign in with a key)")
    else:
        say("viewer:     not installed (bash deploy/dev/ohif.sh, or make deps)")
    bearer = f"$(cat {var / 'admin-key'})"
    say(f'try:        curl -H "Authorization: Bearer {bearer}" http://{host}:{api_port}/v1/studies')
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
