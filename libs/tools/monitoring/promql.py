"""Just enough PromQL reading to name the metrics an expression selects: bare metric names,
and `__name__` patterns. Checks that dashboards and alerts only ask for exported metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME_PATTERN = re.compile(r'__name__\s*=~\s*"((?:[^"\\]|\\.)*)"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without"}


@dataclass(frozen=True)
class Selected:
    names: frozenset[str]
    patterns: frozenset[str]  # regexes on __name__, anchored as Prometheus anchors them


def selected_metrics(expr: str) -> Selected:
    patterns = frozenset(_NAME_PATTERN.findall(expr))
    text = _MATCHERS.sub(" ", _STRING.sub('""', expr))
    text = _GROUPING.sub(" ", _RANGE.sub(" ", text))
    text = re.sub(r"\$__\w+", " ", text)  # Grafana variables
    names = {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}
    return Selected(frozenset(names), patterns)


def unknown_metrics(expr: str, exported: set[str]) -> list[str]:
    """The metrics `expr` selects that are not in `exported` (patterns that match none)."""
    sel = selected_metrics(expr)
    missing = sorted(n for n in sel.names if n not in exported)
    missing += [
        f"{{__name__=~{p!r}}}"
        for p in sorted(sel.patterns)
        if not any(re.fullmatch(p, n) for n in exported)
    ]
    return missing
