"""Open a study folder: the radiologist's viewer command, or the system file manager.

The command is a template with `{folder}` (e.g. `weasis-launcher $dicom:get -l "{folder}"`,
or `"C:\\Program Files\\RadiAnt DICOM Viewer\\RadiAntViewer.exe" "{folder}"`). It is split
into arguments first and `{folder}` substituted inside each, so a folder with spaces or
Cyrillic letters stays one argument; no shell is involved.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from dicomflow_client.errors import ClientError


def command_argv(template: str, folder: Path) -> list[str]:
    if "{folder}" not in template:
        template = f'{template} "{{folder}}"'
    try:
        parts = shlex.split(template, posix=os.name != "nt")
    except ValueError as exc:
        raise ClientError(f"The viewer command is not valid: {exc}.") from exc
    if os.name == "nt":
        parts = [p[1:-1] if len(p) > 1 and p[0] == p[-1] == '"' else p for p in parts]
    return [p.replace("{folder}", str(folder)) for p in parts]


def launch_viewer(template: str, folder: Path) -> subprocess.Popen[bytes]:
    argv = command_argv(template, folder)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603 - the user's own configured viewer
    except OSError as exc:
        raise ClientError(
            f"The viewer could not be started ({argv[0]}: {exc.strerror or exc}). "
            "Check the viewer command in the settings."
        ) from exc


def open_folder(folder: Path) -> None:
    """The system's file manager on `folder`."""
    try:
        if sys.platform == "win32":
            os.startfile(folder)  # type: ignore[attr-defined]  # noqa: S606 - Windows only
        elif sys.platform == "darwin":
            subprocess.Popen(["open", str(folder)])  # noqa: S603, S607
        else:
            subprocess.Popen(["xdg-open", str(folder)], start_new_session=True)  # noqa: S603, S607
    except OSError as exc:
        raise ClientError(f"Could not open the folder {folder}: {exc.strerror or exc}.") from exc
