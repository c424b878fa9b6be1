"""`dicomflow fetch` through its real entry point against a running stack: a Cyrillic name
search downloads, verifies and unpacks the right study with every original file; a dropped
connection and a killed command both resume with Range; each archive format unpacks; a
tampered archive is downloaded again (and refused when it stays damaged); 401, 403, 404,
an unreachable server and a full disk are one clear line each; `--open` hands the study
folder to the viewer command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from clientkit import Clinic, Proxy, sha
from pydicom.fileset import FileSet

from libs.tools.dev_broker import free_port
from tests.polling import eventually

DICOMFLOW = Path(sys.executable).with_name("dicomflow")


def fetch(
    *args: str, clinic: Clinic, archives: str | None = None, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DICOMFLOW), "fetch", *args],
        env=fetch_env(clinic, archives, key),
        capture_output=True,
        text=True,
        timeout=180,
    )


def fetch_env(clinic: Clinic, archives: str | None, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLOW_")}
    env.update(
        DICOMFLOW_URL=clinic.api,
        DICOMFLOW_ARCHIVE_URL=archives or clinic.archives,
        DICOMFLOW_API_KEY=clinic.key if key is None else key,
    )
    return env


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()  # a study's title line may come first
    errors = [line for line in lines if line.startswith("dicomflow fetch: ")]
    assert errors == lines[-1:], done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def archive_size(clinic: Clinic, uid: str, fmt: str) -> int:
    head = httpx.head(
        f"{clinic.archives}/v1/studies/{uid}/archive?format={fmt}",
        headers={"Authorization": f"Bearer {clinic.key}"},
    )
    assert head.status_code == 200
    return int(head.headers["content-length"])


def uid_of(clinic: Clinic, name: str) -> str:
    return next(u for u, n in clinic.patients.items() if n == name)


async def test_fetch_by_cyrillic_name_resumes_after_a_drop_and_a_kill_and_opens_the_viewer(
    clinic: Clinic, tmp_path: Path
) -> None:
    ivanov = uid_of(clinic, "Иванов^Иван")
    out = tmp_path / "Загрузки"
    upstream = int(clinic.archives.rsplit(":", 1)[1])
    viewer_log = tmp_path / "viewer-args.txt"
    viewer = tmp_path / "fake viewer.py"
    viewer.write_text(
        "import sys, pathlib\n"
        f"pathlib.Path({str(viewer_log)!r}).write_text('\\n'.join(sys.argv[1:]))\n"
    )
    with Proxy(upstream) as proxy:
        proxy.cut_after, proxy.cuts = 30_000, 1
        done = fetch(
            "--patient-name", "Иванов", "--year", "2024", "--out", str(out),
            "--open", "--viewer", f'"{sys.executable}" "{viewer}" --study "{{folder}}"',
            clinic=clinic, archives=proxy.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        folder = out / "Иванов Иван" / "2024-01-15_Study 0"
        assert done.stdout.strip() == str(folder)
        assert clinic.files_of(folder) == clinic.originals[ivanov]
        assert len(clinic.files_of(folder)) == 24
        first, second = proxy.seen
        assert first.cut and "range:" not in first.head.lower()
        assert f"range: bytes={first.body_sent}-" in second.head.lower(), second.head
        size = archive_size(clinic, ivanov, "tar.zst")
        assert first.body_sent + second.body_sent == size  # resumed, not downloaded again
        assert "if-range:" in second.head.lower()
        assert second.head.startswith("GET ")
        await eventually(viewer_log.exists, 20, what="the viewer was not started")
        assert viewer_log.read_text().splitlines() == ["--study", str(folder)]
        assert not list((out / ".dicomflow" / "downloads").iterdir())  # archive removed

        # The command is killed mid-download; the next run resumes from the part file.
        proxy.seen.clear()
        proxy.cut_after, proxy.rate = None, 15_000.0
        slow = subprocess.Popen(
            [str(DICOMFLOW), "fetch", ivanov, "--out", str(tmp_path / "again"), "--quiet",
             "--format", "zip"],
            env=fetch_env(clinic, proxy.url, None),
        )  # fmt: skip
        part = tmp_path / "again" / ".dicomflow" / "downloads" / f"{ivanov}.zip.part"

        def partly_downloaded() -> bool:
            if part.exists() and part.stat().st_size >= 20_000:
                return True
            assert slow.poll() is None, "the download ended before it could be killed"
            return False

        await eventually(partly_downloaded, 60, what="no partial download", interval=0.05)
        slow.kill()
        slow.wait()
        kept = part.stat().st_size
        proxy.rate = None
        done = fetch(ivanov, "--out", str(tmp_path / "again"), "--format", "zip", clinic=clinic,
                     archives=proxy.url)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "resuming at" in done.stderr
        assert f"range: bytes={kept}-" in proxy.seen[-1].head.lower()
        again = tmp_path / "again" / "Иванов Иван" / "2024-01-15_Study 0"
        assert clinic.files_of(again) == clinic.originals[ivanov]


async def test_fetch_each_format_and_a_tampered_archive(clinic: Clinic, tmp_path: Path) -> None:
    muller = uid_of(clinic, "Müller^José")
    formats = ("tar.zst", "zip", "tar")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {clinic.key}"}) as c:
        heads = {
            fmt: await c.head(f"{clinic.archives}/v1/studies/{muller}/archive?format={fmt}")
            for fmt in formats
        }
    # Every format is offered (a 404 or 422 for one would silently drop it from the loop).
    assert {f: h.status_code for f, h in heads.items()} == dict.fromkeys(formats, 200)
    assert heads["tar"].headers["content-type"] == "application/x-tar"
    for fmt in formats:  # each one downloaded, verified and unpacked
        out = tmp_path / fmt
        done = fetch(muller, "--format", fmt, "--out", str(out), "--quiet", clinic=clinic)
        assert done.returncode == 0, done.stderr
        folder = Path(done.stdout.strip())
        assert folder.parent == out / "Müller José"
        assert clinic.files_of(folder) == clinic.originals[muller]
        marker = json.loads((folder / ".dicomflow-study.json").read_text(encoding="utf-8"))
        assert (marker["study_uid"], marker["format"]) == (muller, fmt)
        if fmt != "tar.zst":  # the unpacked DICOMDIR still finds every instance
            fs = FileSet(folder / "DICOMDIR")
            got = sorted(sha(Path(i.path).read_bytes()) for i in fs)
            assert got == sorted(clinic.originals[muller])

    upstream = int(clinic.archives.rsplit(":", 1)[1])
    with Proxy(upstream) as proxy:
        proxy.flip_at, proxy.flips = 20_000, 1
        done = fetch(muller, "--out", str(tmp_path / "t1"), "--quiet", clinic=clinic,
                     archives=proxy.url)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert len(proxy.seen) == 2  # damaged once, downloaded again from the start
        assert "range:" not in proxy.seen[1].head.lower()
        assert clinic.files_of(Path(done.stdout.strip())) == clinic.originals[muller]

        proxy.seen.clear()
        proxy.flips = 10
        done = fetch(muller, "--out", str(tmp_path / "t2"), "--quiet", clinic=clinic,
                     archives=proxy.url)  # fmt: skip
        one_line_error(done, "damaged twice", "nothing was unpacked")
        assert len(proxy.seen) == 2
        assert not (tmp_path / "t2" / "Müller José").exists()


async def test_fetch_errors_are_one_clear_line(clinic: Clinic, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    muller = uid_of(clinic, "Müller^José")
    one_line_error(fetch(muller, "--out", out, clinic=clinic, key="dfk_" + "x" * 43), "401")
    one_line_error(fetch("1.2.3.4", "--out", out, clinic=clinic), "404", "1.2.3.4")
    one_line_error(fetch("--patient-name", "Nobody", "--out", out, clinic=clinic), "no study")
    with Proxy(int(clinic.api.rsplit(":", 1)[1])) as proxy:
        proxy.deny = True
        denied = fetch(muller, "--out", out, clinic=clinic, archives=proxy.url)
        assert denied.returncode == 1
        one_line_error(
            subprocess.run(
                [str(DICOMFLOW), "fetch", muller, "--out", out, "--url", proxy.url],
                env=fetch_env(clinic, None, None), capture_output=True, text=True, timeout=60,
            ),
            "403",
        )  # fmt: skip
    one_line_error(denied, "403")
    nowhere = f"http://127.0.0.1:{free_port()}"
    one_line_error(
        subprocess.run(
            [str(DICOMFLOW), "fetch", muller, "--out", out, "--url", nowhere],
            env=fetch_env(clinic, None, None), capture_output=True, text=True, timeout=60,
        ),
        "Cannot reach", nowhere,
    )  # fmt: skip
    assert not Path(out, "Müller José").exists()

    # A download folder on a full disk (a 64 KB tmpfs in a private mount namespace).
    disk = tmp_path / "disk"
    disk.mkdir()
    assert shutil.which("unshare"), "util-linux unshare is needed"
    script = f'mount -t tmpfs -o size=64k tmpfs "{disk}" && exec "$@"'
    full = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
         str(DICOMFLOW), "fetch", muller, "--out", str(disk)],
        env=fetch_env(clinic, None, None), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    one_line_error(full, "Not enough free space", "needs about")


pytestmark = pytest.mark.e2e
