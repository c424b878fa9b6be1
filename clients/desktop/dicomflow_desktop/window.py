"""The main window: search form, results table, download bar, viewer buttons.

Every call to the server runs in a worker thread; the window only reacts to their signals.
Messages are in a clinician's words, in the red line under the table, never a traceback.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from dicomflow_client import Client, ClientError, Progress, SearchFilter, Study, Total
from dicomflow_client.api import FORMATS, ArchiveFormat
from dicomflow_client.progress import human_eta, human_size, human_total
from dicomflow_client.viewer import launch_viewer, open_folder
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from dicomflow_desktop.settings import Settings, Store
from dicomflow_desktop.settings_dialog import SettingsDialog
from dicomflow_desktop.workers import PAGE, DownloadWorker, SearchWorker

COLUMNS = [
    "Patient", "Date of birth", "Sex", "Study date", "Description", "Modalities",
    "Series", "Images", "Size",
]  # fmt: skip
SEXES = [("Any", ""), ("Female", "F"), ("Male", "M"), ("Other", "O")]
MODALITIES = ["", "CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "RF", "OT"]
_DMY = re.compile(r"(\d{1,2})[./](\d{1,2})[./](\d{4})")


class InputError(ValueError):
    pass


def parse_date(text: str, label: str) -> date | None:
    """31.12.1970, 31/12/1970, 1970-12-31 or 19701231; empty is None."""
    text = text.strip()
    if not text:
        return None
    try:
        if m := _DMY.fullmatch(text):
            return date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
        if re.fullmatch(r"\d{8}", text):
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{label}: write the date as 31.12.1970 or 1970-12-31.") from None


class MainWindow(QMainWindow):
    def __init__(self, store: Store | None = None, settings: Settings | None = None) -> None:
        super().__init__()
        self.store = store or Store()
        self.settings = settings or self.store.load()
        self.studies: list[Study] = []
        self.folders: dict[str, Path] = {}
        self.search_worker: SearchWorker | None = None  # the newest search
        self.searches = 0
        self.shown_search: SearchFilter | None = None  # the search whose studies are listed
        self.total = Total(0)
        self.more = False  # the server has studies past those listed
        self._replaced: set[SearchWorker] = set()  # older searches still running, kept alive
        self.download_worker: DownloadWorker | None = None
        # True from the click until the worker's last signal has reached this window (the
        # thread may stop before its queued study_done/failed signals are delivered).
        self.downloading = False
        self.last_folder: Path | None = None
        self._current = ""
        self._first_progress = False
        self._resumed_note = ""
        self.setWindowTitle("dicomflow — studies")
        self.resize(1100, 640)
        self._build()

    # ---- layout
    def _build(self) -> None:
        self.name = QLineEdit(placeholderText="e.g. Иванов Иван")
        self.patient_id = QLineEdit()
        self.birth_date = QLineEdit(placeholderText="31.12.1970")
        self.sex = QComboBox()
        for label, _ in SEXES:
            self.sex.addItem(label)
        self.year = QLineEdit(placeholderText="2024")
        self.date_from = QLineEdit(placeholderText="01.01.2024")
        self.date_to = QLineEdit(placeholderText="31.12.2024")
        self.modality = QComboBox(editable=True)
        self.modality.addItems(MODALITIES)
        for field in (self.name, self.patient_id, self.birth_date, self.year):
            field.returnPressed.connect(self.search)
        form = QGridLayout()
        left, right = QFormLayout(), QFormLayout()
        left.addRow("Patient name", self.name)
        left.addRow("Patient ID", self.patient_id)
        left.addRow("Date of birth", self.birth_date)
        left.addRow("Sex", self.sex)
        right.addRow("Study year", self.year)
        right.addRow("Study date from", self.date_from)
        right.addRow("to", self.date_to)
        right.addRow("Modality", self.modality)
        form.addLayout(left, 0, 0)
        form.addLayout(right, 0, 1)

        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.search_button.clicked.connect(self.search)
        self.settings_button = QPushButton("Settings…")
        self.settings_button.clicked.connect(self.edit_settings)
        top = QHBoxLayout()
        top.addWidget(self.search_button)
        top.addStretch(1)
        top.addWidget(self.settings_button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.doubleClicked.connect(lambda _: self.download())

        self.count_label = QLabel("")
        self.more_button = QPushButton(f"Load {PAGE} more")
        self.more_button.clicked.connect(self.load_more)
        self.download_button = QPushButton("Download selected")
        self.download_button.clicked.connect(self.download)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer_button = QPushButton("Open in viewer")
        self.viewer_button.clicked.connect(self.open_in_viewer)
        self.folder_button = QPushButton("Open folder")
        self.folder_button.clicked.connect(self.open_study_folder)
        actions = QHBoxLayout()
        actions.addWidget(self.count_label)
        actions.addWidget(self.more_button)
        actions.addStretch(1)
        for b in (self.download_button, self.cancel_button, self.viewer_button, self.folder_button):
            actions.addWidget(b)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress_label = QLabel("")
        self.error_label = QLabel("")
        self.error_label.setStyleSheet("color: #b00020;")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        body = QVBoxLayout()
        body.addLayout(form)
        body.addLayout(top)
        body.addWidget(self.table, 1)
        body.addLayout(actions)
        body.addWidget(self.progress)
        body.addWidget(self.progress_label)
        body.addWidget(self.error_label)
        central = QWidget()
        central.setLayout(body)
        self.setCentralWidget(central)
        self._sync_buttons()

    # ---- state
    def _sync_buttons(self) -> None:
        downloading = self.download_worker is not None and self.download_worker.isRunning()
        selected = bool(self.selected())
        # A search may replace a running one (the newest answer wins); the results table is
        # not replaced while a download works through the selected rows.
        self.search_button.setEnabled(not downloading)
        searching = self.search_worker is not None and self.search_worker.isRunning()
        self.more_button.setVisible(self.more)
        self.more_button.setEnabled(self.more and not searching)
        self.download_button.setEnabled(selected and not downloading)
        self.cancel_button.setEnabled(downloading)
        has_folder = self._target_folder() is not None
        self.viewer_button.setEnabled(has_folder)
        self.folder_button.setEnabled(has_folder)

    def _selection_changed(self) -> None:
        self._sync_buttons()

    def selected(self) -> list[Study]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.studies[r] for r in rows if r < len(self.studies)]

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)

    def _client(self) -> Client:
        s = self.settings
        return Client(
            s.server_url,
            s.api_key,
            archive_base_url=s.archive_url or None,
            ca_bundle=s.ca_bundle or None,
        )

    def _client_or_error(self) -> Client | None:
        """The client for the current settings, the error line cleared; or None, the reason
        shown on the error line (a setting the client refuses)."""
        self.show_error("")
        try:
            return self._client()
        except ClientError as exc:
            self.show_error(str(exc))
            return None

    # ---- search
    def criteria(self) -> SearchFilter:
        year_text = self.year.text().strip()
        if year_text and not (year_text.isdigit() and len(year_text) == 4):
            raise InputError("Study year: write four digits, e.g. 2024.")
        return SearchFilter(
            patient_name=self.name.text().strip(),
            patient_id=self.patient_id.text().strip(),
            birth_date=parse_date(self.birth_date.text(), "Date of birth"),
            sex=SEXES[self.sex.currentIndex()][1],
            year=int(year_text) if year_text else None,
            study_date_from=parse_date(self.date_from.text(), "Study date from"),
            study_date_to=parse_date(self.date_to.text(), "Study date to"),
            modality=self.modality.currentText().strip().upper(),
        )

    def search(self) -> None:
        if self.download_worker is not None and self.download_worker.isRunning():
            return
        self.show_error("")
        try:
            criteria = self.criteria()
            client = self._client()
        except (InputError, ClientError) as exc:
            self.show_error(str(exc))
            return
        self.count_label.setText("Searching…")
        self._start_search(client, criteria, 0)

    def load_more(self) -> None:
        """The next page of the listed search, added under its rows (the form may have been
        edited since: the listed search goes on, not the form's)."""
        if not self.more or self.shown_search is None:
            return
        client = self._client_or_error()
        if client is None:
            return
        self.count_label.setText(f"{self._counted()} — loading {PAGE} more…")
        self._start_search(client, self.shown_search, len(self.studies))

    def _start_search(self, client: Client, criteria: SearchFilter, offset: int) -> None:
        self.searches += 1
        worker = SearchWorker(client, criteria, self.searches, offset)
        worker.found.connect(self._found)
        worker.failed.connect(self._search_failed)
        worker.finished.connect(client.close)
        worker.finished.connect(self._search_finished)
        if self.search_worker is not None and self.search_worker.isRunning():
            self._replaced.add(self.search_worker)
        self.search_worker = worker
        worker.start()
        self._sync_buttons()

    def _search_finished(self) -> None:
        self._replaced = {w for w in self._replaced if w.isRunning()}
        self._sync_buttons()

    def _found(self, number: int, offset: int, total: Total, studies: list[Study]) -> None:
        if number != self.searches:
            return  # a newer search replaced this one
        if offset == 0:
            self.studies = []
            self.table.setRowCount(0)
            self.shown_search = self.search_worker.criteria if self.search_worker else None
        # A study indexed between two pages shifts the next one: never list one twice.
        listed = {s.study_uid for s in self.studies}
        new = [s for s in studies if s.study_uid not in listed]
        first = len(self.studies)
        self.studies.extend(new)
        self.table.setRowCount(len(self.studies))
        for row, s in enumerate(new, first):
            self._fill_row(row, s)
        self.total = total
        end = offset + len(studies)
        self.more = bool(studies) and (end < total if total.exact else len(studies) >= PAGE)
        self.count_label.setText(self._counted())
        self._sync_buttons()

    def _counted(self) -> str:
        """ "1,000+ studies found (showing 500)": the server stopped counting at 1,000."""
        total, shown = self.total, len(self.studies)
        if total == 0 and not shown:
            return "No study matches."
        more = self.more or total > shown or not total.exact
        note = f" (showing {shown:,})" if more else ""
        return f"{total} {'study' if total == 1 and total.exact else 'studies'} found{note}"

    def _fill_row(self, row: int, s: Study) -> None:
        p = s.patient
        cells = [
            p.display_name,
            _day(p.birth_date),
            p.sex,
            _day(s.study_date),
            s.study_description,
            ", ".join(s.modalities),
            str(s.series_count),
            str(s.instance_count),
            human_size(s.size_bytes),
        ]
        for col, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if col >= 6:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, col, item)

    def _search_failed(self, number: int, message: str) -> None:
        if number != self.searches:
            return
        paging = self.search_worker is not None and self.search_worker.offset > 0
        self.count_label.setText(self._counted() if paging else "")  # the rows listed stay
        self.show_error(message)

    # ---- download
    def download(self) -> None:
        studies = self.selected()
        if not studies or (self.download_worker is not None and self.download_worker.isRunning()):
            return
        client = self._client_or_error()
        if client is None:
            return
        fmt: ArchiveFormat = next(
            (f for f in FORMATS if f == self.settings.archive_format), "tar.zst"
        )
        worker = DownloadWorker(client, studies, self.settings.folder(), fmt)
        worker.started_study.connect(self._started_study)
        worker.progress.connect(self._progress)
        worker.study_done.connect(self._study_done)
        worker.failed.connect(self._download_failed)
        worker.all_done.connect(self._all_done)
        worker.finished.connect(client.close)
        worker.finished.connect(self._download_finished)
        self.download_worker = worker
        self.downloading = True
        self._resumed_note = ""
        worker.start()
        self._sync_buttons()

    def cancel(self) -> None:
        if self.download_worker is not None:
            self.download_worker.cancel()

    def _started_study(self, n: int, count: int, study: Study) -> None:
        self._current = (
            f"Study {n} of {count}: {study.patient.display_name}, {_day(study.study_date)}"
        )
        self._first_progress = True
        self.progress.setValue(0)
        self.progress_label.setText(self._current)

    def _progress(self, p: Progress) -> None:
        if self._first_progress:
            self._first_progress = False
            self._resumed_note = (
                f" — resumed at {human_size(p.done)}" if p.done and p.stage == "download" else ""
            )
        if p.total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * (p.fraction or 0)))
        else:
            self.progress.setRange(0, 0)  # size not known yet: busy indicator
        if p.stage == "unpack":
            text = f"checking and unpacking… {human_size(p.done)} of {human_size(p.total or 0)}"
        elif not p.total:
            text = f"{human_size(p.done)} so far · {human_size(p.speed)}/s"
        else:  # "of about 1.1 GB" while the server builds the archive (its size not known yet)
            about = "about " if p.estimated else ""
            text = (
                f"{human_size(p.done)} of {human_total(p)} · {human_size(p.speed)}/s · "
                f"{about}{human_eta(p.eta)} left"
            )
        self.progress_label.setText(f"{self._current}: {text}{self._resumed_note}")

    def _study_done(self, study: Study, folder: str) -> None:
        self.folders[study.study_uid] = Path(folder)
        self.last_folder = Path(folder)
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000)
        self.progress_label.setText(f"Downloaded to {folder}{self._resumed_note}")
        self._sync_buttons()

    def _all_done(self) -> None:
        self._sync_buttons()

    def _download_finished(self) -> None:
        self.downloading = False
        self._sync_buttons()

    def _download_failed(self, message: str) -> None:
        self.progress.setRange(0, 1000)
        if message.startswith("Download cancelled"):
            message = "Download cancelled. Download the study again to continue where it stopped."
        self.show_error(message)

    # ---- viewer
    def _target_folder(self) -> Path | None:
        for study in self.selected():
            if study.study_uid in self.folders:
                return self.folders[study.study_uid]
        return self.last_folder

    def open_in_viewer(self) -> None:
        folder = self._target_folder()
        if folder is None:
            return
        try:
            if self.settings.viewer_command:
                launch_viewer(self.settings.viewer_command, folder)
            else:
                open_folder(folder)
        except ClientError as exc:
            self.show_error(str(exc))

    def open_study_folder(self) -> None:
        folder = self._target_folder()
        if folder is not None:
            try:
                open_folder(folder)
            except ClientError as exc:
                self.show_error(str(exc))

    # ---- settings
    def edit_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.apply_settings(dialog.settings())

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        where = self.store.save(settings)
        note = (
            "in the system keyring" if where == "keyring" else f"in {where} (readable only by you)"
        )
        self.progress_label.setText(f"Settings saved; the API key is kept {note}.")

    def closeEvent(self, event: object) -> None:
        if self.download_worker is not None and self.download_worker.isRunning():
            self.download_worker.cancel()
            self.download_worker.wait(10_000)
        for worker in (self.search_worker, *self._replaced):
            if worker is not None:
                worker.wait(10_000)
        super().closeEvent(event)  # type: ignore[arg-type]


def _day(d: date | None) -> str:
    return d.isoformat() if d else ""
