"""`dicomflow`: run the stack (`up`), one service (`run NAME`), and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import runpy
import sys
from pathlib import Path

from libs.contracts.settings import ServiceSettings, load_settings
from libs.db.apikeys import ROLES
from libs.tools.devstack import SERVICES
from libs.tools.dlq_cli import add_parser as add_dlq_parser
from libs.tools.dlq_cli import run as run_dlq
from libs.tools.fetch_cli import add_parser as add_fetch_parser
from libs.tools.fetch_cli import run as run_fetch
from libs.tools.import_cli import add_parser as add_import_parser
from libs.tools.import_cli import run as run_import
from libs.tools.rebuild import add_parser as add_rebuild_parser
from libs.tools.rebuild import run as run_rebuild

FULL_LOAD = "services.index_publisher.full_load"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack as separate processes")
    up.add_argument("--only", nargs="*", choices=sorted(SERVICES), help="run just these")
    up.add_argument("--var", default="./var", help="state folder for the embedded defaults")

    run = sub.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", choices=sorted(SERVICES))

    key = sub.add_parser("apikey", help="manage API keys")
    key_sub = key.add_subparsers(dest="action", required=True)
    create = key_sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--name", default="")

    publish = sub.add_parser("publish", help="send studies to the central index")
    publish.add_argument(
        "--all", action="store_true", required=True, help="every study in the index (full load)"
    )

    sub.add_parser("migrate", help="create the database if missing and apply migrations")
    sub.add_parser("topics", help="create every topic and its DLQ if missing")
    add_dlq_parser(sub)
    add_fetch_parser(sub)
    add_import_parser(sub)
    add_rebuild_parser(sub)
    broker = sub.add_parser("broker", help="run the embedded Kafka-protocol broker")
    broker.add_argument("--port", type=int, default=9092)

    args = parser.parse_args(argv)
    if args.command == "run":
        sys.argv = [SERVICES[args.service]]
        runpy.run_module(SERVICES[args.service], run_name="__main__", alter_sys=True)
        return 0
    if args.command == "up":
        from libs.tools.devstack import up as run_up

        return asyncio.run(run_up(Path(args.var), only=args.only or None))
    if args.command == "apikey":
        print(asyncio.run(_create_key(args.role, args.name)))
        return 0
    if args.command == "publish":
        # Service code is run by module name: libs never imports services.
        return int(runpy.run_module(FULL_LOAD)["main"]())
    if args.command == "migrate":
        print("applied:", asyncio.run(_migrate()) or "nothing (up to date)")
        return 0
    if args.command == "topics":
        print("created:", asyncio.run(_topics()) or "nothing (all exist)")
        return 0
    if args.command == "dlq":
        return run_dlq(args)
    if args.command in ("import", "imports"):
        return run_import(args)
    if args.command == "fetch":
        return run_fetch(args)
    if args.command == "rebuild-index":
        return run_rebuild(args)
    if args.command == "broker":
        from libs.tools.dev_broker import broker_argv

        argv_ = broker_argv(args.port)
        os.execv(argv_[0], argv_)  # noqa: S606 - our own pinned binary, fixed arguments
    return 2


def _common() -> ServiceSettings:
    return load_settings(ServiceSettings)


async def _migrate() -> list[str]:
    from libs.db.migrations import migrate
    from libs.db.pool import create_pool

    pool = await create_pool(_common().database_url, size=1)
    try:
        return await migrate(pool)
    finally:
        await pool.close()


async def _create_key(role: str, name: str) -> str:
    from libs.db.audit import create_key_audited
    from libs.db.migrations import migrate
    from libs.db.pool import create_pool

    pool = await create_pool(_common().database_url, size=1)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            _, plaintext = await create_key_audited(conn, role, name, via="dicomflow apikey create")
        return plaintext
    finally:
        await pool.close()


async def _topics() -> list[str]:
    from libs.kafka.admin import ensure_topics

    s = _common()
    return await ensure_topics(
        s.kafka,
        partitions=s.kafka_topic_partitions,
        replication_factor=s.kafka_replication_factor,
    )


if __name__ == "__main__":
    raise SystemExit(main())
