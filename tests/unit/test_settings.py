from pathlib import Path

import pytest

from libs.contracts.settings import ServiceSettings, is_secret, load_settings, redact_url
from services.api.config import ApiSettings
from services.backend_connector.config import ConnectorSettings
from services.dicom_receiver.config import ReceiverSettings
from services.extractor.config import ExtractorSettings
from services.index_publisher.config import IndexPublisherSettings
from services.nas_watcher.config import NasWatcherSettings
from services.orthanc_watcher.config import OrthancWatcherSettings


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


@pytest.mark.parametrize(
    ("settings", "variable", "required"),
    [
        (ApiSettings, "API_PACKAGER_CA_BUNDLE", {}),
        (OrthancWatcherSettings, "ORTHANC_CA_BUNDLE", {"ORTHANC_URL": "https://orthanc:8042"}),
        (IndexPublisherSettings, "INDEX_PUBLISHER_CA_BUNDLE", {}),
        (ConnectorSettings, "CONNECTOR_CA_BUNDLE", {}),
    ],
)
def test_a_missing_ca_bundle_stops_the_service_at_start(
    settings: type[ServiceSettings],
    variable: str,
    required: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A mistyped CA path would otherwise surface only at the first https:// request, as a
    TLS error far from its cause."""
    for name, value in required.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(variable, str(tmp_path / "ca.pem"))
    with pytest.raises(SystemExit):
        load_settings(settings)
    err = capsys.readouterr().err
    assert variable in err and "no such file" in err
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings(settings) is not None


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


def test_secret_settings_are_masked_by_name_and_the_rest_shown() -> None:
    orthanc = OrthancWatcherSettings(  # type: ignore[call-arg]
        database_url="postgresql://u@db/x",
        url="http://orthanc:8042",
        username="dicomflow",
        password="orthanc-pw",
        webhook_secret="hook-secret",
    ).redacted()
    assert orthanc["password"] == "***" and orthanc["webhook_secret"] == "***"
    assert orthanc["username"] == "dicomflow"
    assert "orthanc-pw" not in str(orthanc) and "hook-secret" not in str(orthanc)
    api = ApiSettings(database_url="postgresql://u@db/x", rate_per_key="5/second")  # type: ignore[call-arg]
    assert api.redacted()["rate_per_key"] == "5/second"  # contains "key", is no secret
    receiver = ReceiverSettings(  # type: ignore[call-arg]
        database_url="postgresql://u@db/x",
        tls_cert=Path("/etc/dicomflow/receiver.crt"),
        tls_key=Path("/etc/dicomflow/receiver.key"),
    )
    assert receiver.redacted()["tls_key"] == "/etc/dicomflow/receiver.key"  # a path, shown
    assert [n for n in ("api_key", "password", "auth_token", "tls_key") if is_secret(n)] == [
        "api_key",
        "password",
        "auth_token",
    ]
