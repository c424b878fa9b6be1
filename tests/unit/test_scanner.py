import os
from pathlib import Path

import pytest

from services.nas_watcher import scanner
from services.nas_watcher.scanner import ScanProblems, SecondLook, look_again, stat_file, walk


def tree(root: Path) -> None:
    for rel in ["2024-01/P1/S1/a.dcm", "2024-01/P1/S1/b.dcm", "flat.dcm", "deep/x/y/z/c.dcm"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    (root / ".hidden.dcm").write_bytes(b"x")
    (root / "DICOMDIR").write_bytes(b"x")
    (root / "copy.dcm.part").write_bytes(b"x")


def names(root: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f.name), root) for d, files in walk(root) for f in files
    }


def test_any_layout_and_skips_non_instances(tmp_path: Path) -> None:
    tree(tmp_path)
    assert names(tmp_path) == {
        "2024-01/P1/S1/a.dcm",
        "2024-01/P1/S1/b.dcm",
        "flat.dcm",
        "deep/x/y/z/c.dcm",
    }


def test_symlink_loops_do_not_stop_the_scan(tmp_path: Path) -> None:
    tree(tmp_path)
    (tmp_path / "deep" / "x" / "loop").symlink_to(tmp_path)
    (tmp_path / "broken").symlink_to(tmp_path / "missing")
    problems = ScanProblems()
    found = {f.name for _, files in walk(tmp_path, problems) for f in files}
    assert found == {"a.dcm", "b.dcm", "flat.dcm", "c.dcm"}
    assert problems.loops


def test_unreadable_folders_are_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(tmp_path)
    real = os.scandir

    def scandir(path: str) -> object:
        if path.endswith("2024-01"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(scanner.os, "scandir", scandir)
    problems = ScanProblems()
    found = {f.name for _, files in walk(tmp_path, problems) for f in files}
    assert found == {"flat.dcm", "c.dcm"}
    assert problems.unreadable_dirs[0].endswith("2024-01")


def test_a_file_is_settled_when_it_looks_the_same_twice_settle_seconds_apart(
    tmp_path: Path,
) -> None:
    old = 1_600_000_000
    for name in ("done.dcm", "growing.dcm"):
        (tmp_path / name).write_bytes(b"x" * 10)
        os.utime(tmp_path / name, (old, old))  # both look long settled by their mtime
    looks = SecondLook(settle_seconds=2)
    files = [stat_file(str(tmp_path / n)) for n in ("done.dcm", "growing.dcm")]
    looks.add(str(tmp_path), [f for f in files if f is not None], now=100.0)
    assert looks.due(now=101.9) == [] and looks.wait(now=101.0) == 1.0
    with (tmp_path / "growing.dcm").open("ab") as f:
        f.write(b"more")
    os.utime(tmp_path / "growing.dcm", (old, old))
    settled, changed = look_again(looks.due(now=102.0), now=102.0)
    assert [s.file.name for s in settled] == ["done.dcm"]
    assert [(c.file.name, c.file.size, c.at, c.first) for c in changed] == [
        ("growing.dcm", 14, 102.0, 100.0)
    ]


def test_a_file_at_rest_by_its_ctime_takes_its_second_look_at_once(tmp_path: Path) -> None:
    """ctime moves with every write and cannot be set back: a file whose mtime and ctime are
    both older than QUIET_NS is not being written, and waits for no settle delay (an import
    of files at rest starts at once). An old mtime alone still waits (`cp -p`)."""
    from services.nas_watcher.scanner import QUIET_NS

    for name in ("rest.dcm", "copied.dcm"):
        (tmp_path / name).write_bytes(b"x" * 10)
    os.utime(tmp_path / "copied.dcm", (1_600_000_000, 1_600_000_000))  # old mtime only
    rest, copied = (stat_file(str(tmp_path / n)) for n in ("rest.dcm", "copied.dcm"))
    assert rest is not None and copied is not None and rest.ctime_ns > 0
    looks = SecondLook(settle_seconds=2)
    looks.add(str(tmp_path), [rest, copied], now=100.0, wall_ns=rest.ctime_ns + QUIET_NS)
    assert len(looks) == 2 and looks.wait(now=100.0) == 0.0
    assert [look.file.name for look in looks.due(now=100.0)] == ["rest.dcm"]
    assert looks.wait(now=100.0) == 2.0, "the copy with an old mtime waits as before"
    looks.add(str(tmp_path), [rest], now=100.0, wall_ns=rest.ctime_ns + QUIET_NS - 1)
    assert looks.due(now=100.0) == [], "changed within QUIET_NS: two looks"
    settled, _ = look_again(looks.due(now=102.0), now=102.0)
    assert sorted(s.file.name for s in settled) == ["copied.dcm", "rest.dcm"]


def _mountinfo(tmp_path: Path, folder: Path, kind: str) -> str:
    dev = os.stat(folder).st_dev
    info = tmp_path / f"mountinfo-{kind}"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"97 22 {os.major(dev)}:{os.minor(dev)} / {folder} rw - {kind} server:/export rw\n"
    )
    return str(info)


@pytest.mark.parametrize(
    ("kind", "at_once"), [("ext4", True), ("xfs", True), ("nfs4", False), ("cifs", False)]
)
def test_on_a_local_filesystem_a_file_quiet_for_settle_seconds_is_settled_at_once(
    tmp_path: Path, kind: str, at_once: bool
) -> None:
    """This host's kernel stamped the times of a file on a local filesystem: no clock skew to
    allow for, so a file unchanged by its ctime for settle_seconds (and a second for the
    timestamps' coarseness) is settled on the first look. A network share's server clock
    may be off: the file takes its two looks, as before."""
    from services.nas_watcher.scanner import QUIET_NS, LocalClocks

    share = tmp_path / "share"
    share.mkdir()
    (share / "a.dcm").write_bytes(b"x" * 10)
    f = stat_file(str(share / "a.dcm"))
    assert f is not None
    clocks = LocalClocks(2.0, mountinfo=_mountinfo(tmp_path, share, kind))
    assert clocks(str(share)) == (3 * 10**9 if at_once else QUIET_NS)
    looks = SecondLook(settle_seconds=2, quiet_ns_of=clocks)
    looks.add(str(share), [f], now=100.0, wall_ns=f.ctime_ns + 3 * 10**9)
    assert [look.file.name for look in looks.due(now=100.0)] == (["a.dcm"] if at_once else [])
    looks = SecondLook(settle_seconds=2, quiet_ns_of=clocks)
    looks.add(str(share), [f], now=100.0, wall_ns=f.ctime_ns + 3 * 10**9 - 1)
    assert looks.due(now=100.0) == [], "written within settle_seconds + 1 s: two looks"


def test_a_filesystem_missing_from_mountinfo_is_taken_as_remote(tmp_path: Path) -> None:
    from services.nas_watcher.scanner import QUIET_NS, LocalClocks

    empty = tmp_path / "mountinfo"
    empty.write_text("")
    assert LocalClocks(2.0, mountinfo=str(empty))(str(tmp_path)) == QUIET_NS
    assert LocalClocks(2.0, mountinfo=str(tmp_path / "absent"))(str(tmp_path)) == QUIET_NS
    assert LocalClocks(2.0)(str(tmp_path / "no-such-folder")) == QUIET_NS


def test_links_leading_out_of_the_roots_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "nas", tmp_path / "etc"
    tree(root)
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0")
    (root / "evil").symlink_to(outside)
    (root / "evil.dcm").symlink_to(outside / "passwd")
    (root / "probe.dcm").symlink_to(outside / "missing")
    (root / "inside").symlink_to(root / "2024-01")
    problems = ScanProblems()
    found = {
        os.path.relpath(os.path.join(d, f.name), root)
        for d, files in walk(root, problems, roots=[root])
        for f in files
    }
    assert found == {
        "2024-01/P1/S1/a.dcm",
        "2024-01/P1/S1/b.dcm",
        "flat.dcm",
        "deep/x/y/z/c.dcm",
    }  # the link inside the root reaches the same folder: visited once
    assert sorted(problems.escaping_links) == sorted(
        str(root / n) for n in ("evil", "evil.dcm", "probe.dcm")
    )
