"""Shared test setup.

Markers: ``slow`` (a real Ray sweep, a real pretrained model trained, a side environment: deselect with
``-m "not slow"`` for a developer's inner loop; CI runs everything) and ``needs_data`` (skipped with a
reason where ``../shared/data`` is absent). Fixtures: ``data_dir`` and ``repo``.
"""

from pathlib import Path

import pytest

from paths import DATA, REPO


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real Ray, real models, side environments)")
    config.addinivalue_line("markers", "needs_data: reads the real task data under ../shared/data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real task data not found at {DATA}")
    for item in items:
        if "needs_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir() -> Path:
    """The real task data (the layout of ``../shared/data``)."""
    return DATA


@pytest.fixture
def repo() -> Path:
    """The repository root (search_spaces/, reports/, README.md)."""
    return REPO
