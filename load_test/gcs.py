"""A real GCS JSON-API emulator (`gcp-storage-emulator` from PyPI) as a process on a free
loopback port, for the tests and benchmarks that run storage on `gs://`.

The official client talks to it when `STORAGE_EMULATOR_HOST` is set (anonymous credentials).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from libs.tools.dev_broker import free_port, wait_for_port


@dataclass
class GcsEmulator:
    """In-memory emulator with one bucket; `stop()` loses everything."""

    log: Path
    bucket: str = "dicomflow-test"
    quiet: bool = True  # False: one log line per request (tests that watch the traffic)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.host}

    def url(self, prefix: str = "dicomflow") -> str:
        return f"gs://{self.bucket}/{prefix}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gcp_storage_emulator",
                    "start",
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    "--in-memory",
                    f"--default-bucket={self.bucket}",
                    *(["--quiet"] if self.quiet else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"GCS emulator did not start:\n{self.log.read_text()}") from None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
