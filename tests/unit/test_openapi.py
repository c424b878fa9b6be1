"""The API's OpenAPI document is valid OpenAPI, every operation has its own id (generated
clients name methods after them), and the archive routes say what they answer: the media
types of each format, 206/304/401/403/404/416, the Range and If-Range headers."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from libs.runtime.probes import Readiness
from services.api.app import create_app

ARCHIVES = [
    "/v1/studies/{study_uid}/archive",
    "/v1/studies/{study_uid}/series/{series_uid}/archive",
]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    async def publish(_: object) -> None:
        return None

    app = create_app(
        None,  # type: ignore[arg-type]  # building the document touches no database
        publish,
        CollectorRegistry(),
        Readiness(),
        packager=httpx.AsyncClient(),
    )
    return app.openapi()


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)  # raises on the first error


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = Counter(
        op["operationId"]
        for item in document["paths"].values()
        for method, op in item.items()
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    )
    assert ids and all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]


@pytest.mark.parametrize("path", ARCHIVES)
def test_archive_operations_are_typed(document: dict[str, Any], path: str) -> None:
    item = document["paths"][path]
    assert set(item) == {"get", "head"}
    get, head = item["get"], item["head"]
    assert get["operationId"] != head["operationId"]
    for op in (get, head):
        assert set(op["responses"]) >= {"200", "206", "304", "401", "403", "404", "416"}
        assert op["security"] == [{"HTTPBearer": []}]
        headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert headers == {"Range", "If-Range", "If-None-Match"}
        [fmt] = [p for p in op["parameters"] if p["name"] == "format"]
        assert fmt["schema"]["enum"] == ["tar.zst", "zip", "tar"]
    for status in ("200", "206"):
        content = get["responses"][status]["content"]
        assert set(content) == {"application/zstd", "application/zip", "application/x-tar"}
        assert all(c["schema"] == {"type": "string", "format": "binary"} for c in content.values())
        assert "ETag" in get["responses"][status]["headers"]
        assert "content" not in head["responses"][status]  # HEAD has no body
    assert "Content-Range" in get["responses"]["206"]["headers"]
    assert "Content-Range" in get["responses"]["416"]["headers"]
    error = get["responses"]["404"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorOut"}
