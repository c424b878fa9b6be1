"""The converter's handler with the in-memory store and the real renderer, in-process."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from libs.contracts.errors import PermanentError
from libs.contracts.events import FileRef, InstancePreviewed, InstanceStored
from libs.dicom.extract import extract_file
from libs.imaging.jobs import RenderRequest, RenderResult, render_file
from libs.imaging.keys import preview_key
from libs.storage import instance_key
from libs.storage.local import LocalStore
from libs.storage.memory import MemoryStore
from services.jpg_converter.handlers import handle_stored


class InProcess:
    async def render(self, path: Path, request: RenderRequest) -> RenderResult:
        return render_file(str(path), request)


def stored_event(
    name: str | Path, store: MemoryStore, *, disposition: str = "new"
) -> InstanceStored:
    path = name if isinstance(name, Path) else Path(get_testdata_file(name) or name)
    header, hashes = extract_file(str(path))
    key = instance_key(
        header.study.study_uid, header.series.series_uid, header.instance.sop_instance_uid
    )
    store.objects[key] = path.read_bytes()
    return InstanceStored(
        correlation_id=f"corr-{name}",
        source="test",
        file=FileRef(file_id=7, uri=path.as_uri(), size=path.stat().st_size),
        header=header,
        hashes=hashes,
        disposition=disposition,  # type: ignore[arg-type]
        storage_url=store.url_for(key),
    )


async def convert(event: InstanceStored, store: MemoryStore) -> InstancePreviewed:
    out = await handle_stored(event, storage=store, renderer=InProcess(), request=RenderRequest())
    assert len(out) == 1 and isinstance(out[0], InstancePreviewed)
    return out[0]


async def test_single_frame_gets_preview_and_thumbnail_next_to_the_copy() -> None:
    store = MemoryStore()
    event = stored_event("693_J2KI.dcm", store)
    previewed = await convert(event, store)
    h = event.header
    uids = (h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    assert previewed.status == "rendered" and previewed.voi == "file" and previewed.frames == 1
    assert previewed.correlation_id == event.correlation_id and previewed.file_id == 7
    assert previewed.key() == h.study.study_uid.encode()
    keys = [preview_key(*uids, "preview"), preview_key(*uids, "thumbnail")]
    assert [i.url for i in previewed.images] == [store.url_for(k) for k in keys]
    assert keys[0] == instance_key(*uids).removesuffix(".dcm") + ".preview.jpg"
    for image, key in zip(previewed.images, keys, strict=True):
        jpeg = Image.open(io.BytesIO(store.objects[key]))
        assert jpeg.format == "JPEG" and jpeg.size == (image.width, image.height)
        assert image.size == len(store.objects[key])
    assert (previewed.images[1].width, previewed.images[1].height) == (256, 256)


async def test_multiframe_gets_first_and_middle_frames() -> None:
    store = MemoryStore()
    event = stored_event("examples_ybr_color.dcm", store)
    previewed = await convert(event, store)
    assert previewed.frames == 30
    assert [(i.frame, i.kind) for i in previewed.images] == [
        (0, "preview"),
        (0, "thumbnail"),
        (15, "preview"),
        (15, "thumbnail"),
    ]
    assert previewed.images[2].url.endswith(".frame15.preview.jpg")


async def test_redelivery_is_idempotent_and_an_earlier_render_stands() -> None:
    store = MemoryStore()
    event = stored_event("CT_small.dcm", store)
    first = await convert(event, store)
    again = await convert(event, store)
    assert [i.url for i in again.images] == [i.url for i in first.images]
    thumb_key = first.images[1].url.removeprefix("memory://test/")
    store.objects[thumb_key] = b"an earlier render"  # e.g. by another library version
    third = await convert(event, store)
    assert third.status == "rendered" and third.images[1].size == len(b"an earlier render")
    assert store.objects[thumb_key] == b"an earlier render"


def corrupt_rle(tmp_path: Path) -> Path:
    """MR_small_RLE whose first RLE segment starts past the end: parses, cannot decode."""
    ds = dcmread(get_testdata_file("MR_small_RLE.dcm"))
    frame = bytearray(ds.PixelData)
    start = 16 + int.from_bytes(frame[4:8], "little")  # after the offset table's item
    frame[start + 4 : start + 8] = (0xFFFFFF).to_bytes(4, "little")
    ds.PixelData = bytes(frame)
    ds.save_as(tmp_path / "corrupt.dcm")
    return tmp_path / "corrupt.dcm"


async def test_corrupt_frame_is_recorded_with_its_reason(tmp_path: Path) -> None:
    store = MemoryStore()
    previewed = await convert(stored_event("JPEG-lossy.dcm", store), store)
    assert previewed.status == "unrenderable" and not previewed.images
    assert "Unrenderable: frame 0 cannot be decoded (1.2.840.10008.1.2.4.51)" in previewed.reason
    corrupt = await convert(stored_event(corrupt_rle(tmp_path), store), store)
    assert corrupt.status == "unrenderable", corrupt
    assert "frame 0 cannot be decoded (1.2.840.10008.1.2.5)" in corrupt.reason


async def test_no_pixels_and_conflict_copies_are_skipped() -> None:
    store = MemoryStore()
    plan = await convert(stored_event("rtplan.dcm", store), store)
    assert (plan.status, plan.reason) == ("skipped", "no pixel data (not an image object)")
    conflict = await convert(stored_event("CT_small.dcm", store, disposition="conflict"), store)
    assert conflict.status == "skipped" and "conflict" in conflict.reason
    assert not [k for k in store.objects if k.endswith(".jpg")]


async def test_missing_canonical_copy_is_a_permanent_error() -> None:
    store = MemoryStore()
    event = stored_event("CT_small.dcm", store)
    store.objects.clear()
    with pytest.raises(PermanentError, match="is not in storage"):
        await convert(event, store)


async def test_on_local_storage_the_stored_file_itself_is_rendered(tmp_path: Path) -> None:
    """No copy of the instance is made to render it: the renderer reads the stored file."""
    memory = MemoryStore()
    event = stored_event("CT_small.dcm", memory)
    store = LocalStore((tmp_path / "storage").as_uri())
    h = event.header
    key = instance_key(h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    source = tmp_path / "source.dcm"
    source.write_bytes(memory.objects[key])
    await store.put_file(key, source, expected_sha256=event.hashes.file_sha256)
    read: list[Path] = []

    class Recording(InProcess):
        async def render(self, path: Path, request: RenderRequest) -> RenderResult:
            read.append(path)
            return await super().render(path, request)

    [out] = await handle_stored(event, storage=store, renderer=Recording(), request=RenderRequest())
    assert isinstance(out, InstancePreviewed) and out.status == "rendered"
    assert read == [store.path_for(key)]
    uids = (h.study.study_uid, h.series.series_uid, h.instance.sop_instance_uid)
    assert store.path_for(preview_key(*uids, "thumbnail")).is_file()
    store.path_for(key).unlink()
    with pytest.raises(PermanentError, match="is not in storage"):
        await handle_stored(event, storage=store, renderer=Recording(), request=RenderRequest())
