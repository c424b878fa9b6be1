"""QIDO-RS answers in the DICOM JSON model (PS3.18 Annex F): the attributes each level
returns (PS3.18 Tables 10.6.3-3 to -5), built from index rows.

Each attribute is (tag, VR, value of a row). The default set of a level is returned always;
the others when named in `includefield` or with `includefield=all`. A study or series query
across studies also returns the upper levels' defaults, as PS3.18 requires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

Level = Literal["study", "series", "instance"]
Row = dict[str, Any]


@dataclass(frozen=True)
class Attribute:
    tag: int
    vr: str
    value: Callable[[Row, str], list[Any] | None]  # (row, base URL) -> Value
    default: bool = True


def _da(column: str) -> Callable[[Row, str], list[Any] | None]:
    def value(row: Row, _: str) -> list[Any] | None:
        d = row.get(column)
        return [d.strftime("%Y%m%d")] if isinstance(d, date) else None

    return value


def _text(column: str) -> Callable[[Row, str], list[Any] | None]:
    def value(row: Row, _: str) -> list[Any] | None:
        v = row.get(column)
        return [v] if v not in (None, "") else None

    return value


def _pn(column: str) -> Callable[[Row, str], list[Any] | None]:
    def value(row: Row, _: str) -> list[Any] | None:
        name = row.get(column) or ""
        if not name:
            return None
        groups = name.split("=")
        keys = ("Alphabetic", "Ideographic", "Phonetic")
        return [{k: v for k, v in zip(keys, groups[:3], strict=False) if v}]

    return value


def _const(v: str) -> Callable[[Row, str], list[Any] | None]:
    return lambda _row, _base: [v]


def _url(level: Level) -> Callable[[Row, str], list[Any] | None]:
    def value(row: Row, base: str) -> list[Any] | None:
        url = f"{base}/studies/{row['study_uid']}"
        if level != "study":
            url += f"/series/{row['series_uid']}"
        if level == "instance":
            url += f"/instances/{row['sop_instance_uid']}"
        return [url]

    return value


STUDY = [
    Attribute(0x00080005, "CS", _const("ISO_IR 192")),
    Attribute(0x00080020, "DA", _da("study_date")),
    Attribute(0x00080030, "TM", _text("study_time")),
    Attribute(0x00080050, "SH", _text("accession_number")),
    Attribute(0x00080056, "CS", _const("ONLINE")),
    Attribute(0x00080061, "CS", lambda r, _: list(r["modalities"]) or None),
    Attribute(0x00080090, "PN", _pn("referring_physician")),
    Attribute(0x00081030, "LO", _text("study_description")),
    Attribute(0x00100010, "PN", _pn("patient_name")),
    Attribute(0x00100020, "LO", _text("patient_id")),
    Attribute(0x00100030, "DA", _da("birth_date")),
    Attribute(0x00100040, "CS", _text("sex")),
    Attribute(0x0020000D, "UI", _text("study_uid")),
    Attribute(0x00200010, "SH", _text("study_id")),
    Attribute(0x00201206, "IS", lambda r, _: [r["series_count"]]),
    Attribute(0x00201208, "IS", lambda r, _: [r["instance_count"]]),
]
STUDY_URL = Attribute(0x00081190, "UR", _url("study"))
SERIES = [
    Attribute(0x00080060, "CS", _text("modality")),
    Attribute(0x0008103E, "LO", _text("series_description")),
    Attribute(0x00180015, "CS", _text("body_part")),
    Attribute(0x0020000E, "UI", _text("series_uid")),
    Attribute(0x00200011, "IS", _text("series_number")),
    Attribute(0x00201209, "IS", lambda r, _: [r["series_instance_count"]]),
]
SERIES_URL = Attribute(0x00081190, "UR", _url("series"))
INSTANCE = [
    Attribute(0x00080016, "UI", _text("sop_class_uid")),
    Attribute(0x00080018, "UI", _text("sop_instance_uid")),
    Attribute(0x00080056, "CS", _const("ONLINE")),
    Attribute(0x00083002, "UI", _text("transfer_syntax_uid")),
    Attribute(0x00200013, "IS", _text("instance_number")),
    Attribute(0x00280008, "IS", _text("number_of_frames")),
    Attribute(0x00280010, "US", _text("rows")),
    Attribute(0x00280011, "US", _text("columns")),
]
INSTANCE_URL = Attribute(0x00081190, "UR", _url("instance"))

# The attributes a level's answer may hold, in the order they are looked up (the level's
# own RetrieveURL wins over an upper level's).
LEVELS: dict[Level, list[Attribute]] = {
    "study": [*STUDY, STUDY_URL],
    "series": [*SERIES, SERIES_URL, *STUDY],
    "instance": [*INSTANCE, INSTANCE_URL, *SERIES, *STUDY],
}
# Upper-level attributes returned by default only in queries across studies or series.
_OWN = {"study": STUDY, "series": SERIES, "instance": INSTANCE}


def known_tags(level: Level) -> set[int]:
    return {a.tag for a in LEVELS[level]}


def selected(level: Level, include: set[int] | None, across: set[Level]) -> list[Attribute]:
    """The attributes to return: the level's own, the upper levels' when `across` them
    (e.g. /series without a study), then what `include` names (None = all)."""
    chosen: dict[int, Attribute] = {}
    for attr in LEVELS[level]:
        own = attr in _OWN[level] or attr.tag == 0x00081190
        upper = any(attr in _OWN[lv] for lv in across)
        wanted = include is None or attr.tag in include
        if attr.tag not in chosen and (own or upper or wanted):
            chosen[attr.tag] = attr
    if level != "study":  # the UIDs that place an answer in its study and series
        for attr in (*STUDY, *SERIES):
            placing = attr.tag == 0x0020000D or (level, attr.tag) == ("instance", 0x0020000E)
            if placing and attr.tag not in chosen:
                chosen[attr.tag] = attr
    return sorted(chosen.values(), key=lambda a: a.tag)


def to_json(row: Row, attrs: list[Attribute], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in attrs:
        value = attr.value(row, base)
        element: dict[str, Any] = {"vr": attr.vr}
        if value:
            element["Value"] = [int(v) if attr.vr in ("IS", "US") else v for v in value]
        out[f"{attr.tag:08X}"] = element
    return out
