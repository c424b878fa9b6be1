"""Cross-check against a reference viewer pipeline: DCMTK's dcmj2pnm renders the same files
with the same window to 8-bit PGM. DCMTK truncates where we round half up (PS3.3 gives the
real-valued function, not the rounding), so grey levels agree to within one step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from libs.imaging.decode import decode_frame, read_header
from libs.imaging.render import render
from libs.imaging.window import Window

DCMJ2PNM = "/usr/bin/dcmj2pnm"


@pytest.mark.parametrize(
    ("name", "options", "window", "frame"),
    [
        ("MR_small.dcm", ["+Wi", "1"], None, 0),  # the file's window
        ("MR_small_bigendian.dcm", ["+Wi", "1"], None, 0),
        ("examples_overlay.dcm", ["+Wi", "1", "-O"], None, 0),  # first of two windows
        ("CT_small.dcm", ["+Ww", "40", "400"], Window(40, 400), 0),  # rescaled, signed
        ("CT_small.dcm", ["+Wm"], None, 0),  # no window in the file: full range
        ("rtdose.dcm", ["+Wm", "+F", "8"], None, 7),  # 32-bit, middle frame
    ],
)
def test_grey_levels_match_dcmtk_within_one_step(
    name: str, options: list[str], window: Window | None, frame: int, tmp_path: Path
) -> None:
    assert Path(DCMJ2PNM).exists(), "DCMTK (Debian package dcmtk) is required"
    path = Path(get_testdata_file(name) or name)
    out = tmp_path / "ref.pgm"
    done = subprocess.run(
        [DCMJ2PNM, *options, str(path), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    reference = np.asarray(Image.open(out), dtype=np.int16)
    ds = read_header(path)
    ours = render(decode_frame(path, ds, frame), ds, window).pixels.astype(np.int16)
    difference = np.abs(ours - reference)
    assert difference.max() <= 1, name
    assert ours.std() > 5  # a picture, not a flat field that trivially agrees
