"""The client core unpacks only what it verified, into the study folder and nowhere else:
archives written by the packager's own writers unpack with every manifest hash matching; a
truncated or tampered archive, `..`, absolute paths, links and devices are refused and leave
no folder behind; Windows device names and case clashes get safe names; a full disk leaves
nothing half-written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dicomflow_client.errors import IntegrityError, UnsafeArchive
from dicomflow_client.names import entry_parts, safe_name, study_folder_parts
from dicomflow_client.unpack import MARKER, unpack

from services.packager.writers import TarWriter, TarZstWriter, ZipWriter

FILES = {
    "Иванов_Иван_20240315/1_CT/1.dcm": os.urandom(300_000),
    "Иванов_Иван_20240315/1_CT/2.dcm": b"DICM" * 1000,
    "Иванов_Иван_20240315/2_Topogram/1.dcm": os.urandom(5000),
}
ROOT = "Иванов_Иван_20240315"


def manifest(files: dict[str, bytes]) -> bytes:
    entries = [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in files.items()
    ]
    return json.dumps({"files": entries}, ensure_ascii=False).encode()


def packager_archive(
    path: Path, fmt: str, files: dict[str, bytes] = FILES, *, with_manifest: bool = True
) -> Path:
    """With the packager's writers, manifest first, as the service writes it."""
    members = {f"{ROOT}/manifest.json": manifest(files), **files} if with_manifest else files
    with path.open("wb") as out:
        when = datetime(2024, 3, 15, tzinfo=UTC)
        writer = (
            ZipWriter(out, mtime=when)
            if fmt == "zip"
            else TarWriter(out, mtime=when)
            if fmt == "tar"
            else TarZstWriter(out, mtime=when, level=3, threads=0)
        )
        for name, data in members.items():
            writer.begin(name, len(data))
            writer.write(data)
            writer.end()
        writer.close()
    return path


def plain_tar(
    path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes], *, listed: bool = True
) -> Path:
    """`listed`: with a manifest.json first naming the regular files in `data`, as every
    archive the packager writes has (in the archive's top folder when all share one)."""
    if listed:
        names = [m.name for m in members if m.isfile() and m.name in data]
        tops = {n.split("/", 1)[0] if "/" in n else "" for n in names}
        where = f"{tops.pop()}/manifest.json" if len(tops) == 1 and "" not in tops else ""
        where = where or "manifest.json"
        members = [tarfile.TarInfo(where), *members]
        data = {where: manifest({n: data[n] for n in names}), **data}
    with tarfile.open(path, "w") as tar:
        for info in members:
            body = data.get(info.name)
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MARKER
    }


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".dicomflow" not in p.parts and p != out / "p"]


@pytest.mark.parametrize("fmt", ["tar.zst", "zip", "tar"])
def test_packager_archives_unpack_whole_under_the_study_folder(tmp_path: Path, fmt: str) -> None:
    archive = packager_archive(tmp_path / f"a.{fmt}", fmt)
    target = tmp_path / "out" / "Иванов Иван" / "2024-03-15_CT"
    assert unpack(archive, fmt, target, marker={"study_uid": "1.2"}) == target
    got = tree(target)
    assert got.pop("manifest.json")
    assert got == {k.removeprefix(ROOT + "/"): v for k, v in FILES.items()}
    assert json.loads((target / MARKER).read_text())["study_uid"] == "1.2"
    assert not list((tmp_path / "out" / ".dicomflow" / "unpacking").iterdir())


def test_plain_tar_unpacks(tmp_path: Path) -> None:
    members = [tarfile.TarInfo(n) for n in ("DICOMDIR", "DICOM/S1/I1", "DICOM/S1/I2")]
    data = {"DICOMDIR": b"dir", "DICOM/S1/I1": b"one", "DICOM/S1/I2": b"two"}
    target = tmp_path / "out" / "p" / "s"
    unpack(plain_tar(tmp_path / "a.tar", members, data), "tar", target, marker={})
    got = tree(target)
    assert got.pop("manifest.json")
    assert got == data  # a DICOMDIR's relative references stay valid


@pytest.mark.parametrize("fmt", ["tar.zst", "zip", "tar"])
def test_an_archive_without_a_manifest_is_refused_by_name(tmp_path: Path, fmt: str) -> None:
    """Without manifest.json no file's hash could be checked: refused, nothing unpacked."""
    path = packager_archive(tmp_path / f"1.2.3.{fmt}.part", fmt, with_manifest=False)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError) as refused:
        unpack(path, fmt, out / "p" / "s", marker={})
    assert str(refused.value) == (
        f"The archive 1.2.3.{fmt} has no list of its files (manifest.json), so its content "
        "cannot be checked; nothing was unpacked."
    )
    assert not (out / "p").exists()
    assert not list((out / ".dicomflow" / "unpacking").iterdir())


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    members = [tarfile.TarInfo(n) for n in ("DICOM/S1/I1", "DICOM/S1/I2")]
    data = {"DICOM/S1/I1": b"one", "DICOM/S1/I2": b"two"}
    listed = plain_tar(tmp_path / "a.tar", members, data)
    extra = tarfile.TarInfo("DICOM/S1/EXTRA")
    with tarfile.open(tmp_path / "b.tar", "w") as tar, tarfile.open(listed) as src:
        for info in src.getmembers():
            tar.addfile(info, src.extractfile(info))
        extra.size = 4
        tar.addfile(extra, io.BytesIO(b"evil"))
    with pytest.raises(IntegrityError, match="'DICOM/S1/EXTRA', which its list of files"):
        unpack(tmp_path / "b.tar", "tar", tmp_path / "out" / "p" / "s", marker={})
    assert not (tmp_path / "out" / "p").exists()


@pytest.mark.parametrize("fmt", ["tar.zst", "zip", "tar"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_truncated_or_tampered_archive_is_refused_and_leaves_nothing(
    tmp_path: Path, fmt: str, damage: str
) -> None:
    archive = packager_archive(tmp_path / f"a.{fmt}", fmt)
    raw = bytearray(archive.read_bytes())
    if damage == "truncate":
        del raw[len(raw) * 2 // 3 :]
    else:  # inside the first big DICOM file's bytes
        raw[len(raw) // 2] ^= 0x55
    archive.write_bytes(bytes(raw))
    out = tmp_path / "out"
    with pytest.raises(IntegrityError):
        unpack(archive, fmt, out / "p" / "s", marker={})
    assert not (out / "p" / "s").exists()
    assert not list((out / ".dicomflow" / "unpacking").iterdir())


def test_a_file_differing_from_its_manifest_hash_is_refused(tmp_path: Path) -> None:
    files = dict(FILES)
    bad = {**files, "Иванов_Иван_20240315/1_CT/2.dcm": b"DICM" * 999 + b"EVIL"}
    members = {f"{ROOT}/manifest.json": manifest(files), **bad}
    path = tmp_path / "a.tar.zst"
    with path.open("wb") as out:
        w = TarZstWriter(out, mtime=datetime(2024, 1, 1, tzinfo=UTC), level=1, threads=0)
        for name, data in members.items():
            w.begin(name, len(data))
            w.write(data)
            w.end()
        w.close()
    with pytest.raises(IntegrityError, match="SHA-256"):
        unpack(path, "tar.zst", tmp_path / "out" / "p" / "s", marker={})
    assert not (tmp_path / "out" / "p").exists()


def _link(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "hostile",
    [
        tarfile.TarInfo("../../escaped.dcm"),
        tarfile.TarInfo("/etc/escaped.dcm"),
        tarfile.TarInfo("study/..\\..\\escaped.dcm"),
        tarfile.TarInfo("C:/escaped.dcm"),
        _link("study/link", tarfile.SYMTYPE, "/etc/passwd"),
        _link("study/hard", tarfile.LNKTYPE, "/etc/passwd"),
        _link("study/dev", tarfile.CHRTYPE),
        _link("study/fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "backslash", "drive", "symlink", "hardlink", "device", "fifo"],
)
def test_entries_that_could_escape_reject_the_archive(
    tmp_path: Path, hostile: tarfile.TarInfo
) -> None:
    first = tarfile.TarInfo("study/ok.dcm")
    data = (
        {"study/ok.dcm": b"ok", hostile.name: b"x"} if hostile.isfile() else {"study/ok.dcm": b"ok"}
    )
    archive = plain_tar(tmp_path / "a.tar", [first, hostile], data)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchive):
        unpack(archive, "tar", out / "p" / "s", marker={})
    assert not (out / "p").exists()
    assert not list(tmp_path.rglob("escaped.dcm"))


def test_zip_symlink_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo("study/link")
        info.external_attr = (0o120777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchive):
        unpack(path, "zip", tmp_path / "out" / "p" / "s", marker={})


def test_names_are_safe_on_windows_and_clashes_get_suffixes(tmp_path: Path) -> None:
    assert safe_name("CON") == "_CON"
    assert safe_name("nul.txt") == "_nul.txt"
    assert safe_name('a<b>:c"d|e?f*g\x07') == "a_b_c_d_e_f_g_"
    assert safe_name(" . trailing. ") == "trailing"
    assert safe_name("Иванов^Иван") == "Иванов Иван"
    assert entry_parts("DICOM/S1/I1") == ["DICOM", "S1", "I1"]
    assert study_folder_parts("Иванов^Иван", "P1", None, "CT: chest/abdomen") == (
        "Иванов Иван",
        "no-date_CT_ chest_abdomen",
    )
    members = [tarfile.TarInfo(n) for n in ("s/AUX.dcm", "s/a.dcm", "s/A.dcm")]
    data = {"s/AUX.dcm": b"1", "s/a.dcm": b"2", "s/A.dcm": b"3"}
    target = tmp_path / "out" / "p" / "s"
    unpack(plain_tar(tmp_path / "a.tar", members, data), "tar", target, marker={})
    got = tree(target)
    assert got.pop("manifest.json")
    assert got == {"_AUX.dcm": b"1", "a.dcm": b"2", "A_2.dcm": b"3"}


def test_full_disk_leaves_no_half_written_study_folder(tmp_path: Path) -> None:
    """In a private mount namespace (no root needed), a 1 MB tmpfs as the download folder."""
    archive = packager_archive(
        tmp_path / "a.tar.zst",
        "tar.zst",
        {f"{ROOT}/1/{i}.dcm": os.urandom(200_000) for i in range(8)},
    )
    script = """
import sys
from pathlib import Path
from dicomflow_client.errors import DiskFull
from dicomflow_client.unpack import unpack
out = Path(sys.argv[1])
try:
    unpack(Path(sys.argv[2]), "tar.zst", out / "p" / "s", marker={})
except DiskFull as exc:
    print("DISKFULL", exc)
print("LEFT", sorted(str(p.relative_to(out)) for p in out.rglob("*")))
"""
    disk = tmp_path / "disk"
    disk.mkdir()
    shell = f'mount -t tmpfs -o size=1m tmpfs "{disk}" && exec "$0" -c "$1" "{disk}" "{archive}"'
    done = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            shell,
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert "DISKFULL" in done.stdout, done.stdout + done.stderr
    assert "is full" in done.stdout
    left = done.stdout.split("LEFT", 1)[1]
    assert "'p" not in left, left  # neither the study folder nor its patient folder content


def test_the_dicomdir_is_checked_against_the_manifest_too(tmp_path: Path) -> None:
    listed = {"DICOM/IM0": b"image"}
    body = json.loads(manifest(listed))
    body["dicomdir"] = {"path": "DICOMDIR", "size": 3, "sha256": hashlib.sha256(b"dir").hexdigest()}
    members = [tarfile.TarInfo(n) for n in ("manifest.json", "DICOMDIR", "DICOM/IM0")]
    good = {"manifest.json": json.dumps(body).encode(), "DICOMDIR": b"dir", **listed}
    unpack(
        plain_tar(tmp_path / "a.tar", members, good, listed=False),
        "tar",
        tmp_path / "o" / "p" / "s",
        marker={},
    )
    bad = {**good, "DICOMDIR": b"DIR"}
    members = [tarfile.TarInfo(n) for n in ("manifest.json", "DICOMDIR", "DICOM/IM0")]
    with pytest.raises(IntegrityError, match="DICOMDIR"):
        unpack(
            plain_tar(tmp_path / "b.tar", members, bad, listed=False),
            "tar",
            tmp_path / "o" / "p" / "t",
            marker={},
        )
    assert not (tmp_path / "o" / "p" / "t").exists()
