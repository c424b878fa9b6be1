"""Search and downloads off the GUI thread. Each worker is a QThread whose `run` calls the
client core and reports through signals (delivered to the GUI thread by Qt's queued
connections). Error messages are the core's clinician-facing sentences; anything
unexpected becomes one sentence too, with the traceback in the log file."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from dicomflow_client import Client, ClientError, Progress, SearchFilter, Study, fetch_study
from dicomflow_client.api import ArchiveFormat
from PySide6.QtCore import QThread, Signal

log = logging.getLogger(__name__)
PAGE = 500  # studies a search (or "Load more") adds to the table


def unexpected(exc: BaseException) -> str:
    log.exception("unexpected error", exc_info=exc)
    return (
        f"Something unexpected went wrong ({type(exc).__name__}). "
        "Please try again; if it happens again, send the log file to IT."
    )


class SearchWorker(QThread):
    """One search, or its next page from `offset` ("Load more"). Its signals carry the
    search's number so the window can drop the answer of a search a newer one has replaced
    (a clinician who corrects the name and presses Enter again sees the new answer, never the
    old one arriving late)."""

    # number, offset, Total (an int that may be a lower bound), [Study]
    found = Signal(int, int, object, list)
    failed = Signal(int, str)  # number, message

    def __init__(
        self, client: Client, criteria: SearchFilter, number: int = 0, offset: int = 0
    ) -> None:
        super().__init__()
        self.client, self.criteria, self.number, self.offset = client, criteria, number, offset

    def run(self) -> None:
        try:
            total, studies = self.client.search(self.criteria, limit=PAGE, offset=self.offset)
        except ClientError as exc:
            self.failed.emit(self.number, str(exc))
        except Exception as exc:
            self.failed.emit(self.number, unexpected(exc))
        else:
            self.found.emit(self.number, self.offset, total, studies)


class DownloadWorker(QThread):
    """The selected studies one after another; `cancel()` stops at the next chunk and keeps
    what arrived (the next download of the same study resumes from it)."""

    started_study = Signal(int, int, object)  # index (1-based), count, Study
    progress = Signal(object)  # Progress
    study_done = Signal(object, str)  # Study, folder
    failed = Signal(str)
    all_done = Signal()

    def __init__(self, client: Client, studies: list[Study], out: Path, fmt: ArchiveFormat) -> None:
        super().__init__()
        self.client, self.studies, self.out, self.fmt = client, studies, out, fmt
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:
        try:
            for n, study in enumerate(self.studies, 1):
                self.started_study.emit(n, len(self.studies), study)
                folder = fetch_study(
                    self.client,
                    study,
                    self.out,
                    fmt=self.fmt,
                    progress=self._report,
                    cancel=self._cancel,
                )
                self.study_done.emit(study, str(folder))
        except ClientError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:
            self.failed.emit(unexpected(exc))
        else:
            self.all_done.emit()

    def _report(self, p: Progress) -> None:
        self.progress.emit(p)
