"""The API's archive relay alone, in its own process (as the API runs beside the packager):
`python -m load_test.bench.relay_server PORT PACKAGER_URL`. For `make bench` only: the
archive routes touch no database (the packager authenticates and audits)."""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry

from libs.http.proxy import ProxyTimeouts, upstream_client
from libs.runtime.probes import Readiness, http_server
from services.api.app import create_app


async def main(port: int, packager_url: str) -> None:
    async def publish(*_: object) -> None:
        return None

    relay = upstream_client(packager_url, ProxyTimeouts())
    app = create_app(None, publish, CollectorRegistry(), Readiness(), packager=relay)  # type: ignore[arg-type]
    await http_server(app, "127.0.0.1", port).serve()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
