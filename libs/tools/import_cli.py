"""`dicomflow import PATH [--watch]` and `dicomflow imports watch|stats|pause|resume|cancel ID`:
import tasks from a terminal, through the API (permission `imports`: an ops or admin key).

`--watch` / `watch` follow the task's live progress (`GET /v1/imports/{id}/events`, Server-Sent
Events) with a progress bar on a terminal, or one line per change otherwise, reconnecting
with `Last-Event-ID` when the connection drops, until the task ends. Exit status: 0 when
the task completed, 1 when it failed or on an error, 3 when it was cancelled. Errors are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
RECONNECT_SECONDS = 120.0  # give up when no connection could be made for this long
EXIT = {"completed": 0, "failed": 1, "cancelled": 3}


class CliError(Exception):
    pass


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    start = sub.add_parser(
        "import",
        help="import a folder (through the API) and optionally follow it",
        description="Create an import task for a folder the NAS watcher may read.",
    )
    start.add_argument("path", help="absolute path of the folder, as the NAS watcher sees it")
    start.add_argument("--description", default="")
    start.add_argument("--watch", action="store_true", help="follow it until it ends")
    _common(start)
    tasks = sub.add_parser("imports", help="follow, pause, resume or cancel an import")
    tasks.add_argument("action", choices=["watch", "stats", "pause", "resume", "cancel"])
    tasks.add_argument("task_id")
    _common(tasks)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"API address (env DICOMFLOW_URL, default {DEFAULT_URL})")
    p.add_argument("--api-key", help="API key (env DICOMFLOW_API_KEY)")
    p.add_argument(
        "--ca-bundle",
        help="PEM file of the CA that signed an https:// server's certificate "
        "(env DICOMFLOW_CA_BUNDLE; default: the system's CAs)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="only the final line")


def run(args: argparse.Namespace) -> int:
    name = f"dicomflow {args.command}"
    try:
        import httpx
    except ImportError:
        print(f"{name}: httpx is not installed (make deps).", file=sys.stderr)
        return 1
    key = args.api_key or os.environ.get("DICOMFLOW_API_KEY", "")
    if not key:
        print(f"{name}: no API key: pass --api-key or set DICOMFLOW_API_KEY.", file=sys.stderr)
        return 1
    base = (args.url or os.environ.get("DICOMFLOW_URL") or DEFAULT_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"}
    ca_bundle = args.ca_bundle or os.environ.get("DICOMFLOW_CA_BUNDLE") or None
    try:
        verify = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    except (OSError, ssl.SSLError) as exc:
        print(
            f"{name}: the CA certificate file {ca_bundle} cannot be read ({exc}).", file=sys.stderr
        )
        return 1
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30, verify=verify) as client:
            return _run(client, args)
    except CliError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"{name}: cannot reach {base} ({type(exc).__name__}).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: stopped watching; the import goes on.", file=sys.stderr)
        return 130


def _run(client: Any, args: argparse.Namespace) -> int:
    if args.command == "import":
        body = {"source_path": args.path, "description": args.description}
        task_id = _json(client.post("/v1/imports", json=body))["task_id"]
        print(task_id)
        return _watch(client, task_id, args.quiet) if args.watch else 0
    path = f"/v1/imports/{args.task_id}"
    if args.action == "watch":
        return _watch(client, args.task_id, args.quiet)
    if args.action == "stats":
        print(json.dumps(_json(client.get(f"{path}/stats")), indent=2, ensure_ascii=False))
        return 0
    task = _json(client.post(f"{path}/{args.action}"))
    print(summary(task))
    return 0


def _json(response: Any) -> dict[str, Any]:
    if response.status_code in (401, 403):
        raise CliError("the API key is not valid or may not manage imports (needs ops or admin).")
    if response.status_code == 404:
        raise CliError("no such import task.")
    if response.status_code in (409, 422):
        detail = response.json().get("detail")
        raise CliError(detail if isinstance(detail, str) else f"refused: {json.dumps(detail)}")
    if response.status_code >= 400:
        raise CliError(f"the server answered {response.status_code}.")
    body: dict[str, Any] = response.json()
    return body


def summary(task: dict[str, Any]) -> str:
    c = task["counters"]
    done = c["files_scanned"] - c["pending"]
    parts = [
        f"{task['status']}: {done}/{c['files_scanned']} files done",
        f"{c['new_instances']} new images",
        f"{c['duplicates']} already stored",
        f"{c['patients_found']} patients ({c['patients_new']} new)",
        f"{c['failed']} failed",
    ]
    if c["conflicts"]:
        parts.append(f"{c['conflicts']} conflicts")
    if c["cancelled"]:
        parts.append(f"{c['cancelled']} cancelled")
    return ", ".join(parts)


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class SseParser:
    """The event-stream format (WHATWG HTML, "Server-sent events"), line by line."""

    last_id: str | None = None
    retry_ms: int = 2000
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            out = SseEvent(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def follow(client: Any, task_id: str) -> Iterator[SseEvent]:
    """The task's events until `end`, reconnecting with Last-Event-ID after a dropped
    connection (for up to RECONNECT_SECONDS without one)."""
    import httpx

    parser = SseParser()
    failing_since: float | None = None
    while True:
        headers = {"Accept": "text/event-stream"}
        if parser.last_id:
            headers["Last-Event-ID"] = parser.last_id
        try:
            with client.stream(
                "GET", f"/v1/imports/{task_id}/events", headers=headers, timeout=None
            ) as response:
                if response.status_code != 200:
                    response.read()
                    _json(response)
                failing_since = None
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is None:
                        continue
                    yield event
                    if event.event == "end":
                        return
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > RECONNECT_SECONDS:
                raise CliError(
                    f"lost the connection to the server ({type(exc).__name__})."
                ) from exc
        time.sleep(parser.retry_ms / 1000)


def _watch(client: Any, task_id: str, quiet: bool) -> int:
    show = _bar() if sys.stderr.isatty() and not quiet else _lines(quiet)
    last: dict[str, Any] | None = None
    with show as update:
        for event in follow(client, task_id):
            if event.event in ("progress", "end"):
                last = json.loads(event.data)
                update(last)
    assert last is not None
    print(summary(last))
    if last["status"] == "failed" and last.get("error"):
        print(f"dicomflow import: {last['error']}", file=sys.stderr)
    return EXIT.get(last["status"], 1)


class _lines:
    """One line per change on stderr (logs, pipes, tests)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        return self.update

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, task: dict[str, Any]) -> None:
        if not self.quiet:
            print(summary(task), file=sys.stderr, flush=True)


class _bar:
    """A rich progress bar: files done of files found, with the counters beside it."""

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("import", total=None, detail="")
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, task: dict[str, Any]) -> None:
        c = task["counters"]
        detail = (
            f"{c['new_instances']} new, {c['patients_found']} patients "
            f"({c['patients_new']} new), {c['failed']} failed"
        )
        self.progress.update(
            self.task,
            description=task["status"],
            completed=c["files_scanned"] - c["pending"],
            total=c["files_scanned"] or None,
            detail=detail,
        )
