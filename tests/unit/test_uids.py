"""The UID grammar: the only gate between a value read from a file and a storage path."""

from __future__ import annotations

import pytest

from libs.contracts.errors import DicomParseError, PermanentError
from libs.dicom.uids import UID_MAX_LENGTH, UID_RE, is_valid_uid, require_uid


@pytest.mark.parametrize(
    "uid",
    [
        "1",
        "0",
        "1.2.840.10008.1.2.1",
        "2.25.329800735698586629295641978511506172918",
        "1.2.0003.04",  # leading zeros: not standard, accepted on purpose
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert require_uid(uid, "SOPInstanceUID") == uid


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        ".1.2",
        "1.2.",
        "1..2",
        "1.2.a",
        "1.2 ",
        " 1.2",
        "1.2\n",  # `$` alone would accept a trailing newline
        "1.2\x00",
        "1.٣",  # Arabic-Indic digit: `\d` would accept it
        "../../etc/passwd",
        "1/2",
        "1." + "2" * 63,  # 65 characters
        None,
        12,
        b"1.2",
    ],
)
def test_invalid_uids(value: object) -> None:
    assert not is_valid_uid(value)
    with pytest.raises(PermanentError):
        require_uid(value, "StudyInstanceUID")


def test_pattern_and_limit_are_exported() -> None:
    assert UID_RE.pattern == r"^[0-9]+(\.[0-9]+)*$"
    assert UID_MAX_LENGTH == 64


def test_missing_uid_message_names_the_attribute() -> None:
    with pytest.raises(PermanentError, match=r"^missing SeriesInstanceUID$"):
        require_uid("", "SeriesInstanceUID")
    with pytest.raises(PermanentError, match=r"^missing SeriesInstanceUID$"):
        require_uid(None, "SeriesInstanceUID")


def test_invalid_uid_message_is_readable_and_bounded() -> None:
    hostile = "A" * 1_000_000
    with pytest.raises(PermanentError) as info:
        require_uid(hostile, "SOPInstanceUID")
    message = str(info.value)
    assert message.startswith("invalid SOPInstanceUID: 'AAAA")
    assert "1000000 characters" in message
    assert "at most 64 characters" in message
    assert len(message) < 200


def test_error_type_can_be_chosen() -> None:
    with pytest.raises(DicomParseError, match="invalid StudyInstanceUID"):
        require_uid("1.x", "StudyInstanceUID", error=DicomParseError)
