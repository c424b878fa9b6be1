"""QIDO-RS query parameters (PS3.18 §8.3.4) into an index filter, or a 400 with the reason.

An attribute is named by keyword (`PatientName`) or tag (`00100010`). An unknown name, a
malformed UID or date, a date range that ends before it starts, or a bad `limit` is a 400.
A valid attribute this server cannot match on is ignored with a `Warning: 299` header, as
PS3.18 §8.3.4.1 allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fastapi import HTTPException
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from starlette.datastructures import QueryParams

from libs.db.dicomweb import QidoFilter
from libs.db.index import parse_da
from libs.dicom.uids import UID_MAX_LENGTH, UID_RE
from services.api.dicomweb.attributes import Level

RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
Bounds = tuple[date | None, date | None]


def bad_request(reason: str) -> HTTPException:
    return HTTPException(status_code=400, detail=reason)


def attribute_tag(name: str) -> int:
    """A keyword or an 8-digit tag; a sequence path (`00400275.00321060`) is refused here."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise bad_request(f"unknown attribute {name!r}: not a DICOM keyword or tag")
    return int(tag)


def uid_list(values: list[str], name: str) -> list[str]:
    uids = [u.strip() for v in values for u in v.split(",") if u.strip()]
    for uid in uids:
        if len(uid) > UID_MAX_LENGTH or not UID_RE.fullmatch(uid):
            raise bad_request(f"{name}: {uid[:80]!r} is not a valid UID")
    return uids


def date_range(value: str, name: str) -> Bounds | None:
    """`YYYYMMDD`, `A-B`, `-B`, `A-` (PS3.4 C.2.2.2.5); empty or `*` matches everything."""
    value = value.strip()
    if value in ("", "*"):
        return None
    low_text, dash, high_text = value.partition("-")
    if not dash:
        high_text = low_text
    low = parse_da(low_text) if low_text else None
    high = parse_da(high_text) if high_text else None
    if (low_text and low is None) or (high_text and high is None) or (low is high is None):
        raise bad_request(f"{name}: {value!r} is not a date (YYYYMMDD) or a date range")
    if low is not None and high is not None and high < low:
        raise bad_request(f"{name}: the range {value!r} ends before it starts")
    return low, high


def integer(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise bad_request(f"{name}: {value!r} is not an integer") from None


# Matching keys by tag: (lowest level they apply to, QidoFilter field, kind of value).
KEYS: dict[int, tuple[Level, str, str]] = {
    0x00100010: ("study", "patient_name", "text"),
    0x00100020: ("study", "patient_id", "text"),
    0x00100030: ("study", "birth_date", "date"),
    0x00100040: ("study", "sex", "text"),
    0x00080020: ("study", "study_date", "date"),
    0x00080050: ("study", "accession_number", "text"),
    0x00200010: ("study", "study_id", "text"),
    0x00081030: ("study", "study_description", "text"),
    0x00080061: ("study", "modalities_in_study", "codes"),
    0x0020000D: ("study", "study_uids", "uids"),
    0x0020000E: ("series", "series_uids", "uids"),
    0x00080060: ("series", "modality", "text"),
    0x00200011: ("series", "series_number", "int"),
    0x0008103E: ("series", "series_description", "text"),
    0x00080018: ("instance", "sop_uids", "uids"),
    0x00080016: ("instance", "sop_class_uids", "uids"),
    0x00200013: ("instance", "instance_number", "int"),
}
_DEPTH = {"study": 0, "series": 1, "instance": 2}


@dataclass
class Query:
    filter: QidoFilter
    include: set[int] | None  # None: includefield=all
    limit: int
    offset: int
    warnings: list[str] = field(default_factory=list)
    more: bool = False  # set once answered: a further page exists


def _value(kind: str, values: list[str], name: str) -> Any:
    if kind == "uids":
        return uid_list(values, name)
    if len(values) > 1:
        raise bad_request(f"{name} is given {len(values)} times; it takes one value")
    value = values[0]
    if kind == "date":
        return date_range(value, name)
    if kind == "int":
        return integer(value, name)
    if kind == "codes":
        return [c.strip() for c in value.replace("\\", ",").split(",") if c.strip()]
    return value


def parse(params: QueryParams, level: Level, fixed: dict[str, Any], *, max_limit: int) -> Query:
    """The query for `level`; `fixed` holds the filter fields the path sets (study UID...)."""
    fields: dict[str, Any] = dict(fixed)
    warnings: list[str] = []
    include: set[int] | None = set()
    for name in params:
        values = params.getlist(name)
        if name in RESERVED:
            continue
        if "." in name:
            warnings.append(f"{name} (sequence matching) is not supported and was ignored")
            continue
        tag = attribute_tag(name)
        key = KEYS.get(tag)
        if key is None or _DEPTH[key[0]] > _DEPTH[level]:
            keyword = keyword_for_tag(tag) or name
            warnings.append(f"{keyword} is not a {level}-level matching key and was ignored")
            continue
        _, field_name, kind = key
        value = _value(kind, values, name)
        if field_name in fields and kind == "uids":  # the path already names it
            value = [v for v in value if v in fields[field_name]] or ["0"]
        fields[field_name] = value
    for item in params.getlist("includefield"):
        for name in (n.strip() for n in item.split(",")):
            if name == "all":
                include = None
            elif name and include is not None:
                if "." in name:
                    raise bad_request(f"includefield {name!r}: sequence paths are not supported")
                include.add(attribute_tag(name))
            elif name:
                attribute_tag(name)  # still refused when unknown
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise bad_request("fuzzymatching must be true or false")
    limit = _count(params.get("limit"), "limit", max_limit) or max_limit
    offset = _count(params.get("offset"), "offset", None) or 0
    return Query(QidoFilter(**fields, fuzzy=fuzzy == "true"), include, limit, offset, warnings)


def _count(value: str | None, name: str, cap: int | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise bad_request(f"{name} must be a non-negative integer") from None
    if n < 0:
        raise bad_request(f"{name} must be a non-negative integer")
    return min(n, cap) if cap is not None else n
