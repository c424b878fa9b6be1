"""The 128-byte preamble of a Part 10 file: zeros or a TIFF header (PS3.10 7.1), else refused.

Anything else there makes the file a polyglot: a Windows or ELF executable that is also a
valid DICOM file (CVE-2019-11687), or JSON that a PACS reading its configuration folder
takes for settings (CVE-2023-33466). Such a file is refused with the reason, or, when the
operator allows it, stored with the preamble zeroed (`zeroed_copy`), a recorded change.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREAMBLE = 128
_TIFF = (b"II*\x00", b"MM\x00*")


def preamble_problem(head: bytes) -> str | None:
    """Why the preamble in `head` (the file's first 132 bytes) is refused, or None. A file
    without 'DICM' at 128 has no preamble to judge: the parser says what it is."""
    if len(head) < PREAMBLE + 4 or head[PREAMBLE : PREAMBLE + 4] != b"DICM":
        return None
    preamble = head[:PREAMBLE]
    if preamble == bytes(PREAMBLE) or preamble[:4] in _TIFF:
        return None
    return (
        f"polyglot preamble: the 128 bytes before 'DICM' hold {_kind(preamble)}, not zeros "
        "or a TIFF header (CVE-2019-11687, CVE-2023-33466)"
    )


def _kind(preamble: bytes) -> str:
    if preamble[:2] == b"MZ":
        return "a Windows executable (PE) header"
    if preamble[:4] == b"\x7fELF":
        return "an ELF executable header"
    if preamble[:2] == b"#!":
        return "a script"
    if preamble.lstrip(b" \t\r\n")[:1] in (b"{", b"["):
        return "JSON"
    return "non-zero bytes"


@contextmanager
def zeroed_copy(source: Path) -> Iterator[Path]:
    """A temporary copy of `source` with its preamble zeroed, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="dicomflow-preamble-") as folder:
        target = Path(folder, source.name)
        with source.open("rb") as src, target.open("xb") as dst:
            src.seek(PREAMBLE)
            dst.write(bytes(PREAMBLE))
            shutil.copyfileobj(src, dst, 1 << 20)
        yield target
