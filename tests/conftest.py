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


@pytest.fixture(scope="session")
def dask_cluster():
    """A real ``dask scheduler`` + ``dask worker`` on 127.0.0.1; yields the address."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    scheduler = [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard"]  # fmt: skip
    procs = [subprocess.Popen(scheduler, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([bin_dir / "dask", "worker", address, "--nthreads", "1",
                                       "--no-dashboard"], stderr=subprocess.DEVNULL))  # fmt: skip
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    if client.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the dask cluster did not come up"
            time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def cluster_tasks(address: str, prefix: str) -> int:
    """How many tasks named ``prefix`` the cluster at ``address`` has run so far."""
    from distributed import Client

    def count(dask_scheduler, prefix=prefix):
        tp = dask_scheduler.task_prefixes.get(prefix)
        return 0 if tp is None else sum(tp.state_counts.values())

    with Client(address, timeout=10) as client:
        return client.run_on_scheduler(count)
