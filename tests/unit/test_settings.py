import pytest

from libs.contracts.settings import load_settings, redact_url
from services.extractor.config import ExtractorSettings
from services.nas_watcher.config import NasWatcherSettings


def test_bad_values_stop_the_service_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXTRACTOR_CONCURRENCY", "0")
    monkeypatch.setenv("EXTRACTOR_OPS_PORT", "99999")
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    with pytest.raises(SystemExit) as exc:
        load_settings(ExtractorSettings)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in ("EXTRACTOR_CONCURRENCY", "EXTRACTOR_OPS_PORT", "DATABASE_URL"):
        assert name in err


def test_roots_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_ROOTS", "/a, /b/c")
    s = load_settings(NasWatcherSettings)
    assert [str(p) for p in s.roots] == ["/a", "/b/c"]
    assert s.allowed_import_roots() == s.roots


def test_passwords_never_reach_the_logs() -> None:
    assert redact_url("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    s = ExtractorSettings(database_url="postgresql://u:secret@db/x")  # type: ignore[call-arg]
    assert "secret" in s.database_url
    assert "secret" not in str(s.redacted())
