"""Real CD/DVD images for the ISO watcher's tests: DICOMDIRs written by DCMTK's `dcmmkdir`,
images by `genisoimage` (Rock Ridge + Joliet) or `xorriso` (plain ISO 9660 names)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from studies import write_study

from load_test.peers import PEER_ENV, require_binary


def disc_tree(root: Path, patients: list[str], per_series: int = 2) -> dict[str, str]:
    """DICOM/Pnn/IMnnnnnn files (ISO 9660 file ids) for each patient; returns
    {SOPInstanceUID: disc path}."""
    out: dict[str, str] = {}
    for p, name in enumerate(patients):
        src = root.parent / f"{root.name}-src{p}"
        files = write_study(src, patient=name, per_series=per_series)
        folder = root / "DICOM" / f"P{p:02d}"
        folder.mkdir(parents=True)
        for i, (sop, path) in enumerate(files.items()):
            target = folder / f"IM{i:06d}"
            shutil.move(path, target)
            out[sop] = target.relative_to(root).as_posix()
    return out


def dicomdir(root: Path) -> None:
    subprocess.run(
        [require_binary("dcmmkdir"), "--recurse", "--output-file", "DICOMDIR", "DICOM"],
        cwd=root,
        env=PEER_ENV,
        check=True,
        capture_output=True,
    )


def iso(tree: Path, target: Path, *, tool: str = "genisoimage") -> Path:
    if tool == "genisoimage":
        argv = [require_binary("genisoimage"), "-quiet", "-J", "-R", "-V", "DICOMFLOW", "-o"]
        subprocess.run([*argv, str(target), str(tree)], env=PEER_ENV, check=True)
    else:
        argv = [
            require_binary("xorriso"),
            "-rockridge",
            "off",
            "-outdev",
            str(target),
            "-map",
            str(tree),
            "/",
        ]
        subprocess.run(argv, env=PEER_ENV, check=True, capture_output=True)
    return target
