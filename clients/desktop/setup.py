"""Only for the one dependency pyproject.toml cannot spell: the sibling client core, as a
direct reference to its folder (PEP 508 needs an absolute URL)."""

from pathlib import Path

from setuptools import setup

CORE = Path(__file__).resolve().parent.parent / "core"

setup(
    install_requires=[
        f"dicomflow-client @ {CORE.as_uri()}",
        # PySide6-Essentials: the Qt Company's PySide6 without the add-on modules (WebEngine,
        # 3D, Charts...), which this client does not use; ~4x smaller in a bundle.
        "PySide6-Essentials==6.12.0",
        "keyring==25.7.0",
    ]
)
