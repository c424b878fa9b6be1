"""Servers a fault test may break without disturbing anyone else's tests: a PostgreSQL
cluster of its own (the shared one is never restarted) and a small filesystem of its own
(root is available in CI)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from libs.tools.dev_broker import free_port

# Debian's server binaries (postgresql-15), the version `pg_lsclusters` shows in CI.
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Cluster:
    """A throwaway PostgreSQL server of one test, on its own port and data folder."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/faults"

    @property
    def server(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *("runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl")),
                *("-D", str(self.data), "-w", "-t", "60", "-l", str(self.data / "log")),
                *("-o", options, *args),
            ],
            check=True,
            capture_output=True,
        )

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is terminated (57P01), then it is back."""
        self.ctl("-m", "fast", "restart")


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A started cluster (database `faults` not yet created); stopped and removed after,
    whatever happened in between."""
    assert (PG_BIN / "initdb").exists(), f"PostgreSQL 15 server binaries missing in {PG_BIN}"
    folder = Path(tempfile.mkdtemp(prefix="dicomflow-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *initdb, "--no-sync"], check=True, capture_output=True
    )
    c = Cluster(data, free_port())
    c.ctl("start")
    try:
        yield c
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            c.ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def small_ext4(size_mb: int) -> Iterator[Path]:
    """An ext4 filesystem of `size_mb` in an image file, loop-mounted for the caller alone
    (a block device: O_DIRECT and its alignment rules apply, as on a real disk)."""
    folder = Path(tempfile.mkdtemp(prefix="dicomflow-ext4-"))
    image = folder.with_suffix(".img")
    with image.open("wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()
        image.unlink()


@contextlib.contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "64m") mounted for the caller alone, unmounted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="dicomflow-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()
