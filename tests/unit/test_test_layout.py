"""Test modules are collected by basename (the tests folders are not packages), so two files
with one name in different folders stop the whole suite at collection: caught here first,
with both paths named."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_its_own_basename() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name != "__init__.py" and "__pycache__" not in path.parts:
            by_name[path.name].append(str(path.relative_to(TESTS)))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    allowed = {"conftest.py"}  # pytest loads each conftest by its path
    assert {n: p for n, p in shared.items() if n not in allowed} == {}
