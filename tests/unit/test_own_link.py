"""A file the DICOM receiver staged is stored as a hard link to it, not copied, when the
storage is on the same filesystem (ADR 0034); everything else is copied as before."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from libs.contracts.errors import PermanentError
from libs.contracts.events import Hashes
from libs.dicom.extract import extract_many
from libs.staging.files import sync_folder, write_chunks
from libs.storage import instance_key
from libs.storage.base import PutRequest, StoredObject
from libs.storage.local import LocalStore
from libs.storage.stamp import OWN_MIN_AGE_NS, own_roots
from tests.unit.test_own_stamp import received


def extracted(path: Path, root: Path) -> Hashes:
    time.sleep(OWN_MIN_AGE_NS / 1e9 * 1.5)
    ((_, hashes),) = extract_many([str(path)], own_roots=own_roots([root]))  # type: ignore[misc]
    assert hashes.source_stamp is not None
    return hashes


async def put(store: LocalStore, key: str, path: Path, hashes: Hashes) -> object:
    """The storage-writer's batch path for one staged file, with the extractor's stamp."""
    (result,) = await store.put_files(
        [PutRequest(key, path, hashes.file_sha256, hashes.source_stamp)]
    )
    return result


def store_linking(tmp_path: Path, root: Path) -> LocalStore:
    store = LocalStore((tmp_path / "store").as_uri())
    store.link_own([root])
    return store


async def test_a_received_file_is_stored_as_a_second_name_of_its_inode(tmp_path: Path) -> None:
    root = tmp_path / "receiver"
    path = received(root)
    hashes = extracted(path, root)
    data = path.read_bytes()
    store = store_linking(tmp_path, root)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")
    result = await put(store, key, path, hashes)
    assert isinstance(result, StoredObject) and result.created and result.size == len(data)
    stored = store.path_for(key)
    assert stored.stat().st_ino == path.stat().st_ino and stored.stat().st_nlink == 2
    assert not list((tmp_path / "store" / ".partial").iterdir()), "no temp name left"
    # The staging cleanup removes its name; the stored object keeps the bytes.
    path.unlink()
    assert stored.read_bytes() == data and stored.stat().st_nlink == 1
    # Redelivered: the object is there with the expected bytes, nothing made again.
    (again,) = await store.put_files([PutRequest(key, stored, hashes.file_sha256, None)])
    assert isinstance(again, StoredObject) and not again.created


async def test_files_outside_the_staging_folder_are_copied(tmp_path: Path) -> None:
    root = tmp_path / "receiver"
    path = received(root)
    hashes = extracted(path, root)
    store = LocalStore((tmp_path / "store").as_uri())
    store.link_own([tmp_path / "elsewhere"])  # not the folder the file is in
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.8")
    result = await put(store, key, path, hashes)
    assert isinstance(result, StoredObject) and result.created
    assert store.path_for(key).stat().st_ino != path.stat().st_ino
    assert store.path_for(key).read_bytes() == path.read_bytes()


async def test_a_name_swapped_for_another_file_is_not_linked(tmp_path: Path) -> None:
    """The stamp names the inode that was hashed: another file put under the staged name
    (same bytes but one) is hashed and refused, never linked."""
    root = tmp_path / "receiver"
    path = received(root)
    hashes = extracted(path, root)
    other = path.with_name("other.dcm")
    other.write_bytes(path.read_bytes()[:-1] + b"\x00")
    os.replace(other, path)
    store = store_linking(tmp_path, root)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.10")
    result = await put(store, key, path, hashes)
    assert isinstance(result, PermanentError)
    assert path.stat().st_nlink == 1


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EMLINK])
async def test_a_link_the_kernel_refuses_falls_back_to_a_copy(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging on another filesystem or mount (docker-compose's volumes), protected hard
    links, the inode's link limit: the file is copied, as any file."""
    root = tmp_path / "receiver"
    path = received(root)
    hashes = extracted(path, root)
    store = store_linking(tmp_path, root)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", refuse)
    key = instance_key("1.2.3", "1.2.3.4", f"1.2.3.4.{code}")
    result = await put(store, key, path, hashes)
    assert isinstance(result, StoredObject) and result.created
    assert store.path_for(key).stat().st_ino != path.stat().st_ino
    assert store.path_for(key).read_bytes() == path.read_bytes()


async def test_a_full_disk_while_linking_is_an_error_not_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "receiver"
    path = received(root)
    hashes = extracted(path, root)
    store = store_linking(tmp_path, root)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", full)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.11")
    result = await put(store, key, path, hashes)
    assert isinstance(result, OSError) and result.errno == errno.ENOSPC


async def test_a_file_staged_by_another_source_is_stamped_at_once_and_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Orthanc and ISO watchers and STOW-RS stage through `libs.staging.files` (a
    temporary name, renamed into place, never written again): a file in their folder, as
    the extractor's and the storage-writer's settings name it, is stamped without 2 s of
    rest and stored as a second name of its inode."""
    from services.extractor.config import ExtractorSettings
    from services.storage_writer.config import StorageWriterSettings

    root = tmp_path / "staging" / "orthanc"
    monkeypatch.setenv("ORTHANC_STAGING_DIR", str(root))
    data = received(tmp_path / "receiver").read_bytes()
    path = root / "study" / "instance.dcm"
    write_chunks(path, [data[:1000], data[1000:]], durable=False)
    sync_folder(root)
    time.sleep(OWN_MIN_AGE_NS / 1e9 * 1.5)  # far below the 2 s a file not ours waits
    own = own_roots(ExtractorSettings().own_staging())
    ((_, hashes),) = extract_many([str(path)], own_roots=own)  # type: ignore[misc]
    assert hashes.source_stamp is not None
    store = LocalStore((tmp_path / "store").as_uri())
    store.link_own(StorageWriterSettings().own_staging())
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.20")
    result = await put(store, key, path, hashes)
    assert isinstance(result, StoredObject) and result.created
    assert store.path_for(key).stat().st_ino == path.stat().st_ino
    # Downloaded again (a retried round): a new inode under the name; the stored one stays.
    write_chunks(path, [data], durable=False)
    assert store.path_for(key).stat().st_ino != path.stat().st_ino
    assert store.path_for(key).read_bytes() == data
