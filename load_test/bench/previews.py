"""`make bench` (previews): rendering speed against DCMTK on the same files, in the same run.

1. Writes a synthetic corpus (default 200 instances: CT 512x512 16-bit signed with a window,
   MR 256x256 12-bit without one) to a temporary folder.
2. Reference: DCMTK `dcmj2pnm +Wi 1 --write-jpeg` (the file's window; min-max when none),
   one process per file, as a shell loop would run it.
3. Ours, in-process on one core: decode, window, full-size JPEG and 256-pixel thumbnail per
   file (`render_file`, what a render worker does).
4. Ours through the isolated render process (`IsolatedRenderer`, one worker: the
   converter's default), process boundary included.

Prints images/s for each and the ratios. Not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.imaging.isolated import IsolatedRenderer
from libs.imaging.jobs import RenderRequest, render_file


def corpus(root: Path, count: int) -> list[Path]:
    files = []
    for n in range(count):
        modality = "CT" if n % 2 == 0 else "MR"
        size = 512 if modality == "CT" else 256
        ds = make_dataset(
            patient_id="BENCH",
            patient_name="Bench^Previews",
            study_uid=synthetic_uid("bench-previews"),
            series_uid=synthetic_uid(f"bench-previews-{modality}"),
            sop_uid=synthetic_uid(f"bench-previews-{n}"),
            modality=modality,
            rows=size,
            columns=size,
            instance_number=n + 1,
            pixel_seed=n,
        )
        path = root / f"{n:05d}.dcm"
        write_instance(path, ds)
        files.append(path)
    return files


def report(label: str, count: int, seconds: float) -> float:
    per_s = count / seconds
    print(f"  {label:<52} {per_s:>8.1f} images/s  ({seconds:.2f}s)")
    return per_s


def dcmtk(files: list[Path], out: Path) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    for path in files:
        window = ["+Wi", "1"] if int(path.stem) % 2 == 0 else ["+Wm"]  # CT has a window
        subprocess.run(
            ["dcmj2pnm", *window, "--write-jpeg", str(path), str(out / f"{path.stem}.jpg")],
            check=True,
            env=env,
            capture_output=True,
        )
    return time.perf_counter() - started


def in_process(files: list[Path]) -> float:
    request = RenderRequest()
    render_file(str(files[0]), request)  # imports and first-call setup, as a warm worker has
    started = time.perf_counter()
    for path in files:
        render_file(str(path), request)
    return time.perf_counter() - started


async def isolated(files: list[Path]) -> float:
    renderer = IsolatedRenderer(workers=1, memory_limit_mb=1024, timeout_s=60)
    try:
        await renderer.warm_up()
        request = RenderRequest()
        started = time.perf_counter()
        for path in files:
            await renderer.render(path, request)
        return time.perf_counter() - started
    finally:
        renderer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = int(os.environ.get("BENCH_PREVIEW_COUNT", "200"))
    parser.add_argument("--count", type=int, default=default)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-previews-") as tmp:
        root = Path(tmp)
        (root / "dcmtk").mkdir()
        files = corpus(root / "in", args.count)
        print(f"previews: {len(files)} synthetic instances (CT 512x512, MR 256x256)")
        reference = report(
            "DCMTK dcmj2pnm --write-jpeg (1 JPEG, process/file)",
            len(files),
            dcmtk(files, root / "dcmtk"),
        )
        ours = report("ours in-process (preview + thumbnail)", len(files), in_process(files))
        boxed = report(
            "ours in the isolated worker (preview + thumbnail)",
            len(files),
            asyncio.run(isolated(files)),
        )
        print(
            f"  ratio to DCMTK: in-process {ours / reference:.2f}, isolated {boxed / reference:.2f}"
        )


if __name__ == "__main__":
    main()
