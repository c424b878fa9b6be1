"""The DICOM JSON model (PS3.18 Annex F) of an instance's header, kept for DICOMweb metadata.

`header_json` turns a parsed dataset into the JSON text WADO-RS `/metadata` answers with,
once, where the header is parsed anyway (the extractor), so a metadata request reads the
index and never the stored file. Values come from pydicom's `DataElement.to_json_dict`;
what this module adds:

- Bulk data is left out: a binary value over `BULK_THRESHOLD` bytes, a value pydicom
  deferred (over its `defer_size`, never read) and the pixel data (not parsed at all with
  `stop_before_pixels`) become a `BulkDataURI`, relative to the instance's WADO-RS URL:
  `bulkdata/7FE00010`, or `bulkdata/00540016/1/00181072` inside sequence items (item
  numbers from 1). The API makes them absolute at answer time (`absolute_bulk_uris`), so
  the stored text does not depend on the origin the API is reached at.
- One malformed element is left out rather than losing the header; a dataset that cannot
  be rendered at all, or whose JSON is over `MAX_JSON_CHARS` (events stay far below the
  broker's message size limit), gives None: the API then reads the stored file instead.
- Compact separators, so the stored text is as small as the model allows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.valuerep import AMBIGUOUS_VR

from libs.dicom.dicomjson_fast import FAST_VRS, fast_element
from libs.dicom.quickread import Items, plain_vr

BULK_THRESHOLD = 1024  # bytes of a binary value above which it is a BulkDataURI
MAX_JSON_CHARS = 256 * 1024
BULK_PREFIX = "bulkdata/"
_URI_FIELD = '"BulkDataURI":"'
# VRs PS3.18 F.2.6 allows a BulkDataURI for (the others are never deferred in practice).
_BULK_VRS = frozenset(
    {"DS", "FL", "FD", "IS", "LT", "OB", "OD", "OF", "OL", "OV", "OW"}
    | {"SL", "SS", "ST", "SV", "UC", "UN", "UR", "UL", "US", "UT", "UV"}
)


def header_json(ds: Dataset, pixel: tuple[int, str] | None = None) -> str | None:
    """The DICOM JSON text of `ds`; `pixel` = (tag, VR) of a pixel data element not in `ds`
    (parsed with `stop_before_pixels`). None when it cannot be made or is too large."""
    try:
        model = dataset_model(ds, "")
    except (MemoryError, KeyboardInterrupt):
        raise
    except BaseException:  # RecursionError, a converter's error: no JSON, not a lost file
        return None
    return _text(model, pixel)


class NeedsPydicom(Exception):
    """An element `elements_json` does not render exactly as pydicom would."""


def elements_json(
    elements: Mapping[int, DataElement | RawDataElement],
    charset: str | Sequence[str],
    pixel: tuple[int, str] | None = None,
    sequences: Mapping[int, Items] | None = None,
) -> str | None:
    """`header_json` of a dataset given as its top-level elements as read (ascending tags,
    values not deferred) and the items of its sequences (`libs.dicom.quickread`), without
    a pydicom Dataset: every element is rendered by `fast_element`, or NeedsPydicom is
    raised. `charset` is the dataset's Python encoding(s), as pydicom's
    `Dataset.original_character_set` (its items have no character set of their own).

    The text is joined from each element's JSON text, which is what `json.dumps` of the
    whole model writes; a short value's text is remembered (`_fragment`), since most of
    an instance's values are its series' and study's, repeated in every instance."""
    codecs = charset if isinstance(charset, str) else tuple(charset)
    parts = _parts(elements, sequences or {}, codecs, "")
    if pixel is not None:
        key = f"{pixel[0]:08X}"  # never read: past where the header stops
        parts.append(f'"{key}":{_dumps({"vr": pixel[1], "BulkDataURI": BULK_PREFIX + key})}')
    text = "{" + ",".join(parts) + "}"
    return text if len(text) <= MAX_JSON_CHARS else None


def _parts(
    elements: Mapping[int, DataElement | RawDataElement],
    sequences: Mapping[int, Items],
    codecs: str | tuple[str, ...],
    path: str,
) -> list[str]:
    """'"GGGGEEEE":{...}' for each element of one dataset, as `dataset_model` renders it."""
    parts = []
    for tag, elem in elements.items():
        if tag >> 16 == 0x0002:
            continue
        key = f"{tag:08X}"
        vr = elem.VR or plain_vr(tag)  # read with implicit VR: the dictionary's
        if vr == "SQ":
            items = sequences.get(tag)
            if items is None:
                raise NeedsPydicom(key)
            texts = [
                "{" + ",".join(_parts(item, nested, codecs, f"{path}{key}/{n}/")) + "}"
                for n, (item, nested) in enumerate(items, 1)
            ]
            text = '{"vr":"SQ","Value":[' + ",".join(texts) + "]}" if texts else '{"vr":"SQ"}'
            parts.append(f'"{key}":{text}')
            continue
        if vr not in FAST_VRS:
            raise NeedsPydicom(key)
        value = elem.value
        try:
            if not isinstance(elem, RawDataElement):  # Specific Character Set: pydicom read it
                text = _dumps(elem.to_json_dict(_bulk_uri, BULK_THRESHOLD))
            elif value is None:  # empty number or binary value (deferred ones: declined)
                text = _dumps({"vr": vr})
            elif len(value) <= _REMEMBERED:
                text = _fragment(vr, value, elem.is_little_endian, codecs)
            else:
                text = _dumps(
                    fast_element(vr, value, elem.is_little_endian, codecs, f"{path}{key}")
                )
        except (MemoryError, RecursionError):
            raise
        except Exception:
            raise NeedsPydicom(key) from None  # pydicom's path leaves the element out
        parts.append(f'"{key}":{text}')
    return parts


# Values up to this many bytes have their JSON text remembered: never a BulkDataURI (whose
# path would differ by element), and at most `maxsize` of them.
_REMEMBERED = 256


@lru_cache(maxsize=4096)
def _fragment(vr: str, value: bytes, little: bool, charset: str | tuple[str, ...]) -> str:
    return _dumps(fast_element(vr, value, little, charset, ""))


def _dumps(element: dict[str, Any] | None) -> str:
    if element is None:
        raise NeedsPydicom
    return json.dumps(element, separators=(",", ":"), ensure_ascii=False)


def _bulk_uri(elem: DataElement) -> str:
    return f"{BULK_PREFIX}{elem.tag:08X}"  # a top-level element's path is its tag


def _text(model: dict[str, Any], pixel: tuple[int, str] | None) -> str | None:
    try:
        if pixel is not None and f"{pixel[0]:08X}" not in model:
            tag, vr = pixel
            model[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{BULK_PREFIX}{tag:08X}"}
        text = json.dumps(model, separators=(",", ":"), ensure_ascii=False)
    except (MemoryError, KeyboardInterrupt):
        raise
    except BaseException:
        return None
    return text if len(text) <= MAX_JSON_CHARS else None


def dataset_model(ds: Dataset, path: str) -> dict[str, Any]:
    """{"GGGGEEEE": element} for the elements of `ds` (file meta excluded)."""
    model: dict[str, Any] = {}
    # `items()` gives the stored elements as read: no conversion, no deferred read.
    for tag, raw in sorted(ds.items()):
        if tag >> 16 == 0x0002:
            continue
        key = f"{tag:08X}"
        try:
            value = _element(ds, int(tag), raw, f"{path}{key}")
        except (MemoryError, RecursionError):
            raise
        except Exception:  # noqa: S112 - a malformed value: this element is left out
            continue
        if value is not None:
            model[key] = value
    return model


def _element(
    ds: Dataset, tag: int, raw: DataElement | RawDataElement, path: str
) -> dict[str, Any] | None:
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
        vr = raw.VR or _dictionary_vr(tag)
        if vr not in _BULK_VRS:
            return None  # a deferred value no BulkDataURI may stand for: left out
        return {"vr": vr, "BulkDataURI": BULK_PREFIX + path}
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        vr = raw.VR or plain_vr(tag)
        if vr in FAST_VRS:
            charset = ds.original_character_set or ds._character_set
            fast = fast_element(vr, raw.value, raw.is_little_endian, charset, path)
            if fast is not None:
                return fast
    elem = _converted(ds, tag, raw)
    if elem.VR == "SQ":
        items = [dataset_model(item, f"{path}/{n}/") for n, item in enumerate(elem.value, 1)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    uri: Callable[[DataElement], str] = lambda _e: BULK_PREFIX + path  # noqa: E731
    return elem.to_json_dict(uri, BULK_THRESHOLD)


def _converted(ds: Dataset, tag: int, raw: DataElement | RawDataElement) -> DataElement:
    """The element's value, converted without writing it back into `ds` (half the cost of
    `ds[tag]`); sequences and ambiguous VRs (US or SS...) take pydicom's full path."""
    if isinstance(raw, RawDataElement) and raw.VR != "SQ":
        charset = (ds.original_character_set or ds._character_set) if tag != 0x00080005 else None
        elem = convert_raw_data_element(raw, encoding=charset or default_encoding, ds=ds)
        if elem.VR not in AMBIGUOUS_VR and elem.VR != "SQ":
            return elem
    return ds[tag]


def _dictionary_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return "OW" if " or " in vr and "OW" in vr else vr.split(" or ")[0]


def absolute_bulk_uris(text: str, instance_url: str) -> str:
    """Stored JSON with its relative BulkDataURIs made absolute under `instance_url` (the
    instance's WADO-RS URL, no trailing slash). Safe on the text: inside a JSON string a
    quote is always escaped, so `"BulkDataURI":"` only ever starts a URI field."""
    return text.replace(_URI_FIELD + BULK_PREFIX, f"{_URI_FIELD}{instance_url}/{BULK_PREFIX}")


def bulk_path(uri_tail: str) -> list[tuple[int, int | None]]:
    """`00540016/1/00181072` → [(0x00540016, 1), (0x00181072, None)]; ValueError if malformed.
    Each sequence tag is followed by an item number (from 1); the last part is the element."""
    parts = uri_tail.strip("/").split("/")
    if len(parts) % 2 != 1 or len(parts) > 17:
        raise ValueError("a bulk data path is tag(/item/tag)*")
    steps: list[tuple[int, int | None]] = []
    for n in range(0, len(parts), 2):
        tag_text = parts[n]
        if len(tag_text) != 8:
            raise ValueError(f"not a tag: {tag_text!r}")
        item = int(parts[n + 1]) if n + 1 < len(parts) else None
        if item is not None and item < 1:
            raise ValueError("item numbers start at 1")
        steps.append((int(tag_text, 16), item))
    return steps
