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
