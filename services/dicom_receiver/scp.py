"""The C-STORE SCP on pynetdicom: who may associate, and the per-instance path.

pynetdicom runs one acceptor thread per association and calls our handlers on it; a C-STORE
handler writes the bytes (in that thread, so associations write in parallel), hands the
instance to the `Committer` on the event loop and answers only once it is recorded and
published. Any failure on that path answers 0xA700, so the sender keeps the instance.
"""

from __future__ import annotations

import ssl
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from libs.dicom_net.transport import NODELAY_HANDLERS, TRANSFER_SYNTAXES
from libs.logging import get_logger
from libs.metrics import LATENCY_BUCKETS
from services.dicom_receiver.committer import Committer
from services.dicom_receiver.config import ReceiverSettings
from services.dicom_receiver.handlers import (
    OUT_OF_RESOURCES,
    SUCCESS,
    Peer,
    free_mb,
    new_file,
    write_instance,
)

log = get_logger(__name__)
P = "dicomflow_dicom_receiver"

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, presentation, temporary congestion


@dataclass(frozen=True)
class ReceiverMetrics:
    associations: Counter
    active: Gauge
    instances: Counter
    bytes: Counter
    store_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ReceiverMetrics:
        return cls(
            associations=Counter(
                f"{P}_associations_total",
                "Association requests by calling AE and outcome.",
                ["calling_ae", "outcome"],
                registry=registry,
            ),
            active=Gauge(f"{P}_active_associations", "Associations open.", registry=registry),
            instances=Counter(
                f"{P}_instances_total",
                "C-STORE requests by calling AE and the status we answered (hex).",
                ["calling_ae", "status"],
                registry=registry,
            ),
            bytes=Counter(
                f"{P}_bytes_total",
                "Bytes written to staging, by calling AE.",
                ["calling_ae"],
                registry=registry,
            ),
            store_seconds=Histogram(
                f"{P}_store_seconds",
                "C-STORE handling time: write, fsync, ledger and Kafka acknowledgement.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )


class StoreSCP:
    def __init__(
        self, settings: ReceiverSettings, committer: Committer, metrics: ReceiverMetrics
    ) -> None:
        self.settings = settings
        self.committer = committer
        self.metrics = metrics
        self.root = settings.staging_dir.absolute()
        self._peers: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()
        self.server: ThreadedAssociationServer | None = None

    # -- association control -------------------------------------------------------------

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: refuse unknown callers and a nearly full staging disk."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        if not self.settings.allows(calling, address):
            self._reject(assoc, calling, address, "unknown_caller", REJECT_CALLING_AE)
        elif free_mb(self.root) < self.settings.min_free_mb:
            self._reject(assoc, calling, address, "disk_low", REJECT_CONGESTION)

    def _reject(
        self, assoc: Any, calling: str, address: str, why: str, rsd: tuple[int, ...]
    ) -> None:
        log.warning("association rejected", calling_ae=calling, peer=address, reason=why)
        self.metrics.associations.labels(calling, why).inc()
        assoc.acse.send_reject(*rsd)
        assoc.kill()

    def on_accepted(self, event: Any) -> None:
        peer = self._peer(event.assoc)
        self.metrics.associations.labels(peer.calling_ae, "accepted").inc()
        self.metrics.active.inc()
        log.info("association accepted", correlation_id=peer.assoc_id, origin=peer.origin)

    def on_closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: released, aborted or dropped alike."""
        peer = self._peers.pop(event.assoc, None)
        if peer is not None:
            self.metrics.active.dec()
            log.info("association closed", correlation_id=peer.assoc_id, origin=peer.origin)

    def _peer(self, assoc: Any) -> Peer:
        peer = self._peers.get(assoc)
        if peer is None:
            req = assoc.requestor
            peer = Peer(
                str(req.ae_title).strip(), str(req.address), int(req.port), uuid.uuid4().hex
            )
            self._peers[assoc] = peer
        return peer

    # -- C-STORE ---------------------------------------------------------------------------

    def on_store(self, event: Any) -> int:
        started = time.perf_counter()
        peer = self._peer(event.assoc)
        status, size = self._store(event, peer)
        self.metrics.instances.labels(peer.calling_ae, f"0x{status:04X}").inc()
        if status == SUCCESS:
            self.metrics.bytes.labels(peer.calling_ae).inc(size)
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        return status

    def _store(self, event: Any, peer: Peer) -> tuple[int, int]:
        try:
            meta = encode_file_meta(event.file_meta)
            with event.request.DataSet.getbuffer() as dataset:
                staged = write_instance(self.root, meta, dataset, fsync=self.settings.fsync)
        except OSError as exc:
            log.error("cannot write instance", correlation_id=peer.assoc_id, error=repr(exc))
            return OUT_OF_RESOURCES, 0
        try:
            self.committer.submit(new_file(staged, peer), staged.path).result(
                timeout=self.settings.commit_timeout_seconds
            )
        except Exception as exc:  # ledger or Kafka away: the sender keeps it and retries
            log.error("cannot record instance", correlation_id=peer.assoc_id, error=repr(exc))
            return OUT_OF_RESOURCES, 0
        return SUCCESS, staged.size

    # -- server ----------------------------------------------------------------------------

    def application_entity(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout_seconds
        ae.network_timeout = s.network_timeout_seconds
        ae.dimse_timeout = s.network_timeout_seconds
        ae.require_called_aet = True
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        return ae

    def start(self) -> tuple[str, int]:
        handlers: list[Any] = [
            *NODELAY_HANDLERS,
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_CONN_CLOSE, self.on_closed),
            (evt.EVT_C_STORE, self.on_store),
        ]
        server = self.application_entity().start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=tls_context(self.settings),
        )
        assert server is not None  # block=False returns the server
        self.server = server
        host, port = server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            for assoc in server.active_associations:
                assoc.abort()


def tls_context(s: ReceiverSettings) -> ssl.SSLContext | None:
    if s.tls_cert is None or s.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=Path(s.tls_cert), keyfile=Path(s.tls_key))
    if s.tls_ca is not None:
        ctx.load_verify_locations(cafile=Path(s.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
