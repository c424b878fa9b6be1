"""Every file of the DICOM fuzz corpus reaches a final outcome, isolated and bounded in time.

The corpus (`../shared/data/dicom-fuzz-corpus-v3`, see its README.md and
manifest.json) holds 594 malformed and CVE-targeted files in 24 categories plus a
valid baseline. Each file must end as a header with valid UIDs or as a
PermanentError with a reason (it would be dead-lettered); a file whose preamble is
neither zeros nor a TIFF header is refused as a polyglot; nothing may hang, crash
the executor or escape as another exception. Per-category outcomes are printed
(`pytest -s` or `-rP` shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import libs.dicom.extract as extract
from libs.contracts.errors import DicomParseError, PermanentError
from libs.contracts.events import DicomHeader, Hashes
from libs.dicom.extract import extract_file
from libs.dicom.uids import is_valid_uid
from libs.runtime.sandbox import IsolatedExecutor

CORPUS = Path(  # beside the project; DICOM_FUZZ_CORPUS where a checkout lives elsewhere
    os.environ.get("DICOM_FUZZ_CORPUS")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom-fuzz-corpus-v3"
)
NOT_CASES = {"README.md", "manifest.json", "LICENSE"}
PER_FILE_TIMEOUT_S = 10.0
WHOLE_RUN_LIMIT_S = 120.0
UID_TAGS = {"(0008,0018)", "(0020,000D)", "(0020,000E)"}
# The manifest's unconditional accepts (the rest are "accept or reject").
MUST_ACCEPT = {"Accept", "Accept with correct parsing", "Accept (preamble is unused by standard)"}


def hostile_preamble(path: Path) -> bool:
    """A Part 10 preamble that is neither zeros nor a TIFF header (judged here, not by the
    code under test): the file is a polyglot and must be refused."""
    head = path.read_bytes()[:132]
    return (
        head[128:] == b"DICM"
        and head[:128] != bytes(128)
        and head[:4] not in (b"II*\x00", b"MM\x00*")
    )


def on_disk(manifest_name: str) -> Path:
    """Names were made filesystem-safe: characters outside A-Za-z0-9._- became `_`."""
    folder, _, name = manifest_name.rpartition("/")
    return CORPUS / folder / re.sub(r"[^A-Za-z0-9._-]", "_", name)


async def outcome(ex: IsolatedExecutor, path: Path) -> str | BaseException:
    try:
        header, hashes = await ex.run(extract_file, str(path))
    except PermanentError as exc:
        assert str(exc).strip(), f"{path.name}: {type(exc).__name__} without a reason"
        return exc
    except Exception as exc:  # anything else would be retried by the bus: a bug here
        return exc
    assert isinstance(header, DicomHeader) and isinstance(hashes, Hashes)
    for uid in (header.study.study_uid, header.series.series_uid, header.instance.sop_instance_uid):
        assert is_valid_uid(uid), f"{path.name}: invalid UID {uid!r} accepted"
    return "extracted"


async def test_every_corpus_file_reaches_a_final_outcome() -> None:
    assert CORPUS.is_dir(), f"fuzz corpus missing: {CORPUS} (it lives beside the project)"
    assert (CORPUS / "README.md").is_file()
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in NOT_CASES)
    assert len(files) == manifest["total_cases"] + 1  # and the baseline

    ex = IsolatedExecutor(
        workers=2,
        memory_limit_mb=1024,
        timeout_s=PER_FILE_TIMEOUT_S,
        preload=(extract_file.__module__,),
    )
    started = time.monotonic()
    try:
        results = await asyncio.gather(*(outcome(ex, p) for p in files))
    finally:
        ex.close()
    elapsed = time.monotonic() - started

    by_path = dict(zip(files, results, strict=True))
    table: dict[str, Counter[str]] = defaultdict(Counter)
    escaped = []
    for path, result in by_path.items():
        category = path.relative_to(CORPUS).parts[0]
        if isinstance(result, PermanentError):
            table[category][type(result).__name__] += 1
        elif isinstance(result, BaseException):
            escaped.append(f"{path.relative_to(CORPUS)}: {type(result).__name__}: {result}")
        else:
            table[category][result] += 1
    print(f"\nfuzz corpus: {len(files)} files in {elapsed:.1f} s (2 workers)")
    for category in sorted(table):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(table[category].items()))
        print(f"  {category:40s} {counts}")
    totals = sum(table.values(), Counter())
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))

    assert not escaped, "not a final outcome:\n" + "\n".join(escaped)
    assert elapsed < WHOLE_RUN_LIMIT_S
    assert by_path[CORPUS / manifest["baseline_file"]] == "extracted"
    polyglots = [p for p in files if hostile_preamble(p)]
    print(f"  polyglot preambles refused: {len(polyglots)}")
    assert len(polyglots) == 4  # three JSON (cat24, CVE-2023-33466), one 0xFF (cat07)
    for path in polyglots:
        result = by_path[path]
        assert isinstance(result, DicomParseError), f"{path.name}: {result!r}"
        assert str(result).startswith("polyglot preamble: "), f"{path.name}: {result}"
    for category in manifest["categories"]:
        for case in category["cases"]:
            if case["expected_behavior"].startswith("Preamble polyglot"):
                assert on_disk(case["filename"]) in polyglots, case["filename"]
            if case["expected_behavior"] not in MUST_ACCEPT:
                continue
            if on_disk(case["filename"]) in polyglots:
                continue  # "the preamble is unused by the standard", but a polyglot is refused
            result = by_path[on_disk(case["filename"])]
            if case.get("target_tag") in UID_TAGS:  # a 1-character "A" is no UID: rejected
                assert isinstance(result, DicomParseError), case["filename"]
            else:
                assert result == "extracted", f"{case['filename']}: {result!r}"


def test_the_quick_reader_declines_or_agrees_with_pydicom_on_every_corpus_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A corpus file the quick reader (libs/dicom/quickread.py) reads gives what pydicom's
    path gives: header, DICOM JSON, hashes or refusal. Run in this process: the quick
    reader accepts only plain files, and pydicom's path on a plain file is bounded."""
    assert CORPUS.is_dir(), f"fuzz corpus missing: {CORPUS} (it lives beside the project)"
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in NOT_CASES)
    read_quickly = 0
    for path in files:
        if path.stat().st_size > 64 << 20 or extract._quick(path.read_bytes()) is None:
            continue
        read_quickly += 1
        fast = local_outcome(path)
        with monkeypatch.context() as m:
            m.setattr(extract, "_quick", lambda _data: None)
            assert local_outcome(path) == fast, path.relative_to(CORPUS)
    print(f"\nread by the quick reader, same outcome as pydicom's path: {read_quickly}")
    assert read_quickly >= 300  # 343 of the 598 files when this test was written


def local_outcome(path: Path) -> object:
    try:
        header, hashes = extract.extract_file(str(path))
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return header.model_dump(), hashes.model_dump(exclude={"source_stamp"})
