"""What can go wrong, each with a sentence a clinician understands (`str(error)`); front ends
show that sentence, never a traceback."""

from __future__ import annotations

import errno


class ClientError(Exception):
    """Base: `str()` is the message to show."""


class Unreachable(ClientError):
    pass


class Unauthorized(ClientError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDenied(ClientError):
    """403: the key's role may not do this."""


class NotFound(ClientError):
    pass


class BadRequest(ClientError):
    """422/400: a search field the server rejected."""


class ServerError(ClientError):
    pass


class DiskFull(ClientError):
    pass


class IntegrityError(ClientError):
    """The archive is truncated or its content differs from what the server listed."""


class UnsafeArchive(IntegrityError):
    """An entry would land outside the study folder (.., absolute path, link, device)."""


class Cancelled(ClientError):
    def __init__(self) -> None:
        super().__init__("Download cancelled.")


def from_os_error(exc: OSError, where: str) -> ClientError | None:
    """A full disk (or quota) as DiskFull; None for other OS errors."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"The disk holding {where} is full. Free some space and try again.")
    return None
