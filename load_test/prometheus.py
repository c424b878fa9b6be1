"""A real Prometheus (Debian's `prometheus`) scraping the stack running as processes, with the
repository's scrape config and alert rules: the job names, rule files and rules are the
production ones; only the targets (the processes' ops ports) and the intervals differ."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from libs.tools.dev_broker import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def local_config(targets: dict[str, int], interval: str = "1s") -> dict[str, Any]:
    """The repository's scrape config, each job pointed at 127.0.0.1:<its process' ops port>;
    jobs of services not running here are left out (returned config names them in `missing`)."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(SCRAPE_CONFIG.parent / f) for f in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            continue
        jobs.append(
            {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{targets[name]}"]}]}
        )
    config["scrape_configs"] = jobs
    return config


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, root: Path, config: dict[str, Any]) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian package `prometheus`)")
        root.mkdir(parents=True, exist_ok=True)
        (root / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        log = root / "prometheus.log"
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        return cls(proc, f"http://127.0.0.1:{port}", log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as c:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
                try:
                    if (await c.get(f"{self.url}/-/ready", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"prometheus not ready:\n{self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)

    async def api(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as c:
            r = await c.get(f"/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result
