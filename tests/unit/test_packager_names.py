"""Names inside archives and in Content-Disposition are safe on any OS and unique."""

from __future__ import annotations

import re

import pytest

from services.packager.app import content_disposition
from services.packager.layout import MAX_COMPONENT, UniqueNames, safe_component

SAFE = re.compile(r"[\w.-]+")


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        ("Doe^John", "Doe_John"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "unknown"),
        ("", "unknown"),
        ("   ", "unknown"),
        ('a<b>c:d"e/f\\g|h?i*j', "a_b_c_d_e_f_g_h_i_j"),
        ("bell\x07\x00nul", "bell_nul"),
        ("CON", "_CON"),
        ("lpt1.txt", "_lpt1.txt"),
        ("trailing dots...", "trailing_dots"),
        ("Иванов^Иван=Ivanov", "Иванов_Иван_Ivanov"),
        ("Zoe\u0308", "Zoë"),  # decomposed input comes out composed (NFC)
    ],
)
def test_hostile_components(hostile: str, expected: str) -> None:
    assert safe_component(hostile) == expected


def test_long_names_are_cut() -> None:
    name = safe_component("x" * 500)
    assert len(name) == MAX_COMPONENT and SAFE.fullmatch(name)


def test_names_are_unique_ignoring_case() -> None:
    names = UniqueNames()
    got = [names.claim(n, ".dcm") for n in ["1", "1", "A", "a", "1_2"]]
    assert got == ["1.dcm", "1_2.dcm", "A.dcm", "a_2.dcm", "1_2_2.dcm"]
    assert len({g.casefold() for g in got}) == len(got)


def test_content_disposition_has_an_ascii_fallback_and_the_utf8_name() -> None:
    header = content_disposition('Müller_José"; x=1.2_20240101', "tar.zst")
    fallback = re.search(r'filename="([^"]*)"', header)
    assert fallback and fallback.group(1) == "Muller_Jose_x_1.2_20240101.tar.zst"
    assert header.endswith("filename*=UTF-8''M%C3%BCller_Jos%C3%A9_x_1.2_20240101.tar.zst")
    only_cyrillic = content_disposition("Иванов", "zip")
    assert 'filename="archive.zip"' in only_cyrillic
