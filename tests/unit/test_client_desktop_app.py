"""`dicomflow-desktop` as installed, started offscreen: the console script's main() opens the
settings first when no key is kept yet (dismissed here), then the main window, writes its
log next to the settings, and exits with code 0 when the application quits (on a timer, as
a user closing the window). A `sitecustomize` on the child's path adds the timers: the
program itself runs unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import keyring
from dicomflow_desktop.settings import Settings, Store
from keyring.backends import fail

DESKTOP = Path(__file__).resolve().parents[2] / "clients" / "desktop"
SCRIPT = Path(sys.executable).with_name("dicomflow-desktop")

PROBE = """
import json, os
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QDialog

_probe = os.environ["DESKTOP_PROBE"]
_seen = {"dialogs": [], "windows": []}
_app_exec, _dialog_exec = QApplication.exec, QDialog.exec


def _dialog(self):
    _seen["dialogs"].append(type(self).__name__)
    QTimer.singleShot(200, self.reject)  # as a user pressing Cancel
    return _dialog_exec(self)


def _quit():
    app = QApplication.instance()
    _seen["windows"] = sorted(
        w.windowTitle() for w in app.topLevelWidgets() if w.isVisible() and w.windowTitle()
    )
    with open(_probe, "w", encoding="utf-8") as f:
        json.dump(_seen, f)
    app.quit()


def _exec(*_self):  # app.exec() on the instance; QApplication.exec is static in Qt
    QTimer.singleShot(300, _quit)
    return _app_exec()


QDialog.exec = _dialog
QApplication.exec = _exec
"""


def start(
    tmp_path: Path, config: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    report = tmp_path / "probe.json"
    report.unlink(missing_ok=True)
    paths = [str(probe_dir), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "QT_QPA_PLATFORM": "offscreen",
        "DICOMFLOW_DESKTOP_CONFIG": str(config),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "DESKTOP_PROBE": str(report),
    }
    done = subprocess.run(
        [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    seen = json.loads(report.read_text()) if report.exists() else {}
    return done, seen


def test_the_console_script_is_the_app_main() -> None:
    project = tomllib.loads((DESKTOP / "pyproject.toml").read_text())
    assert project["project"]["gui-scripts"] == {"dicomflow-desktop": "dicomflow_desktop.app:main"}
    assert SCRIPT.exists(), "pip install -e clients/desktop (make deps) installs it"


def test_first_start_asks_for_settings_then_shows_the_window_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "config"
    done, seen = start(tmp_path, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert seen == {"dialogs": ["SettingsDialog"], "windows": ["dicomflow — studies"]}
    assert (config / "desktop.log").exists()
    assert not (config / "desktop.json").exists()  # Cancel keeps nothing


def test_with_a_key_kept_it_opens_the_window_directly(tmp_path: Path) -> None:
    config = tmp_path / "config"
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]  # as in the child
    try:
        Store(config).save(Settings(server_url="http://127.0.0.1:1", api_key="dfk_" + "k" * 43))
    finally:
        keyring.set_keyring(before)
    done, seen = start(tmp_path, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert seen == {"dialogs": [], "windows": ["dicomflow — studies"]}
