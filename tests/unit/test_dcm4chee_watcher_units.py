"""dcm4chee watcher pieces without databases: settings, path resolution, SQL placeholders,
and rounds over in-memory fakes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.contracts.events import Event, FileDiscovered, PatientAttrs, SeriesAttrs, StudyAttrs
from libs.db.dcm4chee import START, FoundFile, Watermark
from libs.db.ledger import LedgerRow
from services.dcm4chee_watcher.archive import ArchiveFile, ArchiveStudy, text
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings
from services.dcm4chee_watcher.connections import to_format_style
from services.dcm4chee_watcher.files import resolve
from services.dcm4chee_watcher.rounds import full_round, metadata_round

URL = "postgresql://pacs@127.0.0.1:5432/pacsdb"


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Dcm4cheeWatcherSettings:
    for name in list(os.environ):
        if name.startswith("DCM4CHEE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Dcm4cheeWatcherSettings()  # type: ignore[call-arg]


def test_settings_parse_storage_roots_and_refuse_what_cannot_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = settings(
        monkeypatch,
        DCM4CHEE_ARCHIVE_URL="mariadb://root@127.0.0.1/pacsdb",
        DCM4CHEE_SCHEMA="dcm4chee2",
        DCM4CHEE_MODE="full",
        DCM4CHEE_STORAGE_ROOTS=f"fs1={tmp_path}/a, /var/archive = {tmp_path}/b",
    )
    assert s.archive_dialect() == "mysql"
    assert s.storage_roots == {"fs1": tmp_path / "a", "/var/archive": tmp_path / "b"}
    with pytest.raises(ValidationError, match="archive_url"):
        settings(monkeypatch)  # required
    with pytest.raises(ValidationError, match="postgresql://, mysql://"):
        settings(monkeypatch, DCM4CHEE_ARCHIVE_URL="sqlite:///x.db")
    legacy_pg = settings(monkeypatch, DCM4CHEE_ARCHIVE_URL=URL, DCM4CHEE_SCHEMA="dcm4chee2")
    assert (legacy_pg.schema_version, legacy_pg.archive_dialect()) == ("dcm4chee2", "postgresql")
    with pytest.raises(ValidationError, match="needs DCM4CHEE_STORAGE_ROOTS"):
        settings(monkeypatch, DCM4CHEE_ARCHIVE_URL=URL, DCM4CHEE_MODE="full")
    with pytest.raises(ValidationError, match="key=/folder"):
        settings(monkeypatch, DCM4CHEE_ARCHIVE_URL=URL, DCM4CHEE_STORAGE_ROOTS="/no/key")
    redacted = settings(monkeypatch, DCM4CHEE_ARCHIVE_URL="mysql://u:secret@db/pacs").redacted()
    assert "secret" not in str(redacted)


def archive_file(storage: str, path: str, status: int = 0) -> ArchiveFile:
    return ArchiveFile(SeriesAttrs(series_uid="1.2"), "1.2.3", "1.2.4", storage, path, 10, status)


def test_files_resolve_only_under_their_configured_root(tmp_path: Path) -> None:
    root = tmp_path / "fs1"
    (root / "2024").mkdir(parents=True)
    (root / "2024" / "a.dcm").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"x")
    (root / "2024" / "link.dcm").symlink_to(tmp_path / "secret")
    roots = {"fs1": root}
    assert resolve(archive_file("fs1", "2024/a.dcm"), roots) == (root / "2024" / "a.dcm")
    assert resolve(archive_file("fs1", "2024\\a.dcm"), roots) == (root / "2024" / "a.dcm")
    for path in ("../secret", "/etc/passwd", "2024/link.dcm"):
        assert "leads outside storage" in str(resolve(archive_file("fs1", path), roots))
    assert "not found" in str(resolve(archive_file("fs1", "2024/b.dcm"), roots))
    assert "not in DCM4CHEE_STORAGE_ROOTS" in str(resolve(archive_file("fs2", "a.dcm"), roots))
    assert "location status 6" in str(resolve(archive_file("fs1", "2024/a.dcm", 6), roots))
    assert "no file" in str(resolve(archive_file("", ""), roots))


def test_placeholders_and_archive_text() -> None:
    assert to_format_style("a = $1 AND b > $2") == "a = %s AND b > %s"
    with pytest.raises(ValueError, match="in order"):
        to_format_style("a = $2 AND b = $1")
    with pytest.raises(ValueError, match="literal %"):
        to_format_style("a LIKE 'x%' AND b = $1")
    assert (text("*"), text(None), text(" CT "), text(7)) == ("", "", "CT", "7")


class FakeArchive:
    def __init__(self, studies: list[ArchiveStudy], files: dict[int, list[ArchiveFile]]) -> None:
        self.studies, self.files_by_pk = studies, files

    async def changed_studies(
        self, after: Watermark, *, settle_seconds: float, limit: int
    ) -> list[ArchiveStudy]:
        return [s for s in self.studies if s.watermark > after][:limit]

    async def files(self, study_pks: Sequence[int]) -> dict[int, list[ArchiveFile]]:
        return {pk: self.files_by_pk.get(pk, []) for pk in study_pks}


class FakeState:
    def __init__(self) -> None:
        self.mark = START
        self.indexed: list[str] = []
        self.recorded: list[FoundFile] = []

    async def watermark(self) -> Watermark:
        return self.mark

    async def advance(self, to: Watermark) -> None:
        self.mark = max(self.mark, to)

    async def emitted(self, study_uids: Sequence[str]) -> set[str]:
        return {f.sop_instance_uid for f in self.recorded if f.reason is None}

    async def index_study(self, study: ArchiveStudy, series: object, announce: object) -> None:
        self.indexed.append(study.study.study_uid)
        await self.advance(study.watermark)

    async def record_round(
        self, files: Sequence[FoundFile], to: Watermark, studies: Sequence[str]
    ) -> list[LedgerRow]:
        self.recorded.extend(files)
        await self.advance(to)
        return [
            LedgerRow(n, "dcm4chee", f.uri, f.origin, f.size, "c", "t")
            for n, f in enumerate(files)
            if f.reason is None
        ]


def study(pk: int, study_uid: str) -> ArchiveStudy:
    return ArchiveStudy(pk, datetime(2024, 1, 1), PatientAttrs(), StudyAttrs(study_uid=study_uid))


async def test_rounds_skip_empty_or_invalid_studies_and_hand_over_a_file_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.dcm").write_bytes(b"x")
    same_file = [archive_file("fs1", "a.dcm"), archive_file("fs1", "./a.dcm")]
    same_file[1] = ArchiveFile(same_file[1].series, "1.2.3.9", "1.2.4", "fs1", "./a.dcm", 1, 0)
    archive = FakeArchive(
        [study(1, "1.2.1"), study(2, "not a uid"), study(3, "1.2.3")],
        {1: [], 2: [archive_file("fs1", "a.dcm")], 3: same_file},
    )
    state, sent = FakeState(), []

    async def publish(events: Sequence[Event]) -> None:
        sent.extend(events)

    report = await metadata_round(archive, state, publish, settle_seconds=0, limit=10)
    assert (report.studies, report.indexed, state.indexed) == (3, 1, ["1.2.3"])
    assert state.mark == Watermark(datetime(2024, 1, 1), 3)

    state = FakeState()
    report = await full_round(
        archive, state, publish, roots={"fs1": tmp_path}, settle_seconds=0, limit=10, source="s"
    )
    assert (report.studies, report.emitted) == (3, 1)  # one file, named twice: handed over once
    assert [e.file.uri for e in sent if isinstance(e, FileDiscovered)] == [
        (tmp_path / "a.dcm").as_uri()
    ]
