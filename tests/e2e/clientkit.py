"""For the client tests (desktop, `dicomflow fetch`, client core): a study set imported
through the real pipeline with its original files by study, and a 127.0.0.1 TCP proxy in
front of the archive server that can cut a response mid-way, slow it down, flip a byte of
its body, or refuse like a reverse proxy (403)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

NOT_INSTANCES = {"DICOMDIR", "manifest.json", ".dicomflow-study.json"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Clinic:
    """What the tests compare against: per study UID, its original files' bytes by SHA-256."""

    api: str
    archives: str  # where archives are downloaded (the API, see the `clinic` fixture)
    key: str  # a clinician's key
    originals: dict[str, dict[str, bytes]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # study uid -> PatientName

    def files_of(self, folder: Path) -> dict[str, bytes]:
        """The instances under an unpacked study folder (`*.dcm` in tar.zst, ISO 9660 names
        under `DICOM/` in ZIP and TAR), by SHA-256."""
        return {
            sha(p.read_bytes()): p.read_bytes()
            for p in folder.rglob("*")
            if p.is_file() and p.name not in NOT_INSTANCES
        }


def originals_by_study(tree: Path) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    out: dict[str, dict[str, bytes]] = {}
    names: dict[str, str] = {}
    for path in tree.rglob("*.dcm"):
        ds = dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        out.setdefault(ds.StudyInstanceUID, {})[sha(data)] = data
        names[ds.StudyInstanceUID] = str(ds.PatientName)
    return out, names


@dataclass
class Seen:
    head: str  # the request line and headers the client sent
    sent: int = 0  # response bytes passed to the client
    cut: bool = False
    header: int | None = None  # length of the response's status line and headers

    @property
    def body_sent(self) -> int:
        return self.sent - (self.header or 0)


class Proxy:
    """`cut_after`: the first `cuts` connections are closed after that many response bytes.
    `rate`: response bytes per second (None: full speed). `flip_at`: the first `flips`
    responses get one body byte inverted at that body offset. `deny`: answer 403. `delay`:
    seconds before a request is forwarded (a slow server)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.cut_after: int | None = None
        self.cuts = 1
        self.rate: float | None = None
        self.flip_at: int | None = None
        self.flips = 1
        self.deny = False
        self.delay = 0.0
        self.seen: list[Seen] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        seen = Seen(head.split(b"\r\n\r\n")[0].decode("latin-1"))
        with self._lock:
            self.seen.append(seen)
            cut = self.cut_after is not None and sum(s.cut for s in self.seen) < self.cuts
            seen.cut = cut
            flip = self.flip_at is not None and self.flips > 0
            if flip:
                self.flips -= 1
        if self.deny:
            body = b'{"detail":"Forbidden by the hospital proxy"}'
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            client.close()
            return
        if self.delay:
            time.sleep(self.delay)
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        # One request per connection keeps the accounting simple.
        upstream.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        body_start: int | None = None
        received = b""
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if body_start is None:
                    received += data
                    if b"\r\n\r\n" in received:
                        body_start = seen.header = received.index(b"\r\n\r\n") + 4
                if flip and body_start is not None and self.flip_at is not None:
                    at = body_start + self.flip_at - seen.sent
                    if 0 <= at < len(data):
                        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
                if cut and self.cut_after is not None and seen.sent + len(data) >= self.cut_after:
                    client.sendall(data[: self.cut_after - seen.sent])
                    seen.sent = self.cut_after
                    client.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(data)
                seen.sent += len(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            upstream.close()
            client.close()
