"""Shared helpers of the registry tests (the SQL backends come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import Registry


@pytest.fixture
def reg(registry_db: str, tmp_path: Path) -> Registry:
    """A fresh registry on each SQL backend, blobs in a local directory."""
    return Registry(registry_db, str(tmp_path / "blobs"))


def write_files(root: Path, **contents: str) -> Path:
    """Files named by the keywords, holding their texts, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (root / name).write_text(text)
    return root
