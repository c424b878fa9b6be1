"""The common elements of a header in the DICOM JSON model straight from their raw bytes.

pydicom's `DataElement.to_json_dict` builds a DataElement per value (VR lookups, VM,
validation, type wrappers) and costs the extractor 2-4 times its own parse. For the value
representations nearly every header is made of, the same JSON is produced here with
pydicom's own value decoders (`pydicom.values`) and the same rules as `to_json_dict`
(empty values have no "Value", numbers as JSON numbers, person names by component
group); anything else, or any value these rules do not cover exactly, returns None and
takes pydicom's full path. tests/unit/test_dicomjson.py checks both give the same JSON
for every file of pydicom's test data.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

from pydicom.charset import default_encoding
from pydicom.multival import MultiValue
from pydicom.values import convert_PN, convert_single_string, convert_text

BULK_THRESHOLD = 1024
_STRINGS = frozenset({"AS", "CS", "DA", "DT", "TM"})
_TEXT = frozenset({"SH", "LO", "UC"})
_SINGLE = frozenset({"LT", "ST", "UT"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
FAST_VRS = frozenset(
    _STRINGS | _TEXT | _SINGLE | _BINARY | set(_NUMBERS) | {"AE", "UI", "PN", "IS", "DS", "AT"}
)


def _values(items: list[str]) -> list[Any] | None:
    return items if items != [""] else None


def _numbers(vr: str, value: bytes, little: bool) -> list[Any] | None:
    code = _NUMBERS[vr]
    size = struct.calcsize("<" + code)  # standard sizes (native "l" is 8 bytes)
    if len(value) % size:
        return None
    return list(struct.unpack(f"{'<' if little else '>'}{len(value) // size}{code}", value))


def _decimal(vr: str, value: bytes) -> list[Any] | None:
    items = value.decode(default_encoding).rstrip(" \x00").split("\\")
    if items == [""]:
        return []
    out: list[Any] = []
    for item in (i.strip() for i in items):
        if not item or not item.isascii():
            return None
        if vr == "IS":
            if not item.lstrip("+-").isdigit():
                return None
            out.append(int(item))
        else:
            number = float(item)
            if number != number or number in (float("inf"), float("-inf")):
                return None
            out.append(number)
    return out


def fast_element(
    vr: str, value: bytes, little: bool, charset: str | Sequence[str], path: str
) -> dict[str, Any] | None:
    """The JSON of one raw element, or None to let pydicom do it; `charset` is the
    dataset's Python encoding(s), as pydicom's `Dataset.original_character_set`."""
    out: dict[str, Any] = {"vr": vr}
    items: list[Any] | None
    if vr in _BINARY:
        if value:
            if len(value) > (BULK_THRESHOLD // 4) * 3:
                out["BulkDataURI"] = "bulkdata/" + path
            else:
                out["InlineBinary"] = base64.b64encode(value).decode()
        return out
    if vr == "AT":  # tags as "GGGGEEEE", each a (group, element) pair of 16-bit numbers
        if len(value) % 4:
            return None
        pairs = struct.unpack(f"{'<' if little else '>'}{len(value) // 2}H", value)
        items = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
    elif vr in _NUMBERS:
        items = _numbers(vr, value, little)
        if items is None:
            return None
    elif vr in ("IS", "DS"):
        items = _decimal(vr, value)
        if items is None:
            return None
    elif vr in _STRINGS:
        items = _values(value.decode(default_encoding).rstrip(" \x00").split("\\"))
    elif vr == "AE":
        items = _values([v.strip() for v in value.decode(default_encoding).split("\\")])
    elif vr == "UI":
        items = _values(value.decode(default_encoding).rstrip("\x00 ").split("\\"))
    else:
        encodings = [charset] if isinstance(charset, str) else list(charset)
        if vr in _TEXT:
            text = convert_text(value, encodings)
            items = _values(list(text) if isinstance(text, MultiValue) else [str(text)])
        elif vr in _SINGLE:
            items = _values([convert_single_string(value, encodings)])
        else:  # PN
            names = convert_PN(value, encodings)
            listed = list(names) if isinstance(names, MultiValue) else [names]
            items = [_name(n) for n in listed] if str(listed[0]) or len(listed) > 1 else None
    if items:
        out["Value"] = items
    return out


def _name(name: Any) -> dict[str, str]:
    components = name.components
    out = {"Alphabetic": components[0]}
    if len(components) > 1:
        out["Ideographic"] = components[1]
    if len(components) > 2:
        out["Phonetic"] = components[2]
    return out
