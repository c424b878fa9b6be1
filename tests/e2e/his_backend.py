"""A patient-aware REST backend for the connector's tests, run as a real HTTP server
(`python -m uvicorn tests.e2e.his_backend:app`): patients unique by PatientID, images unique
by SOP Instance UID (409 for a second one), and failures at random (`HIS_FAIL_RATE`, seeded by
`HIS_SEED`): half of them before the request is applied (503), half after (500: applied, the
answer lost), the case that makes a client without idempotency create things twice.
`GET /state` tells the test what it holds, and per key (`patient:<PatientID>`,
`image:<SOP Instance UID>`) how many requests reached it (`attempts`: past the 503s), how many
were answered 409 (`conflicts`: re-sends of something applied) and how many were applied with
their answer lost (`lost`): uniqueness hides a duplicate, these counts show every re-send."""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

app = FastAPI()
FAIL_RATE = float(os.environ.get("HIS_FAIL_RATE", "0"))
RNG = random.Random(int(os.environ.get("HIS_SEED", "1")))
patients: dict[str, dict[str, Any]] = {}  # backend id -> patient
by_patient_id: dict[str, str] = {}
images: dict[str, dict[str, Any]] = {}  # SOP Instance UID -> image
counts: dict[str, int] = {"failed_before": 0, "failed_after": 0, "conflicts": 0}
attempts: Counter[str] = Counter()  # key -> requests past the 503s
conflicts: Counter[str] = Counter()  # key -> answered 409
lost_answers: Counter[str] = Counter()  # key -> applied, answered 500


def fate() -> str:
    draw = RNG.random()
    if draw < FAIL_RATE / 2:
        counts["failed_before"] += 1
        return "before"
    if draw < FAIL_RATE:
        return "after"
    return "ok"


def lost(key: str) -> Response:
    counts["failed_after"] += 1
    lost_answers[key] += 1
    return JSONResponse({"error": "internal error"}, status_code=500)


def conflict(key: str) -> None:
    counts["conflicts"] += 1
    conflicts[key] += 1


@app.get("/patients")
async def find(patient_id: str) -> Response:
    if fate() == "before":
        return JSONResponse({"error": "busy"}, status_code=503)
    found = by_patient_id.get(patient_id)
    return JSONResponse([patients[found]] if found else [])


@app.post("/patients")
async def create(request: Request) -> Response:
    f = fate()
    if f == "before":
        return JSONResponse({"error": "busy"}, status_code=503)
    body = await request.json()
    pid = body["patient_id"]
    key = f"patient:{pid}"
    attempts[key] += 1
    if pid in by_patient_id:
        conflict(key)
        return JSONResponse({"error": "exists", "id": by_patient_id[pid]}, status_code=409)
    new = {**body, "id": uuid.uuid4().hex}
    patients[new["id"]] = new
    by_patient_id[pid] = new["id"]
    return lost(key) if f == "after" else JSONResponse({"id": new["id"]}, status_code=201)


@app.post("/patients/{backend_id}/images")
async def upload(backend_id: str, request: Request) -> Response:
    f = fate()
    if f == "before":
        return JSONResponse({"error": "busy"}, status_code=503)
    if backend_id not in patients:
        return JSONResponse({"error": "no such patient"}, status_code=404)
    sop = request.headers["Idempotency-Key"]
    key = f"image:{sop}"
    attempts[key] += 1
    if sop in images:
        conflict(key)
        return JSONResponse({"error": "exists"}, status_code=409)
    body = await request.body()
    images[sop] = {
        "patient": backend_id,
        "study": request.headers.get("X-Study-Instance-UID"),
        "type": request.headers.get("Content-Type"),
        "size": len(body),
        "jpeg": body[:2] == b"\xff\xd8",
    }
    return lost(key) if f == "after" else Response(status_code=201)


@app.get("/state")
async def state() -> dict[str, Any]:
    return {
        "patients": list(patients.values()),
        "images": images,
        "counts": counts,
        "attempts": attempts,
        "conflicts": conflicts,
        "lost": lost_answers,
    }
