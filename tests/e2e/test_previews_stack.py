"""The converter in the running stack: an import is indexed as before, the first image of
the series gets its JPEGs ahead, the others are rendered by the API on first request and
kept next to the canonical copy; the API serves them through the search's link."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from libs.dicom.synthetic import make_dataset, synthetic_uid, write_instance
from libs.imaging.keys import preview_key
from libs.storage.local import path_from_file_url
from load_test.process_stack import Stack
from tests.polling import eventually


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def niceness(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19, after pid and comm


async def test_imported_images_get_previews_served_by_the_api(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    stack.start("jpg-converter")
    await stack.wait_ready(["jpg-converter"])
    # Previews yield the CPU to ingest: the converter and its render process run niced.
    converter = stack.procs["jpg-converter"].pid
    renderers = [p for p in children(converter) if "multiprocessing" in cmdline(p)]
    assert renderers, children(converter)
    assert [niceness(p) for p in (converter, *renderers)] == [10] * (1 + len(renderers))
    tree = stack.root / "imports" / "previews"
    study, series = synthetic_uid("e2e-previews"), synthetic_uid("e2e-previews-series")
    sops = [synthetic_uid(f"e2e-previews-{n}") for n in range(3)]
    for n, sop in enumerate(sops):
        ds = make_dataset(
            patient_id="E2E-PREVIEW",
            patient_name="Preview^Test",
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            rows=128,
            columns=128,
            instance_number=n + 1,
            pixel_seed=n,
        )
        write_instance(tree / f"{n}.dcm", ds)
    task = await stack.wait_task(await stack.start_import(tree))
    assert task["status"] == "completed" and task["counters"]["new_instances"] == 3, task

    storage = path_from_file_url(stack.env["STORAGE_URL"])

    def rendered() -> list[str]:
        return [sop for sop in sops if all(
            (storage / preview_key(study, series, sop, kind)).exists()
            for kind in ("preview", "thumbnail"))]  # fmt: skip

    await eventually(rendered, 60, what=lambda: stack.tail("jpg-converter"), interval=0.25)
    await asyncio.sleep(1)  # the converter's other outcomes (none may render more)
    assert len(rendered()) == 1, "one image of the series rendered ahead, not every one"

    async with stack.client() as c:
        body = (await c.get("/v1/studies", params={"patient_id": "E2E-PREVIEW"})).json()
        link = body["items"][0]["thumbnail_url"]
        assert link == f"/v1/studies/{study}/series/{series}/instances/{sops[0]}/thumbnail.jpg"
        response = await c.get(link)
        assert response.status_code == 200, response.text
        kept = storage / preview_key(study, series, sops[0], "thumbnail")
        assert response.content == kept.read_bytes(), "rendered once, kept next to the copy"
        assert (await c.get(link)).content == response.content
        for sop in sops:  # every image, rendered ahead or on request, then kept
            url = f"/v1/studies/{study}/series/{series}/instances/{sop}/preview.jpg"
            got = await c.get(url)
            assert got.status_code == 200 and got.content[:2] == b"\xff\xd8"
            assert (
                got.content == (storage / preview_key(study, series, sop, "preview")).read_bytes()
            )
        windowed = await c.get(link.replace("thumbnail", "preview"), params={"preset": "bone"})
        assert windowed.status_code == 200 and windowed.content[:2] == b"\xff\xd8"

    statuses = await pool.fetch(
        "SELECT status, count(*) FROM ingest_files WHERE uri LIKE $1 GROUP BY 1",
        f"%{tree.name}%",
    )
    assert {r["status"]: r["count"] for r in statuses} == {"indexed": 3}
