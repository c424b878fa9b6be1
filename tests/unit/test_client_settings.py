"""Where the desktop client keeps the API key: in the OS keyring when one works (no key
file left behind), else in a file only the user can read (0600), never in desktop.json. An
in-memory keyring backend stands in for Windows Credential Manager / Secret Service; the
`fail` backend is a headless Linux box, the `null` backend one that accepts and drops."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import pytest
from dicomflow_desktop.settings import KEYRING_SERVICE, Settings, Store
from keyring.backends import fail, null

KEY = "dfk_" + "s" * 43


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1
    passwords: dict[tuple[str, str], str]

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.passwords[(service, username)]


@pytest.fixture
def ring() -> Iterator[MemoryKeyring]:
    before = keyring.get_keyring()
    backend = MemoryKeyring()  # type: ignore[no-untyped-call]  # keyring's base is untyped
    backend.passwords = {}
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(before)


@pytest.fixture
def no_ring() -> Iterator[None]:
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]  # untyped
    yield
    keyring.set_keyring(before)


def settings() -> Settings:
    return Settings(server_url="https://pacs.hospital.test", download_folder="/d", api_key=KEY)


def test_the_key_goes_to_the_keyring_and_no_file(ring: MemoryKeyring, tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    store.key_path.parent.mkdir(parents=True)
    store.key_path.write_text("dfk_old_key_from_before_the_keyring")  # a stale fallback file
    assert store.save(settings()) == "keyring"
    assert ring.passwords == {(KEYRING_SERVICE, "https://pacs.hospital.test"): KEY}
    assert not store.key_path.exists()
    assert sorted(p.name for p in (tmp_path / "config").iterdir()) == ["desktop.json"]
    assert KEY not in (tmp_path / "config" / "desktop.json").read_text()
    loaded = Store(tmp_path / "config").load()
    assert (loaded.api_key, loaded.server_url, loaded.download_folder) == (
        KEY,
        "https://pacs.hospital.test",
        "/d",
    )


def test_without_a_keyring_the_key_is_a_0600_file(no_ring: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    store.key_path.parent.mkdir(parents=True)
    store.key_path.write_text("old")
    store.key_path.chmod(0o644)  # a key file others could read is replaced by a 0600 one
    where = store.save(settings())
    assert where == str(tmp_path / "config" / "api-key")
    assert store.key_path.read_text() == KEY
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
    assert "api_key" not in json.loads((tmp_path / "config" / "desktop.json").read_text())
    assert Store(tmp_path / "config").load().api_key == KEY


def test_a_keyring_that_drops_the_key_falls_back_to_the_file(tmp_path: Path) -> None:
    before = keyring.get_keyring()
    # Accepts set_password, returns None afterwards (untyped in keyring).
    keyring.set_keyring(null.Keyring())  # type: ignore[no-untyped-call]
    try:
        store = Store(tmp_path / "config")
        assert store.save(settings()) == str(store.key_path)
        assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
        assert Store(tmp_path / "config").load().api_key == KEY
    finally:
        keyring.set_keyring(before)
