"""Locust scenarios: clinicians reading the index, operators driving ingestion.

Run by `make loadtest` (load_test/run.py starts a local stack, seeds it and passes these
through the environment), or by hand against any deployment:

    LOADTEST_CLINICIAN_KEY=... LOADTEST_OPS_KEY=... LOADTEST_IMPORT_PATH=/nas/demo \\
    locust -f load_test/locustfile.py --host http://127.0.0.1:8000

Endpoints still being built elsewhere (the study archive, the Orthanc webhook) are exercised
already: a 404/405 from them counts as "not deployed yet" (reported under its own name),
anything else is judged as the real thing.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

NAMES = [n for n in os.environ.get("LOADTEST_PATIENT_NAMES", "smith").split(",") if n]
NOT_DEPLOYED = {404, 405}


def _headers(var: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ.get(var, '')}"}


def _pending(response: ResponseContextManager, ok: set[int]) -> None:
    """Pass 2xx in `ok`; an endpoint that does not exist yet passes under a name of its own."""
    if response.status_code in ok:
        response.success()
    elif response.status_code in NOT_DEPLOYED:
        response.request_meta["name"] += " [not deployed]"
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
        if not self.study_uids:
            return
        uid = random.choice(self.study_uids)
        with self.client.get(
            f"/v1/studies/{uid}/archive",
            headers={"Range": "bytes=0-65535"},
            name="/v1/studies/{study_uid}/archive (Range)",
            catch_response=True,
            stream=True,
        ) as r:
            _pending(r, {200, 206})


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

    @task(1)
    def orthanc_webhook(self) -> None:
        with self.client.post(
            "/v1/ingest/orthanc",
            json={"ChangeType": "StableStudy", "ResourceType": "Study", "ID": "loadtest"},
            name="/v1/ingest/orthanc (POST)",
            catch_response=True,
        ) as r:
            _pending(r, {200, 202})
