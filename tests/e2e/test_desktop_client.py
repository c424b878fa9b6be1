"""The desktop client as a clinician uses it (pytest-qt, offscreen) against a running stack:
a Cyrillic search fills the table with dates, modalities, counts and sizes; a download
survives a dropped connection by resuming with Range; several studies download at once in
another format; a plain TAR streamed while it is built shows an estimated size and unpacks
with a DICOMDIR that finds every instance; the viewer command receives the study folder; a
cancelled download resumes after the client restarts; the API key lands in a 0600 file
without a keyring; a bad key or an unreachable server is a sentence, not a traceback. One
run under Xvfb saves a screenshot (tests/artifacts/desktop-client.png)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from clientkit import Clinic, Proxy, sha
from dicomflow_client import Progress
from pydicom.fileset import FileSet

from libs.tools.dev_broker import free_port

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from dicomflow_desktop.settings import Settings, Store
from dicomflow_desktop.settings_dialog import SettingsDialog
from dicomflow_desktop.window import MainWindow
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QApplication, QWidget

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT = 90_000  # ms; the machine may be busy


@pytest.fixture(autouse=True)
def no_keyring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OS keyring (as on a headless Linux box): the key must go to a private file."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("DICOMFLOW_DESKTOP_CONFIG", str(tmp_path / "config"))


def window(qtbot: object, store: Store, settings: Settings | None = None) -> MainWindow:
    w = MainWindow(store, settings)
    qtbot.addWidget(w)  # type: ignore[attr-defined]
    w.show()
    return w


def type_text(widget: QWidget, text: str) -> None:
    """Key presses carrying the text, as a keyboard layout sends them (QTest.keyClicks maps
    characters to Latin-1 key codes and aborts on Cyrillic)."""
    for ch in text:
        for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            QApplication.sendEvent(widget, QKeyEvent(kind, 0, Qt.KeyboardModifier.NoModifier, ch))


def search(qtbot: object, w: MainWindow, name: str = "", year: str = "") -> None:
    w.name.clear()
    w.name.setFocus()
    type_text(w.name, name)
    assert w.name.text() == name
    w.year.setText(year)
    w.table.setRowCount(0)
    w.count_label.setText("")
    qtbot.mouseClick(w.search_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: "found" in w.count_label.text() or bool(w.error_label.text()), timeout=WAIT
    )
    assert not w.error_label.text(), w.error_label.text()


def download(qtbot: object, w: MainWindow) -> None:
    w.error_label.setText("")
    w.progress_label.setText("")
    qtbot.mouseClick(w.download_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: not w.downloading, timeout=WAIT)  # type: ignore[attr-defined]


def cells(w: MainWindow, row: int) -> list[str]:
    return [w.table.item(row, c).text() for c in range(w.table.columnCount())]


async def test_desktop_search_download_resume_unpack_and_viewer(
    clinic: Clinic, qtbot: object, tmp_path: Path
) -> None:
    ivanov = next(u for u, n in clinic.patients.items() if n == "Иванов^Иван")
    viewer_log = tmp_path / "viewer.txt"
    viewer = tmp_path / "viewer.py"
    viewer.write_text(
        f"import sys, pathlib\npathlib.Path({str(viewer_log)!r}).write_text(sys.argv[1])\n"
    )
    upstream = int(clinic.archives.rsplit(":", 1)[1])
    with Proxy(upstream) as proxy:
        store = Store(tmp_path / "config")
        settings = Settings(
            server_url=clinic.api,
            archive_url=proxy.url,
            download_folder=str(tmp_path / "Снимки"),
            viewer_command=f'"{sys.executable}" "{viewer}" "{{folder}}"',
            api_key=clinic.key,
        )
        w = window(qtbot, store)
        assert w.settings.api_key == ""
        w.apply_settings(settings)
        key_file = tmp_path / "config" / "api-key"
        assert key_file.read_text() == clinic.key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert clinic.key not in (tmp_path / "config" / "desktop.json").read_text()
        assert "readable only by you" in w.progress_label.text()

        search(qtbot, w, "иванов")
        assert w.table.rowCount() == 1 and w.count_label.text() == "1 study found"
        row = cells(w, 0)
        assert row[:8] == [
            "Иванов Иван", "1970-01-01", "M", "2024-01-15", "Study 0", "CT, MR", "2", "24"
        ]  # fmt: skip
        assert row[8].endswith("KB")
        assert not w.download_button.isEnabled()
        w.table.selectRow(0)
        assert w.download_button.isEnabled() and not w.viewer_button.isEnabled()

        proxy.cut_after, proxy.cuts = 30_000, 1
        download(qtbot, w)
        assert not w.error_label.text(), w.error_label.text()
        folder = tmp_path / "Снимки" / "Иванов Иван" / "2024-01-15_Study 0"
        assert w.progress_label.text() == f"Downloaded to {folder}"
        assert w.progress.value() == 1000
        assert clinic.files_of(folder) == clinic.originals[ivanov]
        first, second = proxy.seen
        assert first.cut and f"range: bytes={first.body_sent}-" in second.head.lower()

        assert w.viewer_button.isEnabled()
        qtbot.mouseClick(w.viewer_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        qtbot.waitUntil(viewer_log.exists, timeout=WAIT)  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: viewer_log.read_text() == str(folder), timeout=WAIT)  # type: ignore[attr-defined]

        # "Open folder": the desktop's opener (xdg-open on Linux) gets the study folder.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        opened = tmp_path / "opened.txt"
        opener = bin_dir / "xdg-open"
        opener.write_text(f'#!/bin/sh\nprintf %s "$1" > "{opened}"\n')
        opener.chmod(0o755)
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        try:
            qtbot.mouseClick(w.folder_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
            wanted = str(folder)
            qtbot.waitUntil(lambda: opened.exists() and opened.read_text() == wanted, timeout=WAIT)  # type: ignore[attr-defined]
        finally:
            os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]

        # Several studies at once, as ZIP.
        w.settings.archive_format = "zip"
        search(qtbot, w, year="2024")
        assert w.table.rowCount() == 2
        w.table.selectAll()
        proxy.cut_after = None
        proxy.seen.clear()
        download(qtbot, w)
        assert not w.error_label.text(), w.error_label.text()
        assert len(proxy.seen) == 2 and all("format=zip" in s.head for s in proxy.seen)
        assert set(w.folders) == set(clinic.originals)
        for uid, got in w.folders.items():
            assert clinic.files_of(got) == clinic.originals[uid]

        # One study as plain TAR, not built yet (the clinic fixture builds tar.zst and ZIP):
        # streamed without a length, so the bar's scale is the study's size, "of about".
        w.settings.archive_format = "tar"
        w.table.clearSelection()
        w.table.selectRow(next(r for r, st in enumerate(w.studies) if st.study_uid == ivanov))
        proxy.seen.clear()
        shown: list[tuple[Progress, str]] = []
        show = w._progress

        def record(p: Progress) -> None:
            show(p)
            shown.append((p, w.progress_label.text()))

        w._progress = record  # type: ignore[method-assign]
        download(qtbot, w)
        assert not w.error_label.text(), w.error_label.text()
        assert len(proxy.seen) == 1 and "archive?format=tar HTTP/1.1" in proxy.seen[0].head
        assert shown[0][0].estimated and " of about " in shown[0][1], shown[0]
        assert w.folders[ivanov] == folder  # the same study: its folder replaced
        marker = json.loads((folder / ".dicomflow-study.json").read_text(encoding="utf-8"))
        assert (marker["study_uid"], marker["format"]) == (ivanov, "tar")
        assert clinic.files_of(folder) == clinic.originals[ivanov]
        dicomdir = [sha(Path(i.path).read_bytes()) for i in FileSet(folder / "DICOMDIR")]
        assert sorted(dicomdir) == sorted(clinic.originals[ivanov])  # every instance, once
        w.close()


async def test_desktop_resumes_after_cancel_and_restart_and_explains_errors(
    clinic: Clinic, qtbot: object, tmp_path: Path
) -> None:
    muller = next(u for u, n in clinic.patients.items() if n == "Müller^José")
    upstream = int(clinic.archives.rsplit(":", 1)[1])
    out = tmp_path / "out"
    with Proxy(upstream) as proxy:
        store = Store(tmp_path / "config")
        store.save(
            Settings(
                server_url=clinic.api,
                archive_url=proxy.url,
                download_folder=str(out),
                archive_format="zip",
                api_key=clinic.key,
            )
        )
        proxy.rate = 15_000.0
        w = window(qtbot, store)
        search(qtbot, w, "muller")
        w.table.selectRow(0)
        qtbot.mouseClick(w.download_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        part = out / ".dicomflow" / "downloads" / f"{muller}.zip.part"
        qtbot.waitUntil(lambda: part.exists() and part.stat().st_size > 20_000, timeout=WAIT)  # type: ignore[attr-defined]
        assert " of " in w.progress_label.text() and "/s" in w.progress_label.text()
        assert "left" in w.progress_label.text()
        qtbot.mouseClick(w.cancel_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: not w.downloading, timeout=WAIT)  # type: ignore[attr-defined]
        assert w.error_label.text().startswith("Download cancelled.")
        kept = part.stat().st_size
        assert not (out / "Müller José").exists()
        w.close()

        proxy.rate = None
        again = window(qtbot, Store(tmp_path / "config"))  # a restarted client
        assert again.settings.api_key == clinic.key
        search(qtbot, again, "Müller")
        again.table.selectRow(0)
        download(qtbot, again)
        assert not again.error_label.text(), again.error_label.text()
        assert f"resumed at {kept // 1024}" in again.progress_label.text().replace(".", " ")
        assert f"range: bytes={kept}-" in proxy.seen[-1].head.lower()
        assert clinic.files_of(again.folders[muller]) == clinic.originals[muller]

        # A slow search (the proxy holds it 3 s) replaced by a new one: the newest answer is
        # shown, and the old one arriving later does not overwrite it.
        proxy.delay = 3.0
        again.settings.server_url = proxy.url
        again.name.setText("Müller")
        qtbot.mouseClick(again.search_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        slow = again.search_worker
        again.settings.server_url = clinic.api
        search(qtbot, again, "Иванов")
        assert slow is not None and slow.isRunning()  # still arriving
        assert [cells(again, r)[0] for r in range(again.table.rowCount())] == ["Иванов Иван"]
        qtbot.waitUntil(lambda: not slow.isRunning() and not again._replaced, timeout=WAIT)  # type: ignore[attr-defined]
        qtbot.wait(200)  # type: ignore[attr-defined]  # its queued signals are delivered
        assert [cells(again, r)[0] for r in range(again.table.rowCount())] == ["Иванов Иван"]
        assert not again.error_label.text(), again.error_label.text()
        proxy.delay = 0.0

        again.settings.api_key = "dfk_" + "x" * 43
        again.name.setText("Müller")
        qtbot.mouseClick(again.search_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: bool(again.error_label.text()), timeout=WAIT)  # type: ignore[attr-defined]
        assert "API key" in again.error_label.text() and "401" in again.error_label.text()
        again.settings.api_key = clinic.key
        again.settings.server_url = f"http://127.0.0.1:{free_port()}"
        again.error_label.setText("")
        qtbot.mouseClick(again.search_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: bool(again.error_label.text()), timeout=WAIT)  # type: ignore[attr-defined]
        assert again.error_label.text().startswith("Cannot reach the server")
        again.birth_date.setText("31.02.1970")
        qtbot.mouseClick(again.search_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
        assert again.error_label.text().startswith("Date of birth: write the date as")
        again.close()


def test_desktop_ca_bundle_setting_is_kept_and_reaches_the_client(
    qtbot: object, tmp_path: Path
) -> None:
    """The CA certificate file is a setting (dialog, settings.json) and is what the client
    verifies an https:// server with: an unreadable one is said in the window."""
    missing = str(tmp_path / "hospital-ca.pem")
    store = Store(tmp_path / "config")
    store.save(Settings(server_url="https://localhost:1", api_key="dfk_" + "k" * 43))
    w = window(qtbot, store)
    dialog = SettingsDialog(w.settings)
    dialog.ca_bundle.setText(missing)
    w.apply_settings(dialog.settings())
    assert Store(tmp_path / "config").load().ca_bundle == missing
    w.name.setText("Иванов")
    qtbot.mouseClick(w.search_button, Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: bool(w.error_label.text()), timeout=WAIT)  # type: ignore[attr-defined]
    assert w.error_label.text().startswith(f"The CA certificate file {missing} cannot be read")
    w.close()


SCREENSHOT = """
import sys, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
from dicomflow_desktop.settings import Settings, Store
from dicomflow_desktop.window import MainWindow
api, archives, key, out, shot = sys.argv[1:]
app = QApplication(sys.argv[:1])
s = Settings(server_url=api, archive_url=archives, download_folder=out, api_key=key)
w = MainWindow(Store(Path(out) / "config"), s)
w.resize(1200, 700)
w.show()
w.year.setText("2024")
w.search()
deadline = time.monotonic() + 60
while w.table.rowCount() < 2 and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.05)
w.table.selectRow(0)
w.download()
while w.downloading and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.05)
for _ in range(20):
    app.processEvents()
    time.sleep(0.05)
app.primaryScreen().grabWindow(0).save(shot)
print(app.platformName(), w.table.rowCount(), w.progress_label.text())
"""


async def test_desktop_screenshot_under_xvfb(clinic: Clinic, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "desktop-client.png"
    shot.unlink(missing_ok=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
    done = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "-c", SCREENSHOT,
         clinic.api, clinic.archives, clinic.key, str(tmp_path / "out"), str(shot)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    platform, rows, status = done.stdout.strip().split(" ", 2)
    assert (platform, rows) == ("xcb", "2"), done.stdout
    assert status.startswith("Downloaded to"), status
    from PySide6.QtGui import QImage

    image = QImage(str(shot))
    assert (image.width(), image.height()) == (1280, 800)
    colours = {image.pixel(x, y) for x in range(0, 1200, 7) for y in range(0, 700, 7)}
    assert len(colours) > 20  # a drawn window, not a blank screen
