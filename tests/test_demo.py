"""The README's main job: `mimcast demo` (shrunk by its size flags) and what it leaves behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_three_methods(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # ephemeral mode, no server
    result = subprocess.run(
        [sys.executable, "-m", "mimcast.pipeline.cli", "demo", "--out", str(out), "--frames", "40",
         "--size", "64", "--every", "20"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mimcast demo finished" in result.stdout
    netcdf = next((out / "nowcasts").glob("nowcast_demo_*.nc"))
    assert str(netcdf) in result.stdout
    with xr.open_dataset(netcdf) as ds:
        assert {"reflectivity", "rainfall_rate", "precipitation_amount"} <= set(ds.data_vars)
        assert ds.sizes["time"] == 12 and ds.sizes["x"] == 64
    if shutil.which("gdalinfo"):
        info = subprocess.run(["gdalinfo", f'NETCDF:"{netcdf}":reflectivity'],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "Lambert Azimuthal Equal Area" in info and "Pixel Size = (1000" in info
    report = (out / "evaluation" / "report.md").read_text()
    for method in ("mimnet", "extrapolation", "persistence"):
        assert method in report
    for name in ("skill_csi.png", "skill_mse.png", "examples.png"):
        assert (out / "evaluation" / name).stat().st_size > 5000
    assert len(list((out / "nowcasts").glob("*.png"))) == 3
    assert len(list((out / "nowcasts").glob("*.gif"))) == 1
    assert (out / "cube.ingest.json").exists()
