"""dcm4chee watcher pieces without databases: settings, path resolution, SQL placeholders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.events import SeriesAttrs
from services.dcm4chee_watcher.archive import ArchiveFile, text
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings
from services.dcm4chee_watcher.connections import to_format_style
from services.dcm4chee_watcher.files import resolve

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
    with pytest.raises(ValidationError, match="MySQL/MariaDB only"):
        settings(monkeypatch, DCM4CHEE_ARCHIVE_URL=URL, DCM4CHEE_SCHEMA="dcm4chee2")
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
