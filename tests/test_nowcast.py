"""Nowcast products: CF NetCDF that GDAL and xarray georeference, atomic writes, tiling, maps."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyproj
import pytest
import torch
import xarray as xr

from mimcast.models.checkpoint import InputConfig, load_checkpoint, save_checkpoint
from mimcast.models.mimnet import MIMNet, MIMNetConfig
from mimcast.pipeline.cube import NO_ECHO_DBZ, cube_crs
from mimcast.pipeline.forecasters import MIMNetForecaster
from mimcast.pipeline.netcdf import read_nowcast, write_nowcast
from mimcast.pipeline.nowcast import (
    NowcastError,
    NowcastOptions,
    TileOptions,
    input_times,
    nowcast,
    predict,
)
from mimcast.pipeline.products import ZR, accumulate, dbz_to_rate, rate_to_dbz
from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "mimnet_synthetic.safetensors"
TINY = MIMNetConfig(input_length=4, output_length=3, num_layers=2, num_hidden=8, filter_size=3,
                    patch_size=4)  # fmt: skip


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(SyntheticConfig(height=64, width=80, frames=10, seed=5))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MIMNet(TINY).eval()


@pytest.fixture(scope="module")
def written(cube, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("nowcast")
    forecast = nowcast(cube, MIMNetForecaster.from_model(model), NowcastOptions(), source="syn")
    return forecast, write_nowcast(forecast, out, source="syn", checkpoint="tiny")


def test_products_follow_the_z_r_relation():
    zr = ZR(200, 1.6)
    rates = np.array([0.0, 0.1, 1.0, 10.0, 100.0, np.nan])
    dbz = rate_to_dbz(rates, zr)
    assert dbz[0] == NO_ECHO_DBZ and np.isnan(dbz[-1])
    assert dbz[2] == pytest.approx(10 * np.log10(200))  # 1 mm/h -> 23.0 dBZ
    np.testing.assert_allclose(dbz_to_rate(dbz, zr)[1:5], rates[1:5], rtol=1e-5)
    assert dbz_to_rate(np.array([12.0]), zr, threshold_dbz=15.0)[0] == 0.0
    acc = accumulate(np.array([[[6.0]], [[12.0]], [[0.0]]]), step_minutes=5)
    np.testing.assert_allclose(acc[:, 0, 0], [0.5, 1.5, 1.5])


def test_forecast_dataset_contents(written, cube):
    forecast, _ = written
    assert forecast.reflectivity.shape == (3, 64, 80)
    assert forecast["forecast_period"].values.tolist() == [5, 10, 15]
    assert forecast["forecast_reference_time"].values == cube.time.values[-1]
    assert (forecast.time.values - cube.time.values[-1]).astype("timedelta64[m]").tolist() == [
        np.timedelta64(m, "m") for m in (5, 10, 15)
    ]
    nodata = np.isnan(cube.reflectivity.values[-1])
    assert np.isnan(forecast.reflectivity.values[:, nodata]).all()
    rate = forecast.rainfall_rate.values
    np.testing.assert_allclose(forecast.precipitation_amount.values, accumulate(rate, 5),
                               rtol=1e-5)  # fmt: skip


def test_a_two_minute_archive_is_forecast_at_its_own_step_from_4_minute_model_steps(
    model, tmp_path
):
    from mimcast.pipeline.evaluation import plan_evaluation
    from mimcast.pipeline.forecasters import get_forecaster

    fast = synthetic_cube(SyntheticConfig(height=64, width=80, frames=16, seed=5, step_minutes=2))
    forecast = nowcast(fast, MIMNetForecaster.from_model(model), NowcastOptions(), source="syn")
    # 3 model steps of 4 minutes, each archive step between them interpolated
    assert forecast["forecast_period"].values.tolist() == [2, 4, 6, 8, 10, 12]
    assert forecast.attrs["input_times"].count(",") == 6  # 7 frames: 4 model inputs
    assert np.isfinite(forecast.reflectivity.values).any()
    methods = {"mimnet": MIMNetForecaster.from_model(model),
               "persistence": get_forecaster("persistence")}  # fmt: skip
    fast.to_zarr(tmp_path / "fast.zarr", consolidated=False)
    plan = plan_evaluation(tmp_path / "fast.zarr", methods, every=1)
    assert (plan.n_inputs, plan.n_leads, plan.step) == (7, 6, 2)
    every_frame = MIMNetForecaster.from_model(model, min_step_minutes=0)
    forecast = nowcast(fast, every_frame, NowcastOptions(), source="syn")
    assert forecast["forecast_period"].values.tolist() == [2, 4, 6]


@pytest.mark.parametrize("step", [5, 2])
def test_fewer_leads_are_the_first_leads_of_the_full_forecast(step, monkeypatch):
    """The shipped real-radar model asked for fewer leads runs fewer model steps (also on a
    2-minute archive, where it interpolates between 4-minute steps): the same values as the
    first leads of its full forecast, post-processing included."""
    from mimcast.pipeline.forecasters import at_time_step

    cube = synthetic_cube(SyntheticConfig(height=64, width=64, frames=7, seed=3,
                                          step_minutes=step))  # fmt: skip
    model = at_time_step(MIMNetForecaster(), step)
    inputs = cube.reflectivity.values[-model.input_frames :]
    calls, network_step = [], MIMNet.step
    monkeypatch.setattr(MIMNet, "step", lambda *a, **k: calls.append(1) or network_step(*a, **k))
    full = model(inputs, model.max_leads)
    ran = {model.max_leads: len(calls)}
    for leads in (1, 3):
        calls.clear()
        assert np.array_equal(model(inputs, leads), full[:leads], equal_nan=True)
        ran[leads] = len(calls)
    # 4 input frames, then one step per prediction: 3 + 12 for the whole horizon
    per_step = 1 if step == 5 else 2  # archive leads per model step
    assert ran == {12 * per_step: 15, 1: 4, 3: 3 + -(-3 // per_step)}


def test_an_archive_too_short_for_the_horizon_is_scored_at_the_leads_it_allows(tmp_path, caplog):
    from mimcast.pipeline.evaluation import plan_evaluation
    from mimcast.pipeline.forecasters import get_forecaster

    methods = {"persistence": get_forecaster("persistence"),
               "extrapolation": get_forecaster("extrapolation")}  # fmt: skip
    for frames in (12, 3):
        synthetic_cube(SyntheticConfig(height=32, width=32, frames=frames, seed=2)).to_zarr(
            tmp_path / f"f{frames}.zarr", consolidated=False
        )
    # 12 frames: 3 inputs (extrapolation's motion) leave 9 leads of the default 12
    with caplog.at_level("WARNING", logger="mimcast.pipeline.evaluation"):
        plan = plan_evaluation(tmp_path / "f12.zarr", methods, every=1)
    assert (plan.n_inputs, plan.n_leads, len(plan.refs)) == (3, 9, 1)
    assert "scoring 9 lead steps" in caplog.text
    # asked for explicitly, 12 leads are an error that says what can be scored
    with pytest.raises(ValueError, match=r"9 lead steps can be scored \(--steps 9\)"):
        plan_evaluation(tmp_path / "f12.zarr", methods, every=1, leads=12)
    with pytest.raises(ValueError, match=r"3 observed input and 12 observed target frames$"):
        plan_evaluation(tmp_path / "f3.zarr", methods, every=1)


def test_missing_inputs_raise_a_clear_error(cube, model):
    holey = cube.copy(deep=True)
    observed = holey.observed.values.copy()
    observed[8] = False
    holey["observed"] = ("time", observed)
    with pytest.raises(NowcastError, match=r"input frames 2024-07-01T12:40 are missing or gaps"):
        nowcast(holey, MIMNetForecaster.from_model(model), NowcastOptions(time="2024-07-01T12:45"))
    # 'latest' falls back to the last reference time with complete inputs
    assert str(input_times(holey, 4, "latest")[-1]) == "2024-07-01T12:35"
    # the same time in any accepted spelling; seconds only where they are zero
    for spelling in ("2024-07-01T12:35Z", "2024-07-01 12:35:00", "2024-07-01T12:35:00+00:00"):
        assert str(input_times(cube, 4, spelling)[-1]) == "2024-07-01T12:35"
    with pytest.raises(NowcastError, match="not on a whole minute"):
        input_times(cube, 4, "2024-07-01T12:35:30")
    with pytest.raises(NowcastError, match="outside the cube"):
        nowcast(cube, MIMNetForecaster.from_model(model), NowcastOptions(time="2024-07-02T00:00"))


def test_xarray_reopens_with_decoded_times_and_crs(written, cube):
    forecast, path = written
    assert path.name == "nowcast_syn_202407011245.nc"
    ds = read_nowcast(path)
    assert {"reflectivity", "rainfall_rate", "precipitation_amount"} <= set(ds.data_vars)
    assert np.issubdtype(ds.time.dtype, np.datetime64)
    np.testing.assert_array_equal(ds.time.values, forecast.time.values)
    assert pyproj.CRS.from_cf(dict(ds.crs.attrs)) == cube_crs(cube)
    assert ds.reflectivity.attrs["units"] == "dBZ"
    assert ds.precipitation_amount.attrs["standard_name"] == "precipitation_amount"
    # accumulations are sums over [reference time, valid time]; the other fields are points
    assert ds.precipitation_amount.attrs["cell_methods"] == "time: sum"
    assert ds.reflectivity.attrs["cell_methods"] == "time: point"
    bounds = ds[ds.time.attrs["bounds"]].values
    reference = ds.forecast_reference_time.values
    assert (bounds[:, 0] == reference).all() and (bounds[:, 1] == ds.time.values).all()
    assert ds.attrs["Conventions"] == "CF-1.8" and "checkpoint tiny" in ds.attrs["source"]
    np.testing.assert_allclose(ds.reflectivity.values, forecast.reflectivity.values)
    # a known pixel's lat/lon agrees with pyproj
    to_ll = pyproj.Transformer.from_crs(cube_crs(cube), "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(cube.x.values[17], cube.y.values[40])
    assert ds.lat.values[40, 17] == pytest.approx(lat, abs=1e-9)
    assert ds.lon.values[40, 17] == pytest.approx(lon, abs=1e-9)


gdal = pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdal-bin not installed")


@gdal
def test_gdal_georeferences_to_the_cube_grid(written, cube):
    _, path = written
    info = json.loads(subprocess.run(
        ["gdalinfo", "-json", f'NETCDF:"{path}":reflectivity'],
        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    x, y = cube.x.values, cube.y.values
    dx, dy = x[1] - x[0], y[1] - y[0]
    expected = [x[0] - dx / 2, dx, 0.0, y[0] - dy / 2, 0.0, dy]
    np.testing.assert_allclose(info["geoTransform"], expected, atol=1e-6)
    assert info["size"] == [80, 64]
    assert pyproj.CRS.from_wkt(info["coordinateSystem"]["wkt"]).equals(cube_crs(cube))
    # GDAL finds the pixel that contains a lon/lat where pyproj says it is
    to_ll = pyproj.Transformer.from_crs(cube_crs(cube), "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(x[33], y[21])
    cmd = [
        "gdallocationinfo",
        "-xml",
        "-wgs84",
        f'NETCDF:"{path}":reflectivity',
        str(lon),
        str(lat),
    ]
    loc = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert 'pixel="33"' in loc and 'line="21"' in loc


def test_cf_checker_reports_no_errors(written):
    _, path = written
    exe = Path(sys.executable).with_name("compliance-checker")
    result = subprocess.run([str(exe), "--test", "cf:1.8", "-f", "json", "-o", "-", str(path)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    report = json.loads(result.stdout[result.stdout.index("{") :])["cf:1.8"]
    failed = [c["name"] for c in report["high_priorities"] if c["value"][0] < c["value"][1]]
    assert report["high_count"] == 0 and not failed, failed
    assert report["scored_points"] == report["possible_points"]
    assert result.returncode == 0


WRITER = textwrap.dedent(
    """
    import sys, time, xarray as xr
    from mimcast.pipeline.netcdf import write_nowcast
    forecast = xr.open_dataset(sys.argv[1]).load()
    for var in forecast.variables.values():
        var.encoding = {}
    original = xr.Dataset.to_netcdf

    def stall_after_writing(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)  # the temporary file is complete ...
        print("written", path, flush=True)
        time.sleep(120)  # ... and the writer is killed before it renames it

    xr.Dataset.to_netcdf = stall_after_writing
    write_nowcast(forecast, sys.argv[2], source="syn")
    """
)


def test_killed_writer_leaves_the_previous_file_intact(written, tmp_path):
    forecast, path = written
    out = tmp_path / "out"
    out.mkdir()
    target = out / path.name
    shutil.copy(path, target)
    before = target.read_bytes()
    src = tmp_path / "src.nc"
    forecast.to_netcdf(src)
    cmd = [sys.executable, "-c", WRITER, str(src), str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    line = proc.stdout.readline().split()
    assert line[0] == "written", "the writer died before writing"
    assert Path(line[1]).parent == out and Path(line[1]).name.startswith(".nowcast_")
    assert Path(line[1]).stat().st_size > 0 and proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == before  # the previous file, untouched
    assert sorted(p.name for p in out.glob("nowcast_*.nc")) == [path.name]
    xr.open_dataset(target).close()
    # the next write replaces it atomically and clears the dead writer's temporary file
    write_nowcast(forecast, out, source="syn")
    assert sorted(p.name for p in out.iterdir()) == [path.name]


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped checkpoint not present")
def test_tiled_inference_matches_untiled_with_the_shipped_model():
    model, _ = load_checkpoint(SHIPPED)
    cube = synthetic_cube(SyntheticConfig(height=160, width=192, frames=model.config.input_length,
                                          seed=12))  # fmt: skip
    from mimcast.pipeline.sequences import Normalizer

    x, _ = Normalizer().normalize(cube.reflectivity.values)
    step = float(cube.attrs["time_step_minutes"])  # the shipped model takes it (step_input)
    whole = predict(model, x, TileOptions(), step)
    tiled = predict(model, x, TileOptions(max_pixels=64 * 64, tile=96, overlap=48), step)
    diff = np.abs(tiled - whole) * 70  # in dBZ
    # the recurrent receptive field spans more than any overlap, so not bit-equal, but close
    assert diff.mean() < 0.5 and np.percentile(diff, 99) < 10.0, (diff.mean(), diff.max())
    no_overlap = predict(model, x, TileOptions(max_pixels=64 * 64, tile=96, overlap=0), step)
    seams = np.abs(no_overlap - whole) * 70
    # blending removes the worst seam errors
    assert np.percentile(diff, 99.9) < 0.8 * np.percentile(seams, 99.9)
    assert diff.max() < seams.max()


def test_tiling_covers_the_grid_with_a_tiny_model(cube, model, caplog, monkeypatch):
    from mimcast.pipeline.sequences import Normalizer

    x, _ = Normalizer().normalize(cube.reflectivity.values[:4])
    whole = predict(model, x, TileOptions())
    tiled = predict(model, x, TileOptions(max_pixels=100, tile=48, overlap=16))
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert np.abs(tiled - whole).mean() < 0.05
    # many tiles (a continental grid): progress about every tenth, never at the end; quiet
    # while the pass is quick
    import mimcast.pipeline.nowcast as nowcast_module

    def tile_lines(after_s: float) -> list[str]:
        monkeypatch.setattr(nowcast_module, "TILE_PROGRESS_AFTER_S", after_s)
        caplog.clear()
        with caplog.at_level("INFO", logger="mimcast"):
            predict(model, x, TileOptions(max_pixels=100, tile=24, overlap=8))  # 4 x 5 tiles
        return [r.getMessage().split(" in ")[0] for r in caplog.records
                if "tiles" in r.getMessage()]  # fmt: skip

    assert tile_lines(0.0) == [f"network: {k} of 20 tiles" for k in range(2, 20, 2)]
    assert tile_lines(3600.0) == []


def test_quicklook_png_and_animation_are_drawn(written, tmp_path):
    from PIL import Image

    from mimcast.pipeline.plots import DBZ_CMAP, DBZ_NORM, animation, quicklook

    forecast, _ = written
    strong = forecast.copy()
    strong["reflectivity"] = forecast.reflectivity.fillna(0) * 0 + 40.0  # a field to see
    png = quicklook(strong, 10, tmp_path / "map.png")
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[0] > 300 and img.std() > 20
    # the 40 dBZ colour covers a large part of the map
    target = np.array(DBZ_CMAP(DBZ_NORM(40.0))[:3]) * 255
    assert (np.abs(img - target).sum(axis=2) < 30).mean() > 0.2
    gif = animation(forecast, tmp_path / "anim.gif")
    with Image.open(gif) as anim:
        assert anim.n_frames == 3
    with pytest.raises(ValueError, match="lead time 7 min"):
        quicklook(forecast, 7, tmp_path / "x.png")


def test_a_map_of_a_continental_grid_draws_a_thinned_field_over_the_same_extent():
    """A 4400 x 3800 field is far more pixels than a map shows: it is drawn every k-th pixel
    (as nearest resampling would), over the grid's full extent; small grids stay whole."""
    import matplotlib.pyplot as plt

    from mimcast.pipeline.plots import DRAWN_SIDE, draw_dbz, drawn, extent, map_axes

    field = np.arange(4400 * 3800, dtype=np.float32).reshape(4400, 3800) % 70
    assert drawn(field).shape == (1100, 950)  # every 4th pixel: 4400 / 4 <= DRAWN_SIDE
    assert np.array_equal(drawn(field), field[::4, ::4])
    small = np.zeros((DRAWN_SIDE, 64), dtype=np.float32)
    assert drawn(small) is small
    tall = synthetic_cube(SyntheticConfig(height=3000, width=48, frames=1, seed=1))
    fig = plt.figure()
    try:
        ax, proj = map_axes(fig, tall)
        img = draw_dbz(ax, proj, tall, tall.reflectivity.values[0])
        assert img.get_array().shape == (1000, 16)
        assert img.get_extent() == list(extent(tall))
    finally:
        plt.close(fig)


def test_maps_draw_the_shipped_coastlines_and_borders(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    from mimcast.pipeline import plots
    from mimcast.pipeline.forecasters import get_forecaster

    # 400 km around 52N 10E: the German North Sea coast and the Dutch border are on the map
    big = synthetic_cube(SyntheticConfig(height=400, width=400, frames=2, seed=3))
    forecast = nowcast(big, get_forecaster("persistence"), NowcastOptions(leads=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coastlines missing" warning any more
        with_lines = np.asarray(Image.open(plots.quicklook(forecast, 5, tmp_path / "a.png")))
    monkeypatch.setattr(plots, "_LAYERS", ())
    without = np.asarray(Image.open(plots.quicklook(forecast, 5, tmp_path / "b.png")))
    changed = np.abs(with_lines.astype(int) - without.astype(int)).sum(axis=-1) > 60
    assert changed.sum() > 20  # the coastline and border lines show (without them: 0)
    monkeypatch.undo()
    import matplotlib.pyplot as plt

    fig = plt.figure()
    ax, _ = plots.map_axes(fig, forecast)
    drawn = [a for a in ax.artists + ax.collections if type(a).__name__ == "FeatureArtist"]
    plt.close(fig)
    assert len(drawn) == 2  # coastlines and borders, both inside this map's box


def test_cli_nowcast_with_a_checkpoint(cube, model, tmp_path):
    from mimcast.pipeline.cli import main

    store = tmp_path / "c.zarr"
    cube.to_zarr(store, consolidated=False)
    ckpt = save_checkpoint(
        model, tmp_path / "tiny.safetensors", extra={"step": 3}, inputs=InputConfig(0.0, 70.0)
    )
    code = main(["nowcast", str(store), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                 "--plot", "--leads", "5", "15", "--postprocess", "pm-wet",
                 "--refine", "2"])  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    stem = "nowcast_c_202407011245"
    assert names == [f"{stem}.gif", f"{stem}.nc", f"{stem}_005min.png", f"{stem}_015min.png"]
    # --postprocess overrides the checkpoint's default ("none"), and the file says which ran,
    # and that the model ran on a grid twice as fine as the cube's (--refine)
    with xr.open_dataset(tmp_path / "o" / f"{stem}.nc") as ds:
        assert "post-processing pm-wet" in ds.attrs["source"]
        assert "on a 2x finer grid" in ds.attrs["source"]
        assert ds.sizes["x"] == cube.sizes["x"] and ds.sizes["y"] == cube.sizes["y"]
    assert dataclasses.asdict(load_checkpoint(ckpt)[0].config) == dataclasses.asdict(TINY)


def test_products_use_the_z_r_relation_of_the_cube(cube):
    from mimcast.pipeline.forecasters import get_forecaster

    tagged = cube.copy()
    tagged["reflectivity"].attrs.update(zr_a=300.0, zr_b=1.4)
    forecast = nowcast(tagged, get_forecaster("persistence"), NowcastOptions(leads=2))
    dbz = forecast.reflectivity.values
    expected = dbz_to_rate(dbz, ZR(300.0, 1.4), 10.0)
    np.testing.assert_allclose(forecast.rainfall_rate.values, expected, rtol=1e-5)
    marshall = dbz_to_rate(dbz, ZR(200.0, 1.6), 10.0)
    rain = np.nan_to_num(expected) > 1
    assert not np.allclose(expected[rain], marshall[rain])
    assert forecast.rainfall_rate.attrs["zr_a"] == 300.0


@pytest.mark.parametrize("method", ["persistence", "extrapolation"])
def test_cli_nowcast_with_a_baseline_writes_the_same_product(cube, tmp_path, method, capsys):
    from mimcast.pipeline.cli import main

    store = tmp_path / "c.zarr"
    cube.to_zarr(store, consolidated=False)
    code = main(["nowcast", str(store), "--method", method, "--steps", "6",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 0 and method in capsys.readouterr().out
    (path,) = (tmp_path / "o").glob("nowcast_c_*.nc")
    with read_nowcast(path) as ds:
        assert ds.sizes["time"] == 6 and method in ds.attrs["source"]
        assert set(ds.data_vars) >= {"reflectivity", "rainfall_rate", "precipitation_amount"}
        last = cube.reflectivity.values[-1]
        if method == "persistence":
            np.testing.assert_allclose(ds.reflectivity.values[3], last, equal_nan=True)


def test_inference_precision_defaults_to_bf16_only_on_cpus_with_native_bf16():
    from mimcast.models.device import bf16_native, inference_bf16

    assert inference_bf16(None, "cpu") == bf16_native("cpu")
    assert inference_bf16(None, "cuda") is False  # no faster on an H200
    assert inference_bf16(True, "cuda") is True and inference_bf16(False, "cpu") is False


def test_mimcast_bf16_sets_the_default_precision_for_a_site(monkeypatch):
    from mimcast.models.device import inference_bf16

    monkeypatch.setenv("MIMCAST_BF16", "0")
    assert inference_bf16(None, "cpu") is False
    assert inference_bf16(True, "cpu") is True  # an explicit setting still decides
    monkeypatch.setenv("MIMCAST_BF16", "1")
    assert inference_bf16(None, "cuda") is True
    monkeypatch.setenv("MIMCAST_BF16", "yes")
    with pytest.raises(ValueError, match="MIMCAST_BF16"):
        inference_bf16(None, "cpu")
