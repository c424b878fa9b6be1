"""Orthanc's REST API, as far as the watcher needs it."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from libs.http.tls import tls_verify
from libs.staging.files import write_async_chunks

Level = Literal["Study", "Series", "Instance"]
_PLURAL: dict[Level, str] = {"Study": "studies", "Series": "series", "Instance": "instances"}


class ResourceNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class ChangesPage:
    changes: list[Change]
    last: int
    done: bool


class OrthancClient:
    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        timeout: float = 60.0,
        ca_bundle: Path | None = None,
    ) -> None:
        auth = httpx.BasicAuth(username, password) if username else None
        self.url = url
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no Nagle/delayed-ACK stalls
        # An https:// Orthanc: verified against `ca_bundle` (a private CA), else the system's.
        transport = httpx.AsyncHTTPTransport(verify=tls_verify(ca_bundle), socket_options=nodelay)
        # identity: Orthanc would otherwise gzip every file on the fly (HttpCompressionEnabled),
        # costing both sides far more CPU than the loopback or LAN transfer it saves.
        self._http = httpx.AsyncClient(
            base_url=url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            headers={"Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _json(self, path: str, **params: Any) -> Any:
        r = await self._http.get(path, params=params)
        if r.status_code == 404:
            raise ResourceNotFound(path)
        r.raise_for_status()
        return r.json()

    async def alive(self) -> bool:
        return (await self._http.get("/system")).status_code == 200

    async def last_seq(self) -> int:
        return int((await self._json("/changes", last=""))["Last"])

    async def changes(self, since: int, limit: int) -> ChangesPage:
        body = await self._json("/changes", since=since, limit=limit)
        return ChangesPage(
            changes=[
                Change(c["Seq"], c["ChangeType"], c["ResourceType"], c["ID"])
                for c in body["Changes"]
            ],
            last=int(body["Last"]),
            done=bool(body["Done"]),
        )

    async def instances_of(self, level: Level, resource_id: str) -> list[str]:
        if level == "Instance":
            await self._json(f"/instances/{resource_id}")
            return [resource_id]
        body = await self._json(f"/{_PLURAL[level]}/{resource_id}/instances")
        return [str(i["ID"]) for i in body]

    async def download(self, instance_id: str, target: Path) -> int:
        """Stream the instance's file, as Orthanc stored it, to `target` (atomically; not yet
        durable: see `libs.staging.files.sync_folder`)."""
        async with self._http.stream("GET", f"/instances/{instance_id}/file") as r:
            if r.status_code == 404:
                raise ResourceNotFound(instance_id)
            r.raise_for_status()
            return await write_async_chunks(target, r.aiter_bytes(), durable=False)

    async def delete(self, instance_id: str) -> None:
        r = await self._http.delete(f"/instances/{instance_id}")
        if r.status_code != 404:
            r.raise_for_status()
