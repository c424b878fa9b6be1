"""What the bus holds and retries as an outage, and what stays a fault of the message."""

from __future__ import annotations

import errno

import asyncpg
import pytest

from libs.kafka.consumer import is_outage


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another server"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
    ],
    ids=lambda e: (
        type(e).__name__ + getattr(e, "strerror", "")
        if isinstance(e, OSError)
        else type(e).__name__
    ),
)
def test_restarts_lost_connections_and_full_disks_are_outages(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.UniqueViolationError("duplicate key"),
        OSError(errno.EACCES, "Permission denied"),
        ValueError("bad value"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_failures_are_the_messages_own(exc: BaseException) -> None:
    assert not is_outage(exc)
