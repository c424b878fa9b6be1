import hashlib
import os
from pathlib import Path

import pytest

from libs.contracts.errors import PermanentError
from libs.storage import conflict_key, instance_key, open_store
from libs.storage.local import LocalStore, path_from_file_url


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def test_copies_verifies_and_is_idempotent(tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri())
    src = tmp_path / "a.dcm"
    digest = write(src, b"DICM" * 1000)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")
    first = await store.put_file(key, src, expected_sha256=digest)
    again = await store.put_file(key, src, expected_sha256=digest)
    assert first.created and not again.created
    assert path_from_file_url(first.url).read_bytes() == src.read_bytes()
    assert await store.size(key) == 4000
    assert b"".join([c async for c in store.read(key, 1000)]) == src.read_bytes()
    assert not list((tmp_path / "store").rglob("*.tmp"))


async def test_never_overwrites_different_content(tmp_path: Path) -> None:
    store = LocalStore((tmp_path / "s").as_uri())
    a, b = tmp_path / "a", tmp_path / "b"
    key = "studies/1/2/3.dcm"
    await store.put_file(key, a, expected_sha256=write(a, b"one"))
    with pytest.raises(PermanentError, match="refusing to overwrite"):
        await store.put_file(key, b, expected_sha256=write(b, b"two"))
    assert store.path_for(key).read_bytes() == b"one"


async def test_rejects_a_source_that_changed(tmp_path: Path) -> None:
    store = LocalStore((tmp_path / "s").as_uri())
    src = tmp_path / "a"
    src.write_bytes(b"now")
    with pytest.raises(PermanentError, match="changed since it was extracted"):
        await store.put_file("studies/1/2/3.dcm", src, expected_sha256="0" * 64)
    assert not store.path_for("studies/1/2/3.dcm").exists()
    assert not list((tmp_path / "s").rglob("*.tmp"))


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs/path", "studies/../../x", "a//b", "studies/.hidden", ""]
)
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe storage key"):
        LocalStore((tmp_path / "s").as_uri()).path_for(key)


@pytest.mark.parametrize("bad", ["../1.2", "1.2/3", "1..2", "abc", "1.2.3" + ".4" * 40, ""])
def test_uids_are_validated_before_becoming_paths(bad: str) -> None:
    with pytest.raises(PermanentError):
        instance_key("1.2.3", "1.2.3.4", bad)
    with pytest.raises((PermanentError, ValueError)):
        conflict_key(bad, "a" * 64)


def test_file_urls_round_trip_odd_names(tmp_path: Path) -> None:
    odd = tmp_path / "dir with space" / "ünï cödé #1%.dcm"
    assert path_from_file_url(odd.as_uri()) == odd


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported STORAGE_URL scheme 's3'"):
        open_store("s3://bucket/x")


async def test_a_batch_is_stored_with_one_flush_and_per_item_verdicts(tmp_path: Path) -> None:
    from libs.storage.base import PutRequest, StoredObject, put_files
    from libs.storage.memory import MemoryStore

    store = LocalStore((tmp_path / "store").as_uri())
    sources = [tmp_path / f"{n}.dcm" for n in range(4)]
    digests = [write(p, f"DICM{n}".encode() * 500) for n, p in enumerate(sources)]
    keys = [instance_key("1.2.3", "1.2.3.4", f"1.2.3.4.{n}") for n in range(4)]
    await store.put_file(keys[1], sources[1], expected_sha256=digests[1])  # already there
    await store.put_file(keys[2], sources[0], expected_sha256=digests[0])  # other content
    batch = [
        PutRequest(keys[0], sources[0], digests[0]),
        PutRequest(keys[1], sources[1], digests[1]),
        PutRequest(keys[2], sources[2], digests[2]),
        PutRequest(keys[3], tmp_path / "gone.dcm", digests[3]),
        PutRequest(keys[3], sources[3], "0" * 64),  # the source changed since extraction
    ]
    for results in (await store.put_files(batch), await put_files(MemoryStore(), batch[:1])):
        first = results[0]
        assert isinstance(first, StoredObject) and first.created
    results = await store.put_files(batch)
    assert isinstance(results[0], StoredObject) and not results[0].created  # the redelivery
    assert isinstance(results[1], StoredObject) and not results[1].created
    assert isinstance(results[2], PermanentError) and "refusing to overwrite" in str(results[2])
    assert isinstance(results[3], FileNotFoundError)
    assert isinstance(results[4], PermanentError) and "source changed" in str(results[4])
    assert store.path_for(keys[0]).read_bytes() == sources[0].read_bytes()
    assert store.path_for(keys[2]).read_bytes() == sources[0].read_bytes(), "never overwritten"
    assert not store.path_for(keys[3]).exists()
    assert not list((tmp_path / "store").rglob("*.tmp"))


async def test_a_batch_makes_each_folder_once_and_removes_only_temp_files_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per batch one mkdir per series folder (not one per file), and no unlink of a temp
    file already renamed into place: only one left by a failed item is removed."""
    from libs.storage.base import PutRequest, StoredObject

    store = LocalStore((tmp_path / "store").as_uri())
    sources = [tmp_path / f"{n}.dcm" for n in range(5)]
    digests = [write(p, f"DICM{n}".encode() * 500) for n, p in enumerate(sources)]
    series = [("1.2.3", "1.2.3.4"), ("1.2.3", "1.2.3.5")]
    batch = [
        PutRequest(instance_key(*series[n % 2], f"1.2.3.9.{n}"), p, d)
        for n, (p, d) in enumerate(zip(sources, digests, strict=True))
    ]
    batch[4] = PutRequest(batch[4].key, sources[4], "0" * 64)  # fails after its copy
    made: list[Path] = []
    removed: list[Path] = []
    real_mkdir, real_unlink = Path.mkdir, Path.unlink

    depth = [0]

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if depth[0] == 0:  # the store's own calls, not pathlib's recursion for parents
            made.append(self)
        depth[0] += 1
        try:
            real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            depth[0] -= 1

    def unlink(self: Path, missing_ok: bool = False) -> None:
        removed.append(self)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "unlink", unlink)
    results = await store.put_files(batch)
    assert [isinstance(r, StoredObject) for r in results] == [True] * 4 + [False]
    folders = [p for p in made if p.name.startswith("1.2.3.")]
    assert sorted(p.name for p in folders) == ["1.2.3.4", "1.2.3.5"], made
    assert len(removed) == 1 and removed[0].name.endswith(".tmp"), removed
    assert not list((tmp_path / "store").rglob("*.tmp"))


def _aged(path: Path, seconds: float = 60.0) -> os.stat_result:
    """`path` with mtime moved into the past (ctime stays now: it is aged by the clock)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))
    return path.stat()


def test_a_stamp_is_given_only_to_a_file_unchanged_and_old_enough(tmp_path: Path) -> None:
    from libs.storage.stamp import MIN_AGE_NS, source_stamp

    source = tmp_path / "a.dcm"
    write(source, b"DICM" * 100)
    st = _aged(source)
    later = st.st_ctime_ns + MIN_AGE_NS
    assert source_stamp(st, st, now_ns=later) is not None
    assert source_stamp(st, st, now_ns=later - 1) is None, "ctime too recent: racy"
    source.write_bytes(b"DICM" * 101)
    assert source_stamp(st, source.stat(), now_ns=later + MIN_AGE_NS) is None, "changed"


async def test_a_stamped_source_is_copied_unhashed_and_a_changed_one_hashed(
    tmp_path: Path,
) -> None:
    from libs.storage.base import PutRequest, StoredObject

    store = LocalStore((tmp_path / "store").as_uri())
    sources = [tmp_path / f"{n}.dcm" for n in range(3)]
    digests = [write(p, f"DICM{n}".encode() * 300_000) for n, p in enumerate(sources)]
    stamps = [
        f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        for st in (p.stat() for p in sources)
    ]
    keys = [instance_key("1.2.3", "1.2.3.4", f"1.2.3.4.{n}") for n in range(3)]
    sources[1].write_bytes(b"DICM-changed" * 1000)  # after it was stamped: hashed, refused
    batch = [
        # the stamp vouches for the bytes: even a wrong expected hash is not looked at,
        # which shows the copy was made without hashing
        PutRequest(keys[0], sources[0], "0" * 64, stamps[0]),
        PutRequest(keys[1], sources[1], digests[1], stamps[1]),
        PutRequest(keys[2], sources[2], digests[2], "1:2:3:4"),  # another file's stamp
    ]
    results = await store.put_files(batch)
    assert isinstance(results[0], StoredObject) and results[0].created
    assert store.path_for(keys[0]).read_bytes() == sources[0].read_bytes()
    assert isinstance(results[1], PermanentError) and "source changed" in str(results[1])
    assert not store.path_for(keys[1]).exists()
    assert isinstance(results[2], StoredObject) and results[2].created
    assert store.path_for(keys[2]).read_bytes() == sources[2].read_bytes()
    assert not list((tmp_path / "store").rglob("*.tmp"))


async def test_a_write_cut_short_leaves_its_temp_file_out_of_the_store_until_swept(
    tmp_path: Path,
) -> None:
    """A writer killed mid-write leaves its temp file in `.partial/`, never beside the
    objects: not listed as a key, and swept once older than any write in progress."""
    store = LocalStore((tmp_path / "s").as_uri())
    src = tmp_path / "a"
    key = "studies/1/2/3.dcm"
    await store.put_file(key, src, expected_sha256=write(src, b"one"))
    target = store.path_for("studies/1/2/4.dcm")
    old, young = store._temp_for(target), store._temp_for(target)  # as a killed write left it
    old.write_bytes(b"half")
    young.write_bytes(b"half")
    os.utime(old, (0, 0))
    assert old.parent == tmp_path / "s" / ".partial" and old.name.endswith(".tmp")
    assert [k async for k in store.keys()] == [key]  # noqa: SIM118  # an async listing
    assert store.sweep_partial(older_than_seconds=600) == 1
    assert not old.exists() and young.exists()
    assert store.sweep_partial(older_than_seconds=0) == 1
    assert not list((tmp_path / "s").rglob("*.tmp"))
    assert LocalStore((tmp_path / "empty").as_uri()).sweep_partial(0) == 0
