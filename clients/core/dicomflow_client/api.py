"""The dicomflow API as typed calls: study search, one study, archive URLs.

Synchronous httpx: both front ends run a download in a worker thread (the GUI) or in the
foreground (the CLI), and a blocking client is the simplest one to cancel between chunks.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from dicomflow_client.errors import (
    BadRequest,
    ClientError,
    NotFound,
    PermissionDenied,
    ServerError,
    Unauthorized,
    Unreachable,
)

ArchiveFormat = Literal["tar.zst", "zip", "tar"]
FORMATS: tuple[ArchiveFormat, ...] = ("tar.zst", "zip", "tar")
PAGE = 200


class Total(int):
    """How many studies a search matched. `exact` False: at least this many (the server
    stops counting at its API_SEARCH_COUNT_LIMIT); `str()` then reads "1,000+"."""

    exact: bool

    def __new__(cls, count: int, exact: bool = True) -> Total:
        total = super().__new__(cls, count)
        total.exact = exact
        return total

    def __str__(self) -> str:
        return f"{int(self):,}" if self.exact else f"{int(self):,}+"

    def __format__(self, spec: str) -> str:  # f"{total}" reads as str(total)
        return str(self) if not spec else int.__format__(self, spec)


@dataclass(frozen=True)
class SearchFilter:
    """Every field optional; empty strings count as not given."""

    patient_name: str = ""
    patient_id: str = ""
    birth_date: date | None = None
    sex: str = ""  # M, F or O
    year: int | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    modality: str = ""
    accession_number: str = ""

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            if value in (None, ""):
                continue
            out[name] = value.isoformat() if isinstance(value, date) else str(value).strip()
        return out


@dataclass(frozen=True)
class Patient:
    patient_id: str
    patient_name: str
    birth_date: date | None
    sex: str

    @property
    def display_name(self) -> str:
        """`Иванов^Иван` as `Иванов Иван`."""
        return " ".join(self.patient_name.replace("^", " ").split()) or "(no name)"


@dataclass(frozen=True)
class Study:
    study_uid: str
    study_date: date | None
    study_description: str
    modalities: list[str]
    series_count: int
    instance_count: int
    size_bytes: int
    patient: Patient
    accession_number: str = ""
    revision: int = 0
    stable: bool = True
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Study:
        p = body["patient"]
        return cls(
            study_uid=body["study_uid"],
            study_date=_date(body.get("study_date")),
            study_description=body.get("study_description") or "",
            modalities=list(body.get("modalities") or []),
            series_count=int(body.get("series_count") or 0),
            instance_count=int(body.get("instance_count") or 0),
            size_bytes=int(body.get("size_bytes") or 0),
            patient=Patient(
                patient_id=p.get("patient_id") or "",
                patient_name=p.get("patient_name") or "",
                birth_date=_date(p.get("birth_date")),
                sex=p.get("sex") or "",
            ),
            accession_number=body.get("accession_number") or "",
            revision=int(body.get("revision") or 0),
            stable=bool(body.get("stable", True)),
            raw=body,
        )


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) and value else None


class Client:
    """`base_url` is the API (e.g. http://127.0.0.1:8000); `archive_base_url` the address
    serving `/v1/studies/{uid}/archive`, the API itself unless given. An https:// server is
    verified against `ca_bundle` (a PEM file of the hospital's own CA) when given, else
    against the system's certificate authorities."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        archive_base_url: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: str | Path | None = None,
    ) -> None:
        if not base_url.strip():
            raise ClientError("No server address is set. Enter it in the settings.")
        if not api_key.strip():
            raise Unauthorized("No API key is set. Enter the key you were given in the settings.")
        self.base_url = base_url.strip().rstrip("/")
        self.archive_base_url = (archive_base_url or self.base_url).strip().rstrip("/")
        self.http = httpx.Client(
            verify=_verify(ca_bundle),
            headers={"Authorization": f"Bearer {api_key.strip()}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(
        self, criteria: SearchFilter, *, limit: int = 1000, offset: int = 0
    ) -> tuple[Total, list[Study]]:
        """(total matches, up to `limit` studies from the `offset`-th), newest first, paging
        as needed. The total may be a lower bound (`Total.exact` False, shown as "1,000+")."""
        found: list[Study] = []
        total = Total(0)
        for page_total, page in self._pages(criteria.params(), limit, offset):
            total = page_total  # the last page's: counted furthest
            found.extend(page)
        return total, found[:limit]

    def _pages(
        self, params: dict[str, str], limit: int, start: int
    ) -> Iterator[tuple[Total, list[Study]]]:
        offset = start
        while True:
            body = self._json("/v1/studies", {**params, "limit": str(PAGE), "offset": str(offset)})
            items = [Study.from_json(i) for i in body["items"]]
            # An older server sends no `total_exact`: its totals are exact.
            total = Total(int(body["total"]), bool(body.get("total_exact", True)))
            yield total, items
            offset += len(items)
            if not items or (total.exact and offset >= total) or offset - start >= limit:
                return

    def study(self, study_uid: str) -> Study:
        return Study.from_json(self._json(f"/v1/studies/{quote(study_uid, safe='')}", {}))

    def archive_url(self, study_uid: str, fmt: ArchiveFormat = "tar.zst") -> str:
        uid = quote(study_uid, safe="")
        return f"{self.archive_base_url}/v1/studies/{uid}/archive?format={fmt}"

    def _json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = self.base_url + path
        try:
            response = self.http.get(url, params=params)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from exc
        check(response, what="study")
        body: dict[str, Any] = response.json()
        return body


def _verify(ca_bundle: str | Path | None) -> ssl.SSLContext | bool:
    if ca_bundle is None or not str(ca_bundle).strip():
        return True
    path = Path(str(ca_bundle).strip()).expanduser()
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(
            f"The CA certificate file {path} cannot be read ({exc}). Check it in the settings."
        ) from None


def unreachable(base: str, exc: httpx.HTTPError) -> ClientError:
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"The server at {base} did not answer in time. Try again later.")
    if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
        return Unreachable(
            f"The server at {base} presented a certificate that could not be verified. "
            "Set the CA certificate file of your hospital's certificate authority in the settings."
        )
    return Unreachable(
        f"Cannot reach the server at {base}. Check the address and the network connection."
    )


def check(response: httpx.Response, *, what: str) -> None:
    """Raise the ClientError an HTTP error status means; return on 2xx."""
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    if status == 401:
        raise Unauthorized("The server did not accept the API key (401). Check it in the settings.")
    if status == 403:
        raise PermissionDenied(
            "This API key is not allowed to do that (403). Ask for a key with the clinician role."
        )
    if status == 404:
        raise NotFound(f"The {what} was not found on the server (404).")
    if status in (400, 422):
        raise BadRequest(f"The server rejected the search: {detail}")
    raise ServerError(f"The server had a problem (HTTP {status}). {detail}".strip())


def _detail(response: httpx.Response) -> str:
    try:
        response.read()
        body = response.json()
    except (ValueError, httpx.HTTPError):
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # pydantic errors: field and message
        parts = []
        for d in detail:
            if isinstance(d, dict):
                loc = [str(x) for x in d.get("loc", []) if x not in ("query", "body")]
                parts.append(f"{'.'.join(loc)}: {d.get('msg', '')}".strip(": "))
        return "; ".join(parts)
    return str(detail) if detail else ""
