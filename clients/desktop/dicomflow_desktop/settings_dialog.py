"""Server address, API key, download folder, viewer command and archive format."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from dicomflow_desktop.settings import Settings

VIEWER_HINT = (
    "Use {folder} where the study folder goes, e.g.\n"
    '"C:\\Program Files\\RadiAnt DICOM Viewer\\RadiAntViewer.exe" "{folder}"\n'
    'weasis $dicom:get -l "{folder}"\n'
    "Leave empty to open the folder instead."
)


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("dicomflow settings")
        self.server = QLineEdit(settings.server_url)
        self.server.setPlaceholderText("http://pacs-server:8000")
        self.key = QLineEdit(settings.api_key)
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("the key you were given (dfk_...)")
        self.archive = QLineEdit(settings.archive_url)
        self.archive.setPlaceholderText("same as the server (leave empty)")
        self.ca_bundle = QLineEdit(settings.ca_bundle)
        self.ca_bundle.setPlaceholderText("only for a hospital's own certificate authority")
        self.folder = QLineEdit(str(settings.folder()))
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder)
        row.addWidget(browse)
        folder_row = QWidget()
        folder_row.setLayout(row)
        self.viewer = QLineEdit(settings.viewer_command)
        self.viewer.setPlaceholderText('RadiAntViewer.exe "{folder}"')
        self.viewer.setToolTip(VIEWER_HINT)
        self.format = QComboBox()
        self.format.addItems(["tar.zst", "zip", "tar"])
        self.format.setCurrentText(settings.archive_format)
        form = QFormLayout(self)
        form.addRow("Server address", self.server)
        form.addRow("API key", self.key)
        form.addRow("Download folder", folder_row)
        form.addRow("Viewer command", self.viewer)
        form.addRow("", QLabel(VIEWER_HINT))
        form.addRow("Archive format", self.format)
        form.addRow("Archive address (optional)", self.archive)
        form.addRow("CA certificate file (optional)", self.ca_bundle)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Download folder", self.folder.text())
        if chosen:
            self.folder.setText(chosen)

    def settings(self) -> Settings:
        return Settings(
            server_url=self.server.text().strip(),
            archive_url=self.archive.text().strip(),
            download_folder=self.folder.text().strip(),
            viewer_command=self.viewer.text().strip(),
            archive_format=self.format.currentText(),
            api_key=self.key.text().strip(),
            ca_bundle=self.ca_bundle.text().strip(),
        )
