"""An archive to `<name>.part` with resume: HTTP Range + If-Range against the ETag.

Next to the part file, `<name>.part.json` records the URL, ETag and size the bytes belong to,
so a dropped connection (retried here with back-off) and a restart of the program (a new
call) both continue where the file ends. If the archive changed on the server (a new
revision of the study: another ETag), the server answers If-Range with the whole new
archive (200) and the part file starts again from zero; a 206 whose ETag or Content-Range
does not match what we hold is never appended.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from dicomflow_client.api import check, unreachable
from dicomflow_client.errors import Cancelled, ClientError, ServerError, from_os_error
from dicomflow_client.progress import Meter, ProgressFn

_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_TOTAL = re.compile(r"bytes \*/(\d+)")


@dataclass(frozen=True)
class Downloaded:
    path: Path
    etag: str | None
    size: int
    resumed_from: int  # bytes already on disk when this call began (0: from the start)


class Partial:
    """The part file and its sidecar."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta_path = path.with_name(path.name + ".json")

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def meta(self) -> dict[str, object]:
        try:
            body = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    def save_meta(self, url: str, etag: str | None, size: int | None) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps({"url": url, "etag": etag, "size": size}))
        os.replace(tmp, self.meta_path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


def download(
    http: httpx.Client,
    url: str,
    dest: Path,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    retries: int = 5,
) -> Downloaded:
    """Download `url` to `dest` (the `.part` path), resuming what is there. Retries a dropped
    connection up to `retries` times in a row (any progress resets the count)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Partial(dest)
    meta = part.meta()
    if meta.get("url") != url or not meta.get("etag"):
        part.discard()  # bytes we cannot vouch for are never resumed
    started = part.size()
    meter = Meter(progress)
    failures = 0
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        before = part.size()
        try:
            done = _attempt(http, url, part, meter, cancel)
        except (httpx.TransportError, _Short) as exc:
            if part.size() > before:
                failures = 0
            failures += 1
            if failures > retries:
                base = url.split("/v1/")[0]
                if isinstance(exc, httpx.TransportError):
                    raise unreachable(base, exc) from exc
                raise ServerError("The server kept closing the download early.") from exc
            _wait(min(0.5 * 2 ** (failures - 1), 8.0), cancel)
            continue
        if done is not None:
            meter.update(done.size, done.size, force=True)
            return Downloaded(dest, done.etag, done.size, started)


class _Short(Exception):
    """The response ended before the bytes it announced."""


def _attempt(
    http: httpx.Client, url: str, part: Partial, meter: Meter, cancel: threading.Event | None
) -> Downloaded | None:
    have, meta = part.size(), part.meta()
    stored = meta.get("etag")
    etag = stored if isinstance(stored, str) else None
    headers = {"Range": f"bytes={have}-", "If-Range": str(etag)} if have and etag else {}
    if not headers and have:
        part.discard()
        have = 0
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code == 416 and have:
            return _complete_or_restart(http, url, part, r, have, etag)
        check(r, what="study archive")
        new_etag = r.headers.get("etag")
        if r.status_code == 206:
            match = _RANGE.fullmatch(r.headers.get("content-range", ""))
            if not match or int(match.group(1)) != have or new_etag != etag:
                part.discard()  # not the continuation of our bytes: start again
                return None
            total: int | None = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            length = r.headers.get("content-length")
            total = int(length) if length else None
            have, mode = 0, "wb"
            part.save_meta(url, new_etag, total)
        # No size (a tar or tar.zst streamed while it is built): the study's size before
        # packing is the progress scale, marked as an estimate.
        scale, estimated = total, False
        if total is None and (expected := _instance_bytes(r)):
            scale, estimated = expected, True
        meter.update(have, scale, force=True, estimated=estimated)
        try:
            with part.path.open(mode) as out:
                # As received: with a chunk size httpx would hold (and lose on a drop) a part.
                for chunk in r.iter_raw():
                    if cancel is not None and cancel.is_set():
                        raise Cancelled
                    out.write(chunk)
                    have += len(chunk)
                    meter.update(have, scale, estimated=estimated)
        except OSError as exc:
            raise from_os_error(exc, "the download folder") or _write_failed(exc) from exc
    if total is not None and have < total:
        raise _Short
    if total is None:  # streamed while the server built it: its size is now known
        part.save_meta(url, new_etag, have)
    return Downloaded(part.path, new_etag, have, 0)


def _instance_bytes(r: httpx.Response) -> int | None:
    """`X-Archive-Instance-Bytes`: the total size of the study's files before packing."""
    value = r.headers.get("x-archive-instance-bytes", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _complete_or_restart(
    http: httpx.Client, url: str, part: Partial, r: httpx.Response, have: int, etag: str | None
) -> Downloaded | None:
    """416: we hold at least the whole archive. Complete if it is still the same one."""
    match = _TOTAL.fullmatch(r.headers.get("content-range", ""))
    if match and int(match.group(1)) == have:
        try:
            head = http.head(url)
        except httpx.TransportError:
            raise
        check(head, what="study archive")
        if head.headers.get("etag") == etag:
            return Downloaded(part.path, etag, have, 0)
    part.discard()
    return None


def _write_failed(exc: OSError) -> ClientError:
    return ClientError(f"Cannot write to the download folder: {exc.strerror or exc}.")


def _wait(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Cancelled
