"""`dicomflow fetch`: studies from the archive to local folders, for people who live in a
terminal. Search (`--patient-name "Иванов" --year 2024`) or name the studies
(`dicomflow fetch UID...`); each is downloaded with a progress bar (resuming what an earlier
run left), verified, unpacked into `<out>/<patient>/<date>_<description>/`, and with
`--open` shown in the viewer. Errors are one line on stderr, never a traceback.

The logic lives in `dicomflow_client` (clients/core), shared with the desktop client.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomflow_client import Client, Progress, Study

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_LIMIT = 20


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fetch",
        help="download studies, verify and unpack them (and open them in a viewer)",
        description="Download studies by UID or by search; resumable, verified, unpacked into "
        "OUT/<patient>/<study date>_<description>/.",
    )
    p.add_argument("study_uids", nargs="*", metavar="STUDY_UID", help="studies to download")
    find = p.add_argument_group("search (instead of UIDs)")
    find.add_argument("--patient-name", help='e.g. "Иванов" or "Иванов Иван"')
    find.add_argument("--patient-id")
    find.add_argument("--birth-date", type=date.fromisoformat, help="YYYY-MM-DD")
    find.add_argument("--sex", choices=["M", "F", "O"])
    find.add_argument("--year", type=int, help="study year")
    find.add_argument("--study-date-from", type=date.fromisoformat, help="YYYY-MM-DD")
    find.add_argument("--study-date-to", type=date.fromisoformat, help="YYYY-MM-DD")
    find.add_argument("--modality", help="e.g. CT, MR")
    find.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="refuse more matches than this"
    )
    p.add_argument("--out", type=Path, default=Path(), help="download folder (default: here)")
    p.add_argument("--format", choices=["tar.zst", "zip", "tar"], default="tar.zst")
    p.add_argument("--open", action="store_true", help="open each study in the viewer")
    p.add_argument("--viewer", help="viewer command with {folder} (env DICOMFLOW_VIEWER)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    p.add_argument("--url", help=f"API address (env DICOMFLOW_URL, default {DEFAULT_URL})")
    p.add_argument(
        "--archive-url",
        help="archive address when not the API's (env DICOMFLOW_ARCHIVE_URL; rarely needed)",
    )
    p.add_argument("--api-key", help="API key (env DICOMFLOW_API_KEY)")
    p.add_argument(
        "--ca-bundle",
        type=Path,
        help="PEM file of the CA that signed an https:// server's certificate "
        "(env DICOMFLOW_CA_BUNDLE; default: the system's CAs)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        from dicomflow_client import ClientError
    except ImportError:
        print(
            "dicomflow fetch: the client core is not installed "
            "(make deps, or: pip install ./clients/core rich).",
            file=sys.stderr,
        )
        return 1

    try:
        return _run(args)
    except ClientError as exc:
        print(f"dicomflow fetch: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # rich, without the `fetch` extra
        print(f"dicomflow fetch: {exc.name} is not installed (make deps).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "dicomflow fetch: interrupted; run the same command again to resume.", file=sys.stderr
        )
        return 130


def _run(args: argparse.Namespace) -> int:
    from dicomflow_client import Client, ClientError, SearchFilter

    criteria = SearchFilter(
        patient_name=args.patient_name or "",
        patient_id=args.patient_id or "",
        birth_date=args.birth_date,
        sex=args.sex or "",
        year=args.year,
        study_date_from=args.study_date_from,
        study_date_to=args.study_date_to,
        modality=args.modality or "",
    )
    if bool(args.study_uids) == bool(criteria.params()):
        raise ClientError("give either study UIDs or search options (e.g. --patient-name).")
    key = args.api_key or os.environ.get("DICOMFLOW_API_KEY", "")
    if not key:
        raise ClientError("no API key: pass --api-key or set DICOMFLOW_API_KEY.")
    with Client(
        args.url or os.environ.get("DICOMFLOW_URL") or DEFAULT_URL,
        key,
        archive_base_url=args.archive_url or os.environ.get("DICOMFLOW_ARCHIVE_URL") or None,
        ca_bundle=args.ca_bundle or os.environ.get("DICOMFLOW_CA_BUNDLE") or None,
    ) as client:
        studies = _studies(client, args, criteria)
        viewer = args.viewer or os.environ.get("DICOMFLOW_VIEWER", "")
        for n, study in enumerate(studies, 1):
            folder = _fetch_one(client, study, args, f"[{n}/{len(studies)}]")
            print(folder)
            if args.open:
                _open(folder, viewer)
    return 0


def _studies(client: Client, args: argparse.Namespace, criteria: object) -> list[Study]:
    from dicomflow_client import ClientError, NotFound, SearchFilter

    if args.study_uids:
        out = []
        for uid in args.study_uids:
            try:
                out.append(client.study(uid))
            except NotFound:
                raise NotFound(f"study {uid} was not found on the server (404).") from None
        return out
    assert isinstance(criteria, SearchFilter)
    total, found = client.search(criteria, limit=args.limit + 1)
    if total == 0:
        raise NotFound("no study matches the search.")
    if total > args.limit:  # "1,000+ studies match" when the server stopped counting
        raise ClientError(
            f"{total} studies match; narrow the search or raise --limit (now {args.limit})."
        )
    print(f"{total} {'study' if total == 1 else 'studies'} found", file=sys.stderr)
    return found


def _fetch_one(client: Client, study: Study, args: argparse.Namespace, label: str) -> Path:
    from dicomflow_client import fetch_study
    from dicomflow_client.progress import human_size

    title = (
        f"{label} {study.patient.display_name}, {study.study_date or 'no date'}, "
        f"{study.study_description or 'study'} ({study.instance_count} images, "
        f"{human_size(study.size_bytes)})"
    )
    print(title, file=sys.stderr)
    cancel = threading.Event()
    if args.quiet:
        return fetch_study(
            client, study, args.out, fmt=args.format, cancel=cancel, keep_archive=args.keep_archive
        )
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as Bar,
    )

    started: list[int] = []
    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("download", total=None)

        def show(p: Progress) -> None:
            if not started:
                started.append(p.done)
                if p.done and p.stage == "download":
                    bar.console.print(f"resuming at {human_size(p.done)}")
            bar.update(task, **bar_fields(p))

        return fetch_study(
            client,
            study,
            args.out,
            fmt=args.format,
            progress=show,
            cancel=cancel,
            keep_archive=args.keep_archive,
        )


def bar_fields(p: Progress) -> dict[str, Any]:
    """The bar's scale: the archive's size, or while the server still builds it the study's
    size before packing, said to be an estimate ("download (about)")."""
    about = " (about)" if p.estimated and p.total else ""
    return {"completed": p.done, "total": p.total, "description": f"{p.stage}{about}"}


def _open(folder: Path, viewer: str) -> None:
    from dicomflow_client.viewer import launch_viewer, open_folder

    if viewer:
        launch_viewer(viewer, folder)
    else:
        open_folder(folder)
