"""The container's health probe: GET /health on this service's ops port, over HTTP or HTTPS.

A service given `<PREFIX>HTTPS_CERTFILE` serves its ops endpoints over TLS only, where a plain
`http://` probe fails every time and the container is reported unhealthy (and restarted, by an
orchestrator that acts on it) while the service is well. So the probe asks in plain HTTP and,
when the server does not answer in HTTP (the connection is dropped or the reply is not HTTP,
as a TLS server does with a plain request), asks again over TLS. The TLS certificate is not
verified: the probe talks to 127.0.0.1 inside the container, which is not the name the
certificate is for, and asks only whether the service is up.

    python -m libs.tools.healthcheck [--port N]     # exit 0: healthy; 1: not (one line why)

The port defaults to `OPS_PORT_FOR_HEALTHCHECK` (set per service by docker-compose.yml).
Standard library only: it runs every 15 s in every container.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import sys
import threading
import time

NOT_HTTP = (http.client.BadStatusLine, ConnectionResetError, ssl.SSLError)


def probe(port: int, host: str = "127.0.0.1", timeout: float = 4.0) -> tuple[bool, str]:
    """(healthy, what was found): /health answered 200, over HTTP or else over TLS, both
    attempts within `timeout` seconds in all (Docker's own limit is 5 s). A socket timeout
    bounds each operation, not their sum (a server sending its reply a byte at a time
    would pass each): the attempts run in a thread, and whatever is not done by the
    deadline is an answer too."""
    found: list[tuple[bool, str]] = []
    worker = threading.Thread(
        target=lambda: found.append(_attempts(port, host, timeout)), daemon=True
    )
    worker.start()
    worker.join(timeout)
    if not found:  # the thread is left to the process's exit
        return False, f"{host}:{port}/health: no answer within {timeout:g} s"
    return found[0]


def _attempts(port: int, host: str, timeout: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    plain = f"http://{host}:{port}/health"
    try:
        return _get(http.client.HTTPConnection(host, port, timeout=timeout), "http")
    except NOT_HTTP as exc:  # a TLS server dropped the plain request (or sent a TLS alert)
        why_not_http = f"{plain}: {exc!r}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{plain}: {exc!r}"
    left = deadline - time.monotonic()
    if left <= 0:
        return False, f"{why_not_http}; no time left to ask over TLS"
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    try:
        conn = http.client.HTTPSConnection(host, port, timeout=left, context=unverified)
        return _get(conn, "https")
    except (OSError, http.client.HTTPException) as exc:
        return False, f"https://{host}:{port}/health: {exc!r} (and {why_not_http})"


def _get(conn: http.client.HTTPConnection, scheme: str) -> tuple[bool, str]:
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    finally:
        conn.close()
    where = f"{scheme}://{conn.host}:{conn.port}/health"
    return status == 200, f"{where}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    port = args.port or int(os.environ.get("OPS_PORT_FOR_HEALTHCHECK", "0"))
    if not port:
        print("no port: pass --port or set OPS_PORT_FOR_HEALTHCHECK", file=sys.stderr)
        return 1
    healthy, found = probe(port, timeout=args.timeout)
    if not healthy:
        print(found, file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
