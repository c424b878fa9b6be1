"""C-STORE SCU: `DicomClient.storing(contexts)` opens one association proposing each
(SOP class, transfer syntax) pair, then sends files one at a time from asyncio.

A file is sent as stored: pynetdicom streams the data set's bytes from the file after its
meta header (`STORE_SEND_CHUNKED_DATASET`), never decoded nor re-encoded, and never held in
memory whole. A file without a file meta header is read with pydicom and sent in the
transfer syntax the caller names. No transcoding: an instance whose pair the peer did not
accept raises `NotAccepted` (the association stays usable for the others).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config

from libs.dicom_net.errors import (
    AssociationAborted,
    DicomNetError,
    DicomTimeout,
    FailureStatus,
)
from libs.dicom_net.transport import in_thread

Contexts = list[tuple[Any, list[str]]]
# The client's plumbing (`DicomClient._association`), passed in by `storing`.
Open = Callable[[Contexts, threading.Event], Any]
MAX_CONTEXTS = 128  # presentation contexts in one association (PS3.8 9.3.2.2: odd ids 1-255)


class NotAccepted(DicomNetError):
    """The peer accepted no presentation context for this SOP class and transfer syntax."""


def store_succeeded(code: int) -> bool:
    """Success, or a warning (PS3.4 B.2.3: 0xB000 coercion, 0xB006 element discarded,
    0xB007 data set does not match SOP class; 0x0001 used by some SCPs)."""
    return code == 0x0000 or code == 0x0001 or 0xB000 <= code <= 0xBFFF


class StoreSession:
    """`async with client.storing([(sop_class, transfer_syntax), ...]) as session:`"""

    def __init__(
        self,
        contexts: Sequence[tuple[str, str]],
        *,
        open_association: Open,
        timeout: float,
        peer: str,
    ) -> None:
        pairs = dict.fromkeys((str(c), str(t)) for c, t in contexts)
        if not pairs or len(pairs) > MAX_CONTEXTS:
            raise ValueError(f"between 1 and {MAX_CONTEXTS} (SOP class, syntax) pairs")
        by_class: dict[str, list[str]] = {}
        for sop_class, syntax in pairs:
            by_class.setdefault(sop_class, []).append(syntax)
        # One context per pair: the peer accepts or refuses each syntax on its own.
        self._contexts: list[tuple[Any, list[str]]] = [
            (c, [t]) for c, syntaxes in by_class.items() for t in syntaxes
        ]
        self._open = open_association
        self._timeout = timeout
        self._peer = peer
        self._cancel = threading.Event()
        self._associated: Any = None
        self._assoc: Any = None
        self._message_id = 0

    async def __aenter__(self) -> StoreSession:
        future = in_thread(self._open, self._contexts, self._cancel)
        try:
            self._associated = await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            self._cancel.set()  # no retry of the association after this
            late = (await asyncio.gather(future, return_exceptions=True))[0]
            if not isinstance(late, BaseException):  # established too late: abort it
                await asyncio.to_thread(late.__exit__, exc, exc, None)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise DicomTimeout(f"no association with {self._peer} in time") from None
        self._assoc = self._associated.__enter__()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._associated is not None:
            await asyncio.to_thread(self._associated.__exit__, exc_type, exc, tb)

    def accepts(self, sop_class: str, syntax: str) -> bool:
        return any(
            cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
            for cx in self._assoc.accepted_contexts
        )

    async def send(self, path: Path, sop_class: str, syntax: str) -> int:
        """C-STORE one file; its status code (success or warning), or raise: `NotAccepted`,
        `FailureStatus`, `AssociationAborted` or `DicomTimeout` (the last two leave it
        unknown whether the peer kept the instance: the association is then unusable)."""
        if not self.accepts(sop_class, syntax):
            raise NotAccepted(f"the peer does not accept {sop_class} in {syntax}")
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        assoc = self._assoc
        if not assoc.is_established:  # aborted since the last one (by the peer, or a watcher)
            raise AssociationAborted(f"C-STORE: the association with {self._peer} was aborted")

        def run() -> Any:
            _config.STORE_SEND_CHUNKED_DATASET = True  # the stored bytes, streamed
            try:
                try:
                    return assoc.send_c_store(path, msg_id=message_id)
                except AttributeError:  # no file meta: read it, send in the syntax named
                    ds = dcmread(path, force=True)
                    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = UID(syntax)
                    return assoc.send_c_store(ds, msg_id=message_id)
            except RuntimeError:  # pynetdicom's "must be established": aborted meanwhile
                if assoc.is_established:
                    raise
                return None

        future = in_thread(run)
        try:
            status = await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            self._cancel.set()  # the association's watcher aborts it
            await asyncio.gather(future, return_exceptions=True)
            raise DicomTimeout(f"C-STORE: no answer from {self._peer}") from None
        except asyncio.CancelledError:
            self._cancel.set()
            raise
        if not status:  # pynetdicom's empty Dataset: no valid response
            if assoc.is_aborted or not assoc.is_established:
                raise AssociationAborted("C-STORE: association aborted")
            raise DicomTimeout("C-STORE: no response (DIMSE timeout or connection lost)")
        code = int(status.Status)
        if not store_succeeded(code):
            raise FailureStatus("C-STORE", code)
        return code
