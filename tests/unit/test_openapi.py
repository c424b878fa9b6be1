"""The API's OpenAPI document is valid OpenAPI, every operation has its own id (generated
clients name methods after them), and the archive routes say what they answer: the media
types of each format, 206/304/401/403/404/416, the Range and If-Range headers.

The document is the full app's: every optional port given (fakes: building the document
calls none of them), so DICOMweb, the previews and the archive relay are checked too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from libs.imaging.isolated import Renderer
from libs.runtime.probes import Readiness
from libs.runtime.sandbox import IsolatedExecutor
from libs.storage.memory import MemoryStore
from services.api.app import create_app
from services.api.dicomweb import DicomWebPorts, StowLimits
from services.api.previews import PreviewSource

ARCHIVES = [
    "/v1/studies/{study_uid}/archive",
    "/v1/studies/{study_uid}/series/{series_uid}/archive",
]
PREVIEWS = [
    f"/v1/studies/{{study_uid}}/series/{{series_uid}}/instances/{{sop_uid}}/{name}.jpg"
    for name in ("preview", "thumbnail")
]
DICOMWEB_PATHS = 19
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


async def publish(*_: object) -> None:
    return None


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = MemoryStore()
    previews = PreviewSource(store, cast(Renderer, object()))  # never called
    dicomweb = DicomWebPorts(
        store,
        previews,
        cast(IsolatedExecutor, object()),  # never called
        publish=publish,
        stow=StowLimits(staging_dir=tmp_path_factory.mktemp("stow")),
    )
    app = create_app(
        None,  # type: ignore[arg-type]  # building the document touches no database
        publish,
        CollectorRegistry(),
        Readiness(),
        previews=previews,
        dicomweb=dicomweb,
        packager=httpx.AsyncClient(),
        exports_dir=Path(tmp_path_factory.mktemp("exports")),
    )
    return app.openapi()


def shared_operation_ids(document: dict[str, Any]) -> list[str]:
    ids = Counter(
        op["operationId"]
        for item in document["paths"].values()
        for method, op in item.items()
        if method in METHODS
    )
    assert ids, "the document has no operations"
    return sorted(i for i, n in ids.items() if n > 1)


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)  # raises on the first error


def test_every_route_is_in_the_document(document: dict[str, Any]) -> None:
    """The checks below see DICOMweb (QIDO, WADO-RS, STOW, WADO-URI), the previews and the
    archive relay: none of them is left out because its port was not given."""
    paths = set(document["paths"])
    assert len({p for p in paths if p.startswith("/dicom-web/")}) == DICOMWEB_PATHS
    assert {"/dicom-web/studies", "/dicom-web/wado"} <= paths
    assert "post" in document["paths"]["/dicom-web/studies"]  # STOW-RS
    assert set(PREVIEWS) | set(ARCHIVES) <= paths


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    assert shared_operation_ids(document) == []


def test_the_uniqueness_check_finds_a_shared_id() -> None:
    app = FastAPI()

    @app.get("/a", operation_id="same")
    def first() -> None: ...

    @app.head("/b", operation_id="same")
    def second() -> None: ...

    @app.get("/c", operation_id="other")
    def third() -> None: ...

    with pytest.warns(UserWarning, match="Duplicate Operation ID"):
        document = app.openapi()
    assert shared_operation_ids(document) == ["same"]


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
