"""`dicomflow-desktop`: the window, with a log file next to the settings and the settings
dialog first when no server or key is set yet."""

from __future__ import annotations

import logging
import sys

from PySide6.QtWidgets import QApplication

from dicomflow_desktop.settings import Store, config_dir


def main(argv: list[str] | None = None) -> int:
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=folder / "desktop.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    app = QApplication(sys.argv if argv is None else argv)
    app.setApplicationName("dicomflow")
    from dicomflow_desktop.window import MainWindow

    window = MainWindow(Store(folder))
    window.show()
    if not window.settings.api_key:
        window.edit_settings()
    return app.exec()
