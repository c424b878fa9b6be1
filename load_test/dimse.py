"""DICOM network helpers for tests and benchmarks: a corpus in several transfer syntaxes,
and DCMTK's `storescu` / `storescp` run as processes with TCP_NODELAY=1."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from libs.dicom.synthetic import generate_corpus, synthetic_uid
from libs.tools.dev_broker import free_port, wait_for_port
from load_test.peers import PEER_ENV, require_binary

# storescu proposes only uncompressed syntaxes unless told; one option per syntax
# (each proposed in its own presentation context).
PROPOSE = {
    "uncompressed": "-x=",
    "deflated": "-xd",
    "rle": "-xr",
    "jpeg-baseline": "-xy",
    "jpeg-extended": "-xx",
    "jpeg-ls-lossless": "-xt",
    "jpeg-ls-lossy": "-xu",
    "jpeg2000": "-xw",
}
# pydicom's bundled compressed files (no download) and the folder (syntax) each goes to.
BUNDLED = {
    "SC_rgb_jpeg_dcmtk.dcm": "jpeg-baseline",
    "JPEG-lossy.dcm": "jpeg-extended",
    "MR_small_jpeg_ls_lossless.dcm": "jpeg-ls-lossless",
    "SC_rgb_jls_lossy_line.dcm": "jpeg-ls-lossy",
    "JPEG2000.dcm": "jpeg2000",
    "SC_rgb_rle.dcm": "rle",
    "MR_small_RLE.dcm": "rle",
    "image_dfl.dcm": "deflated",
}


def mixed_corpus(root: Path, count: int, *, rows: int = 64, seed: int = 0) -> list[str]:
    """`count` synthetic instances (explicit VR; one in four implicit VR, deflated or RLE),
    plus pydicom's bundled compressed files given fresh UIDs, in one folder per syntax
    (named as in `PROPOSE`); returns every SOP Instance UID."""
    generate_corpus(root / "uncompressed", count, rows=rows, columns=rows, seed=seed)
    files = sorted((root / "uncompressed").rglob("*.dcm"))
    uids = []
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        uids.append(str(ds.SOPInstanceUID))
        if i % 4 == 1:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(path, enforce_file_format=True)
        elif i % 4 == 2:
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            _move(ds, path, root / "deflated" / f"{i:05d}.dcm")
        elif i % 4 == 3:
            ds.compress(RLELossless, generate_instance_uid=False)
            _move(ds, path, root / "rle" / f"{i:05d}.dcm")
    for n, (name, folder) in enumerate(BUNDLED.items()):
        source = get_testdata_file(name)
        if source is None:
            raise RuntimeError(f"pydicom's bundled test file {name} is missing")
        ds = pydicom.dcmread(source)
        uid = synthetic_uid(f"bundled:{seed}:{name}")
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = synthetic_uid(f"bundled:{seed}:study")
        ds.SeriesInstanceUID = synthetic_uid(f"bundled:{seed}:series:{n}")
        ds.PatientID = "BUNDLED"
        (root / folder).mkdir(parents=True, exist_ok=True)
        ds.save_as(root / folder / f"bundled{n:02d}.dcm", enforce_file_format=True)
        uids.append(uid)
    return uids


def _move(ds: pydicom.Dataset, old: Path, new: Path) -> None:
    new.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(new, enforce_file_format=True)
    old.unlink()


@dataclass
class StoreResult:
    returncode: int
    output: str

    @property
    def failures(self) -> int:
        """Instances storescu reports as not stored."""
        return sum(
            1 for line in self.output.splitlines() if "Store Failed" in line or "Store SCP" in line
        )


def storescu_argv(
    host: str, port: int, folder: Path, *, calling: str, called: str, extra: list[str] | None = None
) -> list[str]:
    return [
        require_binary("storescu"),
        "-aet",
        calling,
        "-aec",
        called,
        "-R",  # propose only the SOP classes of the files sent
        "+sd",
        "+r",
        "-nh",
        "--max-pdu",
        "131072",
        "--max-send-pdu",
        "131072",
        *(extra or []),
        host,
        str(port),
        str(folder),
    ]


def send_corpus(
    host: str, port: int, root: Path, *, calling: str = "STORESCU", called: str = "DICOMFLOW"
) -> StoreResult:
    """storescu once per syntax folder of a `mixed_corpus` (one association each)."""
    results = [
        storescu(host, port, root / name, calling=calling, called=called, extra=[option])
        for name, option in PROPOSE.items()
        if (root / name).is_dir()
    ]
    return StoreResult(max(r.returncode for r in results), "\n".join(r.output for r in results))


def storescu(
    host: str,
    port: int,
    folder: Path,
    *,
    calling: str = "STORESCU",
    called: str = "DICOMFLOW",
    extra: list[str] | None = None,
    timeout: float = 300.0,
) -> StoreResult:
    """Send every file under `folder` on one association (TCP_NODELAY=1)."""
    proc = subprocess.run(
        storescu_argv(host, port, folder, calling=calling, called=called, extra=extra),
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return StoreResult(proc.returncode, proc.stdout + proc.stderr)


@dataclass
class StoreSCP:
    """DCMTK's storescp writing what it receives under `folder` (reference for the bench)."""

    folder: Path
    aet: str = "STORESCP"
    port: int = 0
    fork: bool = False
    unique_names: bool = False  # a file per C-STORE, even of an instance received before
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = self.port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                require_binary("storescp"),
                "-aet",
                self.aet,
                "--max-pdu",
                "131072",
                "-od",
                str(self.folder),
                "+B",  # bit-preserving: write the dataset as received, like our receiver
                *(["--fork"] if self.fork else []),
                *(["+uf"] if self.unique_names else []),
                str(self.port),
            ],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


QR_CONFIG = """\
NetworkTCPPort  = {port}
MaxPDUSize      = 131072
MaxAssociations = 16

HostTable BEGIN
{hosts}
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{aet}  {db}  RW  (200, 1024mb)  ANY
AETable END
"""


@dataclass
class QueryRetrieveSCP:
    """DCMTK's dcmqrscp on a fixed port (free at the first start), its database under
    `folder` (kept across a restart); `peers` are the AE titles it knows (our callers, with
    port 0, and move destinations)."""

    folder: Path
    peers: dict[str, int]
    aet: str = "DCMQRSCP"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = self.port or free_port()
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(
            f"{ae.lower()} = ({ae}, 127.0.0.1, {port})" for ae, port in self.peers.items()
        )
        config = self.folder / "qr.cfg"
        config.write_text(
            QR_CONFIG.format(port=self.port, hosts=hosts, aet=self.aet, db=self.folder / "db")
        )
        self.process = subprocess.Popen(
            [require_binary("dcmqrscp"), "-c", str(config)],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def associate_rq(
    abstract_syntax: str,
    transfer_syntaxes: list[str],
    *,
    calling: str = "SENDER",
    called: str = "DICOMFLOW",
    max_pdu: int = 16384,
) -> bytes:
    """A whole A-ASSOCIATE-RQ PDU proposing one presentation context (id 1), encoded by
    pynetdicom, for tests that then speak raw bytes on the association."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID("1.2.840.10008.3.1.1.1")
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(abstract_syntax, transfer_syntaxes)
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def command_set(**elements: object) -> bytes:
    """A DIMSE command set (Implicit VR Little Endian, group length first) as pydicom encodes
    it, e.g. `command_set(CommandField=1, MessageID=1, ...)`."""
    ds = Dataset()
    ds.CommandGroupLength = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    assert body is not None
    ds.CommandGroupLength = len(body) - 12  # everything after the group length element
    encoded = encode(ds, True, True)
    assert encoded is not None
    return encoded
