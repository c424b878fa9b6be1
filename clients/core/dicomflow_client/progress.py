"""Download progress as a front end shows it: bytes, speed, time left."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    done: int  # bytes of the archive on disk (a resumed download starts above 0)
    # The archive's size; None when neither it nor an estimate is known. While the server
    # streams an archive it is still building (no Content-Length), the study's size before
    # packing (X-Archive-Instance-Bytes) with `estimated` True: a tar is a little larger (a
    # header per file), a tar.zst smaller (compressed).
    total: int | None
    speed: float  # bytes per second over the last few seconds
    stage: str = "download"  # "download", "verify" or "unpack"
    estimated: bool = False  # `total` is an estimate, not the archive's exact size

    @property
    def eta(self) -> float | None:
        if self.total is None or self.speed <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.speed)

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)


ProgressFn = Callable[[Progress], None]


class Meter:
    """Speed over a sliding window; calls `report` at most every `interval` seconds."""

    def __init__(self, report: ProgressFn | None, window: float = 3.0, interval: float = 0.2):
        self._report = report
        self._window, self._interval = window, interval
        self._samples: deque[tuple[float, int]] = deque()
        self._last = 0.0

    def update(
        self, done: int, total: int | None, *, force: bool = False, estimated: bool = False
    ) -> None:
        if self._report is None:
            return
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        t0, d0 = self._samples[0]
        speed = (done - d0) / (now - t0) if now > t0 else 0.0
        if estimated and total is not None:
            total = max(total, done)  # an estimate passed (tar headers): never "120 of 100"
        self._report(Progress(done, total, max(0.0, speed), estimated=estimated))


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_total(p: Progress) -> str:
    """The archive's size as a front end writes it: "?" unknown, "about 1.1 GB" estimated."""
    if not p.total:
        return "?"
    return f"about {human_size(p.total)}" if p.estimated else human_size(p.total)


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"
