"""Search keys for person names, and LIKE patterns that match them.

The index stores `search_key(PatientName)` next to the name; the API turns the
user's query into LIKE patterns with `search_patterns`. Both sides go through the
same folding, so "Muller", "müller" and "MÜLLER^José" all meet at "muller jose",
and a Cyrillic query matches names stored in ISO_IR 144 or UTF-8 alike.

Folding rules and why:
- DICOM PN separators go: `^` (components) and `=` (alphabetic/ideographic/phonetic
  groups) become spaces, and all groups are kept, so a name can be found by any of
  its representations.
- Compatibility decomposition (NFKD) then casefold (twice, as NFKC_Casefold does),
  so full-width letters, ligatures and case never matter.
- Diacritics are stripped only after Latin and Greek letters (`Müller` → `muller`,
  `José` → `jose`). Elsewhere a combining mark is part of the letter: `й` is not
  `и` in Russian, `ガ` is not `カ` in Japanese; the result is recomposed (NFC).
- `ё` → `е`: Russian writes the two interchangeably, so they must match.
- Whitespace is collapsed and stripped.
"""

from __future__ import annotations

import unicodedata

# Latin and Greek (incl. extended blocks): accents there are commonly dropped in search.
_LATIN_GREEK_END = 0x0400
_EXTENDED_ADDITIONAL = range(0x1E00, 0x2000)


def _strip_latin_greek_marks(decomposed: str) -> str:
    out: list[str] = []
    strip = False
    for ch in decomposed:
        if unicodedata.combining(ch):
            if strip:
                continue
        else:
            cp = ord(ch)
            strip = cp < _LATIN_GREEK_END or cp in _EXTENDED_ADDITIONAL
        out.append(ch)
    return "".join(out)


def search_key(person_name: str) -> str:
    """The normalised form of a DICOM person name (or any text) used for searching.

    >>> search_key("Иванов^Иван")
    'иванов иван'
    >>> search_key("Müller^José")
    'muller jose'
    >>> search_key("Yamada^Tarou=山田^太郎=やまだ^たろう")
    'yamada tarou 山田 太郎 やまだ たろう'
    """
    text = unicodedata.normalize("NFKD", person_name).casefold()
    text = _strip_latin_greek_marks(unicodedata.normalize("NFKD", text))
    text = unicodedata.normalize("NFC", text).replace("ё", "е")
    text = text.replace("^", " ").replace("=", " ")
    return " ".join(text.split())


def search_pattern(query: str) -> str:
    """A LIKE pattern (escape character backslash) matching keys that start with `query`.

    The query is folded like `search_key`; `%`, `_` and `\\` in it are escaped, then
    the user's wildcards map to LIKE: `*` → `%`, `?` → `_`. Without a `*` the pattern
    is a prefix match (a trailing `%` is added), so "ivan" finds "ivanov ivan" and
    "Иванов Иван" finds "Иванов^Иван". With a `*` the user's pattern is taken as is.

    >>> search_pattern("Иванов Иван")
    'иванов иван%'
    >>> search_pattern("M?ller*")
    'm_ller%'
    >>> search_pattern("50%_off")
    '50\\\\%\\\\_off%'
    """
    key = search_key(query)
    escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = escaped.replace("*", "%").replace("?", "_")
    return pattern if "*" in key else pattern + "%"


def search_patterns(query: str) -> tuple[str, str]:
    """(prefix pattern, word-start pattern) for `query`; a key matches if either does.

    The prefix pattern (`q%`) matches when the query starts the whole key; the
    word-start pattern (`% q%`) when it starts any later word, so "Иван" finds both
    "Иванов^Иван" and "Петров^Иван". Callers OR the two:
    `key LIKE $1 ESCAPE '\\' OR key LIKE $2 ESCAPE '\\'`.

    >>> search_patterns("ivan")
    ('ivan%', '% ivan%')
    """
    prefix = search_pattern(query)
    return prefix, "% " + prefix
