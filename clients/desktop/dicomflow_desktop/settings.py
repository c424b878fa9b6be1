"""The client's settings: a JSON file in the user's config folder, and the API key in the OS
keyring (Windows Credential Manager, macOS Keychain, Secret Service on Linux) when one
works, else in a file only the user can read (0600).

`DICOMFLOW_DESKTOP_CONFIG` points at another config folder (tests, portable installs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)
KEYRING_SERVICE = "dicomflow"


@dataclass
class Settings:
    server_url: str = "http://127.0.0.1:8000"
    archive_url: str = ""  # empty: archives come from the server address
    download_folder: str = ""
    viewer_command: str = ""  # with {folder}; empty: open the folder
    archive_format: str = "tar.zst"
    ca_bundle: str = ""  # PEM file of a private CA for an https:// server; empty: system CAs
    api_key: str = ""  # not written to settings.json

    def folder(self) -> Path:
        return Path(self.download_folder or Path.home() / "DICOM")


def config_dir() -> Path:
    if override := os.environ.get("DICOMFLOW_DESKTOP_CONFIG"):
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "dicomflow"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "dicomflow"


class Store:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or config_dir()
        self.path = self.folder / "desktop.json"
        self.key_path = self.folder / "api-key"

    def load(self) -> Settings:
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            body = {}
        known = {f.name for f in fields(Settings)} - {"api_key"}
        s = Settings(**{k: str(v) for k, v in body.items() if k in known})
        s.api_key = self._load_key(s.server_url)
        return s

    def save(self, s: Settings) -> str:
        """Write the settings; return where the key went ("keyring" or the file's path)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in asdict(s).items() if k != "api_key"}
        self.path.write_text(json.dumps(body, ensure_ascii=False, indent=1), encoding="utf-8")
        if self._keyring_set(s.server_url, s.api_key):
            self.key_path.unlink(missing_ok=True)
            return "keyring"
        self._write_private(self.key_path, s.api_key)
        return str(self.key_path)

    def _load_key(self, server: str) -> str:
        from_ring = self._keyring_get(server)
        if from_ring:
            return from_ring
        try:
            return self.key_path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    @staticmethod
    def _keyring_get(server: str) -> str:
        try:
            import keyring

            return keyring.get_password(KEYRING_SERVICE, server) or ""
        except Exception:  # no usable backend (headless Linux without Secret Service)
            return ""

    @staticmethod
    def _keyring_set(server: str, key: str) -> bool:
        """True only when the keyring really kept it (the null backend accepts and drops)."""
        try:
            import keyring

            keyring.set_password(KEYRING_SERVICE, server, key)
            return keyring.get_password(KEYRING_SERVICE, server) == key
        except Exception as exc:
            log.info("no usable keyring (%s); the key goes to a private file", exc)
            return False

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)  # an existing file keeps its mode through O_CREAT
        os.replace(tmp, path)
