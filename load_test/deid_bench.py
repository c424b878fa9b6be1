"""CPU cost of de-identifying one instance (read, de-identify, write), ours next to
`dicognito` on the same files when it is importable (it is not a dependency of dicomflow:
`pip install --target DIR dicognito==0.19.0 --no-deps` and put DIR on PYTHONPATH).

    python -m load_test.deid_bench [--instances 300] [--size 512]

One process, files in a temporary folder, CPU time (process_time) per instance, so the
figure holds on a loaded machine better than wall time; `uptime` is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from libs.deid.deidentify import Keys, Options, deidentify
from libs.dicom.synthetic import make_dataset, write_instance


def _files(root: Path, count: int, size: int) -> list[Path]:
    paths = []
    for n in range(count):
        ds = make_dataset(
            patient_id=f"BENCH{n % 10}",
            patient_name=f"Bench^Patient{n % 10}",
            birth_date="19700101",
            study_uid=f"1.2.826.0.1.3680043.10.5.{n % 10}",
            series_uid=f"1.2.826.0.1.3680043.10.5.{n % 10}.1",
            sop_uid=f"1.2.826.0.1.3680043.10.5.{n % 10}.1.{n}",
            rows=size,
            columns=size,
            study_description="CT chest",
            accession=f"ACC{n}",
            instance_number=n,
        )
        paths.append(root / f"{n}.dcm")
        write_instance(paths[-1], ds)
    return paths


def _ours(source: Path, target: Path) -> None:
    ds = pydicom.dcmread(source, defer_size="1 MB")
    deidentify(ds, Options(modified_dates=True, clean_descriptors=True), Keys(b"bench"))
    ds.save_as(target, enforce_file_format=True)


def _dicognito() -> Callable[[Path, Path], None] | None:
    try:
        from dicognito.anonymizer import Anonymizer  # type: ignore[import-not-found]
    except ImportError:
        return None
    anonymizer = Anonymizer(seed="bench")

    def run(source: Path, target: Path) -> None:
        ds = pydicom.dcmread(source)
        anonymizer.anonymize(ds)
        ds.save_as(target, enforce_file_format=True)

    return run


def _measure(fn: Callable[[Path, Path], None], paths: list[Path], out: Path) -> float:
    fn(paths[0], out / "warm.dcm")  # imports and first-call costs are not per instance
    start = time.process_time()
    for n, path in enumerate(paths):
        fn(path, out / f"{n}.dcm")
    return (time.process_time() - start) * 1000 / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        paths = _files(root / "in", args.instances, args.size)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"{len(paths)} CT instances of {mb:.2f} MB; load {os.getloadavg()[0]:.1f}")
        for name, fn in (("dicomflow", _ours), ("dicognito", _dicognito())):
            if fn is None:
                print(f"{name}: not importable")
                continue
            out = root / name
            out.mkdir()
            print(f"{name}: {_measure(fn, paths, out):.2f} ms CPU per instance")


if __name__ == "__main__":
    main()
