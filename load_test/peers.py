"""Real DICOM peers run as processes for the tests and benchmarks: Orthanc (Debian's `orthanc`
package) with its own configuration on free loopback ports.

DCMTK and Orthanc run with `TCP_NODELAY=1` in their environment: with Nagle on (their
default) every C-STORE waits ~45 ms for a delayed ACK.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from libs.tools.dev_broker import free_port

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def require_binary(name: str) -> str:
    """The path of a peer's binary; a missing one is a failure with the reason, never a skip."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make deps` (deploy/dev/system-deps.sh)")
    return path


@dataclass
class Orthanc:
    """One Orthanc server in `root`, HTTP and DICOM on free ports, remote access off.

    `modalities` maps a name to (AE title, host, port) for C-MOVE/C-STORE destinations;
    `lua` lists Lua scripts to load; `extra` is merged into the configuration last.
    """

    root: Path
    aet: str = "ORTHANC"
    username: str = "dicomflow"
    password: str = "orthanc-test-secret"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    lua: list[Path] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def config(self) -> dict[str, Any]:
        return {
            "Name": f"dicomflow-test-{self.aet}",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StableAge": 2,
            "LuaScripts": [str(p) for p in self.lua],
            "Plugins": [],
            "HttpTimeout": 30,
            **self.extra,
        }

    def start(self, timeout: float = 30.0) -> None:
        binary = require_binary("Orthanc")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--logdir=" + str(self.root), str(config)],
            env=PEER_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: see {log.name}")
            try:
                if httpx.get(f"{self.url}/system", auth=self.auth, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc not ready on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def upload(self, path: Path) -> dict[str, Any]:
        """POST one DICOM file to /instances; returns Orthanc's answer (ID, ParentStudy...)."""
        response = httpx.post(
            f"{self.url}/instances", content=path.read_bytes(), auth=self.auth, timeout=30
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result
