"""The JPG converter as its own process against a real broker: it consumes stored events,
writes previews next to the canonical copies, announces them on dicom.preview.v1, records
an unrenderable object with its reason, and dead-letters an instance whose copy is gone."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from PIL import Image
from prometheus_client import CollectorRegistry
from pydicom import dcmread
from pydicom.data import get_testdata_file

from libs.contracts.events import DeadLetter, FileRef, InstancePreviewed, InstanceStored
from libs.contracts.topics import dlq_topic
from libs.dicom.extract import extract_file
from libs.kafka.admin import ensure_topics
from libs.kafka.producer import Producer
from libs.runtime.metrics import ProducerMetrics
from libs.storage import instance_key
from libs.storage.local import LocalStore, path_from_file_url, sha256_file
from libs.tools.dev_broker import free_port
from tests.integration.test_bus import drain


def memory_bomb(tmp_path: Path) -> Path:
    """A small RLE file declaring 40000 x 40000 pixels: decoding it needs 3.2 GB."""
    ds = dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 40000
    ds.save_as(tmp_path / "bomb.dcm")
    return tmp_path / "bomb.dcm"


async def put_canonical(store: LocalStore, name: str | Path, file_id: int) -> InstanceStored:
    path = name if isinstance(name, Path) else Path(get_testdata_file(name) or name)
    header, hashes = extract_file(str(path))
    h = header
    key = instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    stored = await store.put_file(key, path, expected_sha256=sha256_file(path))
    return InstanceStored(
        correlation_id=f"corr-{file_id}",
        source="test",
        file=FileRef(file_id=file_id, uri=path.as_uri(), size=path.stat().st_size),
        header=header,
        hashes=hashes,
        disposition="new",
        storage_url=stored.url,
    )


def start_converter(bootstrap: str, storage_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_TOPIC_PARTITIONS": "2",
        "STORAGE_URL": storage_url,
        "JPG_CONVERTER_OPS_PORT": str(port),
        "JPG_CONVERTER_MAX_RETRIES": "1",
        "JPG_CONVERTER_MEMORY_LIMIT_MB": "512",
        "JPG_CONVERTER_RETRY_BACKOFF_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.jpg_converter"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def test_converter_service_end_to_end(broker: object, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    await ensure_topics(bootstrap, partitions=2, replication_factor=1)
    store = LocalStore((tmp_path / "storage").as_uri())
    ct = await put_canonical(store, "693_J2KI.dcm", 1)
    multi = await put_canonical(store, "examples_ybr_color.dcm", 2)
    corrupt = await put_canonical(store, "JPEG-lossy.dcm", 3)
    gone = await put_canonical(store, "CT_small.dcm", 4)
    bomb = await put_canonical(store, memory_bomb(tmp_path), 5)
    h = gone.header
    key = instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    store.path_for(key).unlink()  # deleted behind the pipeline's back

    port = free_port()
    proc = start_converter(bootstrap, store.url, port)
    producer = Producer(
        bootstrap,
        idempotence=False,
        metrics=ProducerMetrics.create("t", CollectorRegistry()),
        client_id="t",
    )
    await producer.start()
    try:
        await producer.publish(ct, multi, corrupt, gone, bomb, ct)  # ct twice: a redelivery
        raw = await drain(bootstrap, InstancePreviewed.TOPIC, 5, timeout=60)  # all but `gone`
        letters = await drain(bootstrap, dlq_topic(InstanceStored.TOPIC), 1)
        assert ready(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        await producer.stop()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]

    events = [InstancePreviewed.model_validate_json(v) for v in raw]
    by_file = {e.file_id: e for e in events}
    assert sorted(e.file_id for e in events) == [1, 1, 2, 3, 5], output[-3000:]
    assert by_file[1].status == "rendered" and by_file[1].correlation_id == "corr-1"
    assert by_file[2].status == "rendered" and {i.frame for i in by_file[2].images} == {0, 15}
    for event in (by_file[1], by_file[2]):
        for image in event.images:
            path = path_from_file_url(image.url)
            assert path.parent == path_from_file_url(store.url_for(instance_key(
                event.study_uid, event.series_uid, event.sop_instance_uid))).parent  # fmt: skip
            jpeg = Image.open(io.BytesIO(path.read_bytes()))
            assert jpeg.format == "JPEG" and jpeg.size == (image.width, image.height)
    assert by_file[3].status == "unrenderable" and "cannot be decoded" in by_file[3].reason
    assert by_file[5].status == "unrenderable" and "more than 512 MB" in by_file[5].reason

    letter = DeadLetter.model_validate_json(letters[0])
    assert (letter.stage, letter.file_id, letter.error_type) == (
        "jpg-converter",
        4,
        "PermanentError",
    )
    assert "not in storage" in letter.error
    assert (
        'dicomflow_jpg_converter_messages_total{status="ok",topic="dicom.stored.v1"} 5.0' in metrics
    )
    assert 'dicomflow_jpg_converter_previews_total{status="unrenderable"} 2.0' in metrics
    assert '"correlation_id": "corr-3"' in output or '"correlation_id":"corr-3"' in output
