"""The C-STORE SCP: who may associate, how many at once, and what answering Success means.

Each TCP connection is an `Association` coroutine on the service's event loop (no polling
threads): its data sets stream into staging files; `store` makes one durable (fdatasync in a
worker thread, concurrently across associations), then the `Committer` syncs its folder,
records and publishes it with whatever else is ready, and only then is Success answered. Any
failure on that path answers 0xA700, so the sender keeps the instance. pynetdicom decodes and
encodes the negotiation PDUs (see ADR 0012 for why the transfer path is our own).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pynetdicom import AE
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from libs.dicom_net.transport import TRANSFER_SYNTAXES
from libs.runtime.logging import get_logger
from libs.runtime.metrics import LATENCY_BUCKETS
from services.dicom_receiver import dimse, pdus
from services.dicom_receiver.association import CHUNK, Association, Limits, Refusal
from services.dicom_receiver.commitment import STORAGE_COMMITMENT, CommitmentSCP
from services.dicom_receiver.committer import Committer, NotRecorded
from services.dicom_receiver.config import ReceiverSettings
from services.dicom_receiver.handlers import (
    FilePool,
    Peer,
    Staged,
    StagingFile,
    free_mb,
    new_file,
)
from services.dicom_receiver.pdus import AssociateRequest
from services.dicom_receiver.transport import PduProtocol, PduReader

log = get_logger(__name__)
P = "dicomflow_dicom_receiver"
# The calling AE is the peer's to choose: as a metric label it must stay bounded.
MAX_AE_LABELS = 64
NOT_ALLOWED = "(not allowed)"  # callers the allow-list does not name
OTHER_AES = "(other)"  # with no allow-list: callers beyond the first MAX_AE_LABELS

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CONTEXT_NAME = (0x01, 0x01, 0x02)  # permanent, service user, app context unsupported
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE not recognised
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, presentation, temporary congestion
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation, local limit exceeded
SPARE_CONNECTIONS = 8  # beyond max associations, connections still negotiating


@dataclass(frozen=True)
class ReceiverMetrics:
    associations: Counter
    active: Gauge
    instances: Counter
    bytes: Counter
    store_seconds: Histogram
    staging_removed: Counter

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
            staging_removed=Counter(
                f"{P}_staging_removed_total",
                "Staged files removed: done (indexed/duplicate), kept (failed/conflict, after "
                "their longer retention), orphan (never acknowledged).",
                ["kind"],
                registry=registry,
            ),
        )


class StoreSCP:
    def __init__(
        self,
        settings: ReceiverSettings,
        committer: Committer,
        metrics: ReceiverMetrics,
        commitment: CommitmentSCP | None = None,
    ) -> None:
        self.settings = settings
        self.committer = committer
        self.metrics = metrics
        self.commitment = commitment
        self.root = settings.staging_dir.absolute()
        self.supported = supported_contexts(commitment=commitment is not None)
        self.limits = Limits(
            max_pdu=settings.max_pdu,
            acse_timeout=settings.acse_timeout_seconds,
            network_timeout=settings.network_timeout_seconds,
            max_instance_bytes=settings.max_instance_mb << 20,
            min_free_bytes=settings.min_free_mb << 20,
        )
        self.server: asyncio.Server | None = None
        self.files = FilePool(self.root)
        self.associations: dict[Association, asyncio.Task[None]] = {}
        self._ae_labels: set[str] = set()

    def ae_label(self, ae: str, address: str, *, accepted: bool) -> str:
        """The calling AE as a metric label: by name when the allow-list names it (or, with
        no allow-list, for the first MAX_AE_LABELS callers accepted), else one shared value."""
        if self.settings.allowed_callers:
            return ae if self.settings.allows(ae, address) else NOT_ALLOWED
        if accepted and (ae in self._ae_labels or len(self._ae_labels) < MAX_AE_LABELS):
            self._ae_labels.add(ae)
            return ae
        return OTHER_AES

    # -- association control -------------------------------------------------------------

    def admit(self, rq: AssociateRequest, address: str) -> Refusal | None:
        """Refuse a wrong called AE, unknown callers, too many associations, a full disk."""
        refusal: Refusal | None = None
        if rq.application_context != pdus.APPLICATION_CONTEXT:
            refusal = ("application_context", REJECT_CONTEXT_NAME)
        elif rq.called_ae != self.settings.ae_title:
            refusal = ("wrong_called_ae", REJECT_CALLED_AE)
        elif not self.settings.allows(rq.calling_ae, address):
            refusal = ("unknown_caller", REJECT_CALLING_AE)
        elif self._established() >= self.settings.max_associations:
            refusal = ("too_many", REJECT_LIMIT)
        elif free_mb(self.root) < self.settings.min_free_mb:
            refusal = ("disk_low", REJECT_CONGESTION)
        label = refusal[0] if refusal else "accepted"
        ae = self.ae_label(rq.calling_ae, address, accepted=refusal is None)
        self.metrics.associations.labels(ae, label).inc()
        if refusal is not None:
            log.warning(
                "association rejected", calling_ae=rq.calling_ae, peer=address, reason=label
            )
        return refusal

    def _established(self) -> int:
        return sum(1 for a in self.associations if a.established)

    async def _serve(self, reader: PduReader, writer: asyncio.StreamWriter) -> None:
        assoc = Association(
            reader,
            writer,
            root=self.root,
            supported=self.supported,
            limits=self.limits,
            admit=self.admit,
            store=self.store,
            on_action=self.commitment.on_action if self.commitment else None,
            files=self.files,
        )
        if len(self.associations) >= self.settings.max_associations + SPARE_CONNECTIONS:
            # Connections that have not associated yet count too, or idle sockets could
            # exhaust descriptors before the allow-list is even consulted.
            self.metrics.associations.labels("", "too_many_connections").inc()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.associations[assoc] = task
        self.metrics.active.inc()
        try:
            await assoc.run()
        except asyncio.CancelledError:  # shutdown: the A-ABORT is sent, nothing to add
            pass
        finally:
            self.metrics.active.dec()
            del self.associations[assoc]
            log.info(
                "association closed", correlation_id=assoc.peer.assoc_id, origin=assoc.peer.origin
            )

    # -- C-STORE ---------------------------------------------------------------------------

    async def store(self, peer: Peer, file: StagingFile) -> int:
        """Durable, recorded, published: then Success; otherwise 0xA700. The committer
        fdatasyncs and closes the file with the others of its group (one worker thread call
        per group, ADR 0012)."""
        started = time.perf_counter()
        status = dimse.SUCCESS
        try:
            async with asyncio.timeout(self.settings.commit_timeout_seconds):  # no extra task
                await self.committer.commit(new_file(Staged(file.path, file.size), peer), file)
        except Exception as exc:  # disk, ledger or Kafka away: the sender keeps it, retries
            log.error("cannot store instance", correlation_id=peer.assoc_id, error=repr(exc))
            status = dimse.OUT_OF_RESOURCES
            if isinstance(exc, NotRecorded):  # else a ledger row may name it: it stays
                file.discard()
        ae = self.ae_label(peer.calling_ae, peer.address, accepted=True)
        self.metrics.instances.labels(ae, f"0x{status:04X}").inc()
        if status == dimse.SUCCESS:
            self.metrics.bytes.labels(ae).inc(file.size)
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        return status

    # -- server ----------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        s = self.settings
        self.server = await asyncio.get_running_loop().create_server(
            lambda: PduProtocol(self._serve, CHUNK),  # a whole P-DATA-TF up to CHUNK
            s.host,
            s.port,
            ssl=tls_context(s),
            ssl_handshake_timeout=s.acse_timeout_seconds if s.tls_cert else None,
            backlog=128,
            reuse_port=s.processes > 1,
        )
        self.files.refill_soon()  # once the port is ours (else nothing would remove them)
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        """No new associations; open ones get an A-ABORT (what they had not been answered
        for stays with the sender)."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.close()
        for assoc, task in list(self.associations.items()):
            assoc.abort()
            task.cancel()
        await asyncio.gather(*self.associations.values(), return_exceptions=True)
        await server.wait_closed()
        await self.files.close()
        if self.commitment is not None:  # unreported: the modality asks again
            await self.commitment.stop()


def supported_contexts(*, commitment: bool = False) -> list[PresentationContext]:
    """Every storage SOP class and Verification, with the transfer syntaxes we accept, and
    Storage Commitment Push Model when it is served: there we accept either role, so a
    modality proposing to be the SCP of its N-EVENT-REPORT gets it on the same association."""
    ae = AE()
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
    if commitment:
        ae.add_supported_context(
            STORAGE_COMMITMENT, TRANSFER_SYNTAXES[:2], scu_role=True, scp_role=True
        )
    return list(ae.supported_contexts)


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
