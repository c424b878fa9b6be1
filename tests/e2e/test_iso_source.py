"""The ISO/CD-DVD source end to end: real discs (DCMTK `dcmmkdir`, `genisoimage`, `xorriso`)
dropped into the inbox become import tasks, reach the index, and leave the inbox for
processed/ or failed/ with a JSON report."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import asyncpg
import pycdlib
import pytest
from discs import dicomdir, disc_tree, iso
from studies import write_study

from load_test.process_stack import Stack

SECTOR = 2048


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "+++"


@pytest.fixture
def extra_env(inbox: Path) -> dict[str, str]:
    return {"ISO_INBOX": str(inbox)}


def last_file_extent(image: Path) -> int:
    """Byte offset where the image's last file's data begins."""
    disc = pycdlib.PyCdlib()
    disc.open(str(image))
    starts = []
    for directory, _, names in disc.walk(iso_path="/"):
        for name in names:
            record = disc.get_record(iso_path=f"{directory.rstrip('/')}/{name}")
            starts.append(record.extent_location() * SECTOR)
    disc.close()
    return max(starts)


def build_discs(work: Path) -> dict[str, dict[str, Any]]:
    """Each disc in `work`, with what must become of it."""
    expect: dict[str, dict[str, Any]] = {}

    tree = work / "multi"
    sops = disc_tree(tree, ["Multi^Ann", "Multi^Bob", "Мульти^Вера"])
    dicomdir(tree)
    iso(tree, work / "multi.iso")
    expect["multi.iso"] = {"outcome": "processed", "sops": set(sops), "problems": []}

    tree = work / "escape"
    sops = disc_tree(tree, ["Escape^Eve"], per_series=3)
    dicomdir(tree)
    raw = (tree / "DICOMDIR").read_bytes()
    escaped = "DICOM\\P00\\IM000002"
    assert raw.count(escaped.encode()) == 1
    # Same length, so the record offsets in the DICOMDIR stay right.
    (tree / "DICOMDIR").write_bytes(raw.replace(escaped.encode(), b"..\\..\\..\\..\\ETC\\PW"))
    iso(tree, work / "escape.iso", tool="xorriso")  # plain ISO 9660 names: `;1`, uppercase
    kept = {s for s, p in sops.items() if not p.endswith("IM000002")}
    expect["escape.iso"] = {"outcome": "failed", "sops": kept, "problems": ["escapes"]}

    tree = work / "trunc"
    sops = disc_tree(tree, ["Trunc^Tom", "Trunc^Tim"], per_series=3)
    dicomdir(tree)
    image = iso(tree, work / "truncated.iso")
    cut = last_file_extent(image) + 100
    with image.open("r+b") as f:
        f.truncate(cut)
    expect["truncated.iso"] = {"outcome": "failed", "count": 5, "problems": ["unreadable"]}

    broken = work / "broken.iso"
    broken.write_bytes((work / "multi.iso").read_bytes()[: 16 * SECTOR + 100])
    expect["broken.iso"] = {"outcome": "failed", "sops": set(), "task": "failed"}

    tree = work / "COPIED-CD"
    sops = disc_tree(tree, ["Copied^Carl"])
    dicomdir(tree)
    expect["COPIED-CD"] = {"outcome": "processed", "sops": set(sops), "problems": []}

    tree = work / "plain"
    plain = write_study(tree / "images", patient="Plain^Paula", per_series=2)
    (tree / "README.TXT").write_text("Viewer for Windows\n")
    iso(tree, work / "nodicomdir.iso")
    expect["nodicomdir.iso"] = {"outcome": "processed", "sops": set(plain), "not_dicom": 1}
    return expect


async def test_discs_in_the_inbox(
    stack: Stack, pool: asyncpg.Pool, inbox: Path, tmp_path: Path
) -> None:
    work = tmp_path / "discs"
    expect = build_discs(work)
    for name in expect:
        shutil.move(work / name, inbox / name)  # the watcher waits for each to settle

    deadline = time.monotonic() + 150
    while {p.name for p in inbox.iterdir()} - {"processed", "failed"}:
        assert time.monotonic() < deadline, "\n".join(
            [str(sorted(p.name for p in inbox.iterdir())), stack.tail("iso-watcher")]
        )
        await asyncio.sleep(0.5)

    for name, want in expect.items():
        moved = inbox / want["outcome"] / name
        assert moved.exists(), (name, want["outcome"])
        report = json.loads((moved.parent / f"{name}.report.json").read_text())
        problems = " | ".join(p["problem"] for p in report["read"]["problems"])
        for word in want.get("problems", []):
            assert word in problems, (name, problems)
        if want.get("problems") == []:
            assert problems == "", (name, problems)
        assert report["task_status"] == want.get("task", "completed"), (name, report)
        rows = await pool.fetch(
            "SELECT sop_instance_uid, status FROM ingest_files WHERE task_id = $1",
            report["task_id"],
        )
        indexed = {r["sop_instance_uid"] for r in rows if r["status"] == "indexed"}
        if "sops" in want:
            assert indexed == want["sops"], name
        else:
            assert len(indexed) == want["count"], name
        assert report["counters"]["new_instances"] == len(indexed), name
        assert report["read"]["not_dicom"] == want.get("not_dicom", 0), name
        task = await stack.task(report["task_id"])  # the same API as folder imports
        assert task["counters"]["new_instances"] == len(indexed), task
        assert task["kind"] == ("disc-folder" if name == "COPIED-CD" else "iso")

    staged = stack.root / "staging" / "iso"
    assert not [p for p in staged.rglob("*") if p.is_file()], "staged files left behind"
