"""Locust scenarios: clinicians reading the index, operators driving ingestion.

Run by `make loadtest` (load_test/run.py starts a local stack, seeds it and passes these
through the environment), or by hand against any deployment:

    LOADTEST_CLINICIAN_KEY=... LOADTEST_OPS_KEY=... LOADTEST_IMPORT_PATH=/nas/demo \\
    LOADTEST_ORTHANC_WEBHOOK_URL=http://orthanc-watcher:8112/v1/ingest/orthanc \\
    LOADTEST_ORTHANC_STUDY_IDS=<Orthanc study id>,... \\
    locust -f load_test/locustfile.py --host http://127.0.0.1:8000

Study archives are downloaded on the API's origin (`--host`), which relays them to the
packager. The Orthanc webhook is served by the orthanc-watcher on its own port: its full URL
and the Orthanc ids of studies it may name come from the environment (without them the
webhook task does nothing). Every answer other than the expected ones is a failure, a 404
included.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

NAMES = [n for n in os.environ.get("LOADTEST_PATIENT_NAMES", "smith").split(",") if n]
WEBHOOK_URL = os.environ.get("LOADTEST_ORTHANC_WEBHOOK_URL", "")
ORTHANC_STUDIES = [s for s in os.environ.get("LOADTEST_ORTHANC_STUDY_IDS", "").split(",") if s]
ARCHIVE_FORMATS = ["tar.zst", "zip", "tar"]


def _headers(var: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ.get(var, '')}"}


def _expect(response: ResponseContextManager, ok: set[int]) -> None:
    """Pass the statuses in `ok`; anything else (a 404 too) is a failure."""
    if response.status_code in ok:
        response.success()
    else:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class Clinician(HttpUser):
    """Searches by name and date, opens studies, downloads archives (with Range)."""

    weight = 4
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.client.headers.update(_headers("LOADTEST_CLINICIAN_KEY"))
        self.study_uids: list[str] = []

    def _remember(self, body: dict[str, Any]) -> None:
        self.study_uids = [s["study_uid"] for s in body.get("items", [])] or self.study_uids

    @task(4)
    def search_by_name(self) -> None:
        name = random.choice(NAMES)
        with self.client.get(
            "/v1/studies",
            params={"patient_name": name},
            name="/v1/studies?patient_name",
            catch_response=True,
        ) as r:
            if r.status_code == 200:
                self._remember(r.json())
                r.success()
            else:
                r.failure(f"HTTP {r.status_code}")

    @task(2)
    def search_by_date(self) -> None:
        with self.client.get(
            "/v1/studies",
            params={"study_date_from": "2023-01-01", "study_date_to": "2024-12-31", "limit": 20},
            name="/v1/studies?study_date_from&to",
            catch_response=True,
        ) as r:
            if r.status_code == 200:
                self._remember(r.json())
                r.success()
            else:
                r.failure(f"HTTP {r.status_code}")

    @task(3)
    def study_detail(self) -> None:
        if not self.study_uids:
            self.search_by_name()
            return
        uid = random.choice(self.study_uids)
        self.client.get(f"/v1/studies/{uid}", name="/v1/studies/{study_uid}")

    @task(1)
    def archive_range(self) -> None:
        """The first 64 KiB of an archive (a download manager's first request), then the
        rest from there: the resume a dropped connection needs."""
        if not self.study_uids:
            return
        uid = random.choice(self.study_uids)
        fmt = random.choice(ARCHIVE_FORMATS)
        url = f"/v1/studies/{uid}/archive"
        with self.client.get(
            url,
            params={"format": fmt},
            headers={"Range": "bytes=0-65535"},
            name=f"/v1/studies/{{study_uid}}/archive?format={fmt} (Range)",
            catch_response=True,
        ) as r:
            _expect(r, {206})
            etag = r.headers.get("etag", "")
        if r.status_code != 206 or int(r.headers.get("content-length", 0)) < 65536:
            return  # the whole archive fitted in the first range
        with self.client.get(
            url,
            params={"format": fmt},
            headers={"Range": "bytes=65536-", "If-Range": etag},
            name=f"/v1/studies/{{study_uid}}/archive?format={fmt} (resume)",
            catch_response=True,
        ) as r:
            _expect(r, {206})


class Operator(HttpUser):
    """Starts import tasks and follows them; posts the Orthanc webhook."""

    weight = 1
    wait_time = between(2.0, 5.0)

    def on_start(self) -> None:
        self.client.headers.update(_headers("LOADTEST_OPS_KEY"))
        self.tasks_started: list[str] = []

    @task(1)
    def start_import(self) -> None:
        path = os.environ.get("LOADTEST_IMPORT_PATH", "/nas")
        with self.client.post(
            "/v1/imports",
            json={"source_path": path, "description": "load test"},
            name="/v1/imports (POST)",
            catch_response=True,
        ) as r:
            if r.status_code == 202:
                self.tasks_started.append(r.json()["task_id"])
                r.success()
            else:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")

    @task(4)
    def follow_import(self) -> None:
        if not self.tasks_started:
            return
        self.client.get(
            f"/v1/imports/{random.choice(self.tasks_started)}",
            name="/v1/imports/{task_id}",
        )

    @task(2)
    def list_imports(self) -> None:
        self.client.get("/v1/imports", params={"limit": 20}, name="/v1/imports")

    @task(2)
    def orthanc_webhook(self) -> None:
        """What Orthanc's OnStableStudy callback sends to the orthanc-watcher."""
        if not (WEBHOOK_URL and ORTHANC_STUDIES):
            return
        with self.client.post(
            WEBHOOK_URL,
            json={"ID": random.choice(ORTHANC_STUDIES), "Path": "Study"},
            name="orthanc-watcher /v1/ingest/orthanc (POST)",
            catch_response=True,
        ) as r:
            _expect(r, {202})
