"""DICOM UID grammar: the one check every UID passes before it names a path or a row.

A UID read from a file is attacker-controlled text. It may only become part of a
storage key or a path after `require_uid`, which accepts exactly the DICOM grammar
(PS3.5 §9.1: digits and dots, at most 64 characters). Leading zeros in a component
are not allowed by the standard but are accepted here: real archives contain them,
and they are harmless in paths.
"""

from __future__ import annotations

import re

from libs.contracts.errors import PermanentError

UID_MAX_LENGTH = 64
# `[0-9]`, not `\d`: `\d` also matches non-ASCII digits such as "٣". Always used with
# `fullmatch`, so a trailing newline (which `$` would tolerate) is rejected too.
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(s: object) -> bool:
    """True when `s` is a string in the DICOM UID grammar and at most 64 characters."""
    return isinstance(s, str) and len(s) <= UID_MAX_LENGTH and UID_RE.fullmatch(s) is not None


def require_uid(value: object, what: str, *, error: type[PermanentError] = PermanentError) -> str:
    """Return `value` if it is a valid UID, else raise `error` naming `what`.

    The message quotes at most 80 characters of the value, so a hostile 1 MB "UID"
    cannot blow up a log line or a dead-letter record.
    """
    if is_valid_uid(value):
        assert isinstance(value, str)  # narrowed by is_valid_uid
        return value
    if value is None or value == "":
        raise error(f"missing {what}")
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    size = f", {len(value)} characters" if isinstance(value, str) else ""
    raise error(
        f"invalid {what}: {shown}{size} (a UID is digits and dots, at most "
        f"{UID_MAX_LENGTH} characters)"
    )
