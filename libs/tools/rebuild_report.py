"""What `dicomflow rebuild-index` shows: a progress line while it runs (counts, rate, ETA)
and the report at the end."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TextIO

from libs.db import rebuild as repo


class Progress:
    """One line: objects done of the total (once counted), outcomes, rate and ETA."""

    def __init__(self, out: TextIO, done: int, interval: float | None = None) -> None:
        self.out = out
        self.tty = out.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.start_done = done
        self.total: int | None = None
        self.started = time.monotonic()
        self.last = 0.0

    def show(self, done: int, tally: repo.Tally, failed: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        rate = (done - self.start_done) / max(now - self.started, 1e-6)
        if self.total is None:
            of, eta = f"{done} (counting…)", "ETA —"
        else:
            pct = 100.0 * done / self.total if self.total else 100.0
            left = max(self.total - done, 0)
            eta = f"ETA {_duration(left / rate)}" if rate > 0 else "ETA —"
            of = f"{done}/{self.total} ({pct:.1f}%)"
        line = (
            f"rebuild-index {of}  indexed {tally.indexed + tally.already_indexed}  "
            f"skipped {sum(tally.skipped.values())}  failed {failed}  {rate:.1f}/s  {eta}"
        )
        self.out.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def report(
    out: TextIO,
    url: str,
    run: repo.Run,
    t: repo.Tally,
    failed: int,
    groups: Iterable[tuple[str, int, str]],
    seconds: float,
) -> None:
    skipped = sum(t.skipped.values())
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(t.skipped.items()))
    lines = [
        f"rebuild-index of {url}: run {run.id} completed" + (" (resumed)" if run.resumed else ""),
        f"  indexed            {t.indexed} instances new to the index",
        f"  already indexed    {t.already_indexed}",
        f"  conflicting copies {t.conflicts} (recorded as conflicts)",
        f"  skipped            {skipped}" + (f" ({kinds})" if kinds else ""),
        f"  failed             {failed}",
    ]
    for reason, n, example in groups:
        lines.append(f"    {n} × {reason}  (e.g. {example})")
    lines.append(f"  this session took {seconds:.1f} s")
    print("\n".join(lines), file=out)
