"""`dicomflow dlq list|show|replay <topic>`: the operator's side of `libs.kafka.dlq`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from datetime import datetime

from prometheus_client import CollectorRegistry

from libs.contracts.settings import ServiceSettings, load_settings
from libs.kafka.dlq import REPLAY_GROUP, Letter, LetterFilter, as_dlq, list_letters, replay
from libs.kafka.dlq import show_letter as show_one
from libs.kafka.producer import Producer
from libs.runtime.metrics import ProducerMetrics


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="list, show and replay dead letters")
    actions = dlq.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "one line per letter (oldest first)"),
        ("replay", "republish letters to their original topic, once per --group"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("topic", help="the topic or its DLQ (dicom.extracted.v1[.dlq])")
        p.add_argument("--stage", help="only letters from this stage")
        p.add_argument("--error-type", help="only this error type, e.g. PermanentError")
        p.add_argument("--correlation-id")
        p.add_argument("--grep", help="regular expression searched in the error text")
        p.add_argument("--since", type=datetime.fromisoformat, help="failed at or after (ISO)")
        if name == "list":
            p.add_argument("--limit", type=int)
            p.add_argument("--json", action="store_true", help="one JSON letter per line")
        else:
            p.add_argument("--group", default=REPLAY_GROUP, help="replay cursor (consumer group)")
            p.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    show = actions.add_parser("show", help="one letter in full")
    show.add_argument("topic")
    show.add_argument("position", help="PARTITION:OFFSET, as `list` prints it")


def _filter(args: argparse.Namespace) -> LetterFilter:
    return LetterFilter(
        stage=args.stage,
        error_type=args.error_type,
        correlation_id=args.correlation_id,
        pattern=args.grep,
        since=args.since,
    )


def _line(item: Letter) -> str:
    d = item.letter
    if d is None:
        return f"{item.position}  (not a dead letter: {item.raw[:80]!r})"
    when = d.failed_at.isoformat(timespec="seconds")
    error = d.error if len(d.error) <= 120 else d.error[:117] + "..."
    return f"{item.position}  {when}  {d.stage}  {d.error_type}  {d.correlation_id}  {error}"


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args, load_settings(ServiceSettings)))


async def _run(args: argparse.Namespace, s: ServiceSettings) -> int:
    bootstrap = s.kafka
    if args.action == "list":
        letters = await list_letters(bootstrap, args.topic, _filter(args), args.limit)
        for item in letters:
            if args.json:
                print(item.letter.model_dump_json() if item.letter else json.dumps(None))
            else:
                print(_line(item))
        print(f"# {len(letters)} letter(s) in {as_dlq(args.topic)}")
        return 0
    if args.action == "show":
        partition, _, offset = args.position.partition(":")
        item = await show_one(bootstrap, args.topic, int(partition), int(offset))
        body = item.letter.model_dump(mode="json") if item.letter else {"raw": repr(item.raw)}
        if item.letter is not None:
            with contextlib.suppress(ValueError):  # the original event, readable
                body["payload"] = json.loads(item.letter.payload)
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    producer = Producer(
        bootstrap,
        idempotence=s.kafka_enable_idempotence,
        metrics=ProducerMetrics.create("dlq", CollectorRegistry()),
        client_id="dicomflow-dlq-replay",
    )
    await producer.start()
    try:
        report = await replay(
            bootstrap,
            args.topic,
            producer,
            _filter(args),
            group_id=args.group,
            dry_run=args.dry_run,
        )
    finally:
        await producer.stop()
    for item in report.replayed:
        print(("would replay " if args.dry_run else "replayed ") + _line(item))
    print(
        f"# {len(report.replayed)} replayed, {report.passed_over} passed over "
        f"({report.unreadable} unreadable) for group {args.group}"
        + (" (dry run: nothing sent or committed)" if args.dry_run else "")
    )
    return 0
