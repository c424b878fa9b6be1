"""`make bench` (sources): how fast the Orthanc and ISO watchers get files into staging,
next to reference tools on the same bytes in the same run.

1. ISO: a disc image of synthetic instances (DICOMDIR by `dcmmkdir`, image by
   `genisoimage`); the iso-watcher's reader (pycdlib: list, follow DICOMDIR, stream each file
   to staging with fsync) against `xorriso -osirrox` extracting the same image.
2. Orthanc: the same instances uploaded to a real Orthanc; the orthanc-watcher's client
   (streamed downloads to staging, one connection) against one `curl` process fetching the
   same URLs over a kept-alive connection.

Not a test: figures vary with the machine; compare the ratios across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from libs.dicom.synthetic import generate_corpus
from libs.staging.files import sync_folder
from load_test.peers import PEER_ENV, Orthanc, require_binary
from services.iso_watcher.dicomdir import plan_disc
from services.iso_watcher.disc import copy_out, open_disc
from services.orthanc_watcher.client import OrthancClient
from services.orthanc_watcher.rounds import staged_path


def line(label: str, files: int, total: int, seconds: float) -> float:
    mb_s = total / seconds / 1e6
    print(f"  {label:<40} {files / seconds:>7.0f} files/s {mb_s:>7.0f} MB/s  ({seconds:.2f}s)")
    return mb_s


def disc(work: Path, count: int) -> tuple[Path, list[Path]]:
    tree = work / "tree"
    generate_corpus(work / "src", count, rows=256, columns=256)
    files = sorted((work / "src").rglob("*.dcm"))
    for n, src in enumerate(files):
        target = tree / "DICOM" / f"D{n // 500:03d}" / f"IM{n:06d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    argv = [require_binary("dcmmkdir"), "--recurse", "--output-file", "DICOMDIR", "DICOM"]
    subprocess.run(argv, cwd=tree, env=PEER_ENV, check=True, capture_output=True)
    image = work / "bench.iso"
    iso_argv = [require_binary("genisoimage"), "-quiet", "-J", "-R", "-o", str(image), str(tree)]
    subprocess.run(iso_argv, env=PEER_ENV, check=True)
    return image, files


def bench_iso(work: Path, image: Path) -> None:
    print(f"ISO image {image.stat().st_size / 1e6:.0f} MB")
    t = time.perf_counter()
    reader = open_disc(image)
    listing = reader.files()
    plan = plan_disc(reader, listing)
    total = 0
    for n, path in enumerate(plan.files):
        total += copy_out(reader, path, listing[path], work / "staged-iso" / f"{n:06d}")
        if n % 200 == 199:  # as the watcher does per ledger batch
            sync_folder(work / "staged-iso")
    sync_folder(work / "staged-iso")
    reader.close()
    ours = line("iso-watcher reader (pycdlib)", len(plan.files), total, time.perf_counter() - t)
    out = work / "xorriso-out"
    t = time.perf_counter()
    argv = ["-osirrox", "on", "-indev", str(image), "-extract", "/", str(out)]
    subprocess.run([require_binary("xorriso"), *argv], check=True, capture_output=True)
    subprocess.run(["sync"], check=True)  # our copies are fsynced; be fair
    ref = line(
        "xorriso -osirrox -extract (reference)", len(plan.files), total, time.perf_counter() - t
    )
    print(f"  ratio ours/reference: {ours / ref:.2f}")


async def bench_orthanc(work: Path, files: list[Path]) -> None:
    peer = Orthanc(root=work / "orthanc")
    peer.start()
    try:
        ids = [peer.upload(f)["ID"] for f in files]
        total = sum(f.stat().st_size for f in files)
        print(f"Orthanc: {len(ids)} instances, {total / 1e6:.0f} MB")
        client = OrthancClient(peer.url, username=peer.username, password=peer.password)
        for i in ids:  # warm Orthanc's storage reads, so neither side pays them alone
            await client.download(i, staged_path(work / "warm", i))
        t = time.perf_counter()
        for n, i in enumerate(ids):
            await client.download(i, staged_path(work / "staged-orthanc", i))
            if n % 100 == 99:  # as the watcher does per page of changes
                sync_folder(work / "staged-orthanc")
        sync_folder(work / "staged-orthanc")
        ours = line("orthanc-watcher downloads", len(ids), total, time.perf_counter() - t)
        await client.close()
        config = work / "curl.cfg"
        config.write_text(
            "".join(
                f'url = "{peer.url}/instances/{i}/file"\noutput = "{work}/curl/{i}.dcm"\n'
                for i in ids
            )
        )
        (work / "curl").mkdir()
        t = time.perf_counter()
        argv = [require_binary("curl"), "-sf", "-u", f"{peer.username}:{peer.password}"]
        subprocess.run([*argv, "-K", str(config)], check=True)
        subprocess.run(["sync"], check=True)  # our copies are durable; be fair
        ref = line("curl, one process (reference)", len(ids), total, time.perf_counter() - t)
        print(f"  ratio ours/reference: {ours / ref:.2f}")
        assert httpx.get(f"{peer.url}/system", auth=peer.auth).status_code == 200
    finally:
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600, help="instances (~130 KB each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomflow-bench-sources-") as tmp:
        work = Path(tmp)
        image, files = disc(work, args.count)
        bench_iso(work, image)
        asyncio.run(bench_orthanc(work, files))


if __name__ == "__main__":
    main()
