"""Person-name search keys and the LIKE patterns that must find them."""

from __future__ import annotations

import re

import pytest

from libs.dicom.names import search_key, search_pattern, search_patterns


def like(pattern: str, text: str) -> bool:
    """SQL `text LIKE pattern ESCAPE '\\'`, as PostgreSQL evaluates it."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), text, re.DOTALL) is not None


def found(query: str, name: str) -> bool:
    key = search_key(name)
    return any(like(p, key) for p in search_patterns(query))


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Иванов^Иван", "иванов иван"),
        ("ИВАНОВ^ИВАН", "иванов иван"),
        ("Müller^José", "muller jose"),
        ("MÜLLER^JOSÉ", "muller jose"),
        ("Семёнов^Пётр", "семенов петр"),
        ("Андрей^Йорк", "андрей йорк"),  # й is a letter of its own, not и + breve
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada tarou 山田 太郎 やまだ たろう"),
        ("ガンダ", "ガンダ"),  # dakuten belongs to the kana, kept (and recomposed)
        ("Ｆｕｌｌ^Ｗｉｄｔｈ", "full width"),
        ("Straße", "strasse"),
        ("Διονύσιος", "διονυσιοσ"),  # casefold: final sigma is sigma
        ("Nguyễn^Văn", "nguyen van"),
        ("  Smith ^^ John\t^ ", "smith john"),
        ("Doe^John^^Dr.^Jr.", "doe john dr. jr."),
        ("", ""),
        ("^^^^", ""),
    ],
)
def test_search_key(name: str, key: str) -> None:
    assert search_key(name) == key


def test_search_key_is_idempotent() -> None:
    for name in ["Müller^José", "Иванов^Иван", "Yamada^Tarou=山田^太郎", "Ｆｕｌｌ"]:
        assert search_key(search_key(name)) == search_key(name)


@pytest.mark.parametrize(
    ("query", "pattern"),
    [
        ("Иванов Иван", "иванов иван%"),
        ("ivan", "ivan%"),
        ("Iva*", "iva%"),
        ("*ова", "%ова"),
        ("M?ller", "m_ller%"),
        ("50%_off", "50\\%\\_off%"),
        ("back\\slash", "back\\\\slash%"),
        ("Müller^José", "muller jose%"),
    ],
)
def test_search_pattern(query: str, pattern: str) -> None:
    assert search_pattern(query) == pattern


def test_search_patterns_are_prefix_and_word_start() -> None:
    assert search_patterns("Иван") == ("иван%", "% иван%")


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("Иванов Иван", "Иванов^Иван"),
        ("ivan", "Ivanov^Ivan"),
        ("Иван", "Петров^Иван"),  # word start
        ("muller", "Müller^José"),
        ("MÜLLER jose", "Müller^José"),
        ("Jos", "Müller^José"),
        ("семенов", "Семёнов^Пётр"),
        ("Семёнов", "Семенов^Петр"),
        ("山田", "Yamada^Tarou=山田^太郎"),
        ("M?ller", "Müller^José"),
        ("*ова", "Петрова"),
    ],
)
def test_queries_find_names(query: str, name: str) -> None:
    assert found(query, name)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("ван", "Иванов^Иван"),  # not at a word start
        ("Иванова", "Иванов^Иван"),
        ("50%", "500"),  # % in a query is a literal
        ("a_c", "abc"),  # so is _
        ("*ова", "Петрова^Анна"),  # with *, the pattern is anchored as written
    ],
)
def test_queries_do_not_find_other_names(query: str, name: str) -> None:
    assert not found(query, name)
