"""Every file of the study browser ships in the package (the Docker image installs a wheel,
not the sources): a page or asset the patterns miss would be a blank page in production."""

from __future__ import annotations

import tomllib
from pathlib import Path

from services.api.web.router import HERE, MEDIA

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_covers_every_page_and_asset() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["services.api.web"]
    files = [p for p in HERE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files
    for path in files:
        relative = path.relative_to(HERE)
        assert any(relative.match(pattern) for pattern in patterns), relative
        if relative.parts[0] == "static":
            assert path.suffix in MEDIA, f"{relative}: the router would not serve it"
