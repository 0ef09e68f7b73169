"""Shared fixtures: generated data first, real samples from ../shared/radar when present."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect: never phone home, and keep its database and settings out of the user's home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mimcast-prefect-home-"))
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("MIMCAST_DASK_WORKERS", "1")

REPO = Path(__file__).resolve().parents[1]


def _samples_dir() -> Path | None:
    env = os.environ.get("MIMCAST_RADAR_SAMPLES")
    candidates = (
        [Path(env)] if env else [REPO.parent / "shared" / "radar", REPO / "shared" / "radar"]
    )
    return next((p for p in candidates if p.is_dir()), None)


@pytest.fixture(scope="session")
def radar_samples() -> Path:
    """The real radar samples (``MIMCAST_RADAR_SAMPLES`` or ``../shared/radar``); skip if absent."""
    path = _samples_dir()
    if path is None:
        pytest.skip("real radar samples not found (set MIMCAST_RADAR_SAMPLES)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
