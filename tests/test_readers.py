"""Each reader against its real sample: values, nodata vs undetect, georeferencing, time."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pyproj
import pytest

from mimcast.pipeline.cube import NO_ECHO_DBZ, cube_crs, validate_cube
from mimcast.pipeline.readers import (
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    dbz_to_rate,
    detect_format,
    get_reader,
    list_readers,
    rate_to_dbz,
    read,
)
from mimcast.pipeline.readers.mch_gif import code_to_rate

pytestmark = pytest.mark.real_data
KM = 1000.0

SAMPLES = {
    "odim": "odim/rmi-20210704/20210704155000.rad.best.comp.rate.qpe.hdf",
    "cf-netcdf": "netcdf/bom-c10-20201031/66_20201031_120000.prcp-c10.nc",
    "mrms-grib2": "grib2/mrms-20190610/PrecipRate_00.00_20190610-000000.grib2",
    "radolan": "radolan/raa01-rx_10000-1408102050-dwd---bin.gz",
    "knmi-hdf5": "single-frames/knmi/RAD_NL25_RAP_5min_201008260000.h5",
    "fmi-pgm": "single-frames/fmi-pgm/201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
    "mch-gif": "single-frames/mch-gif/AQC151351545F_00005.801.gif",
}


def test_registry_lists_every_format_and_rejects_unknown_names():
    assert list_readers() == sorted(SAMPLES)
    with pytest.raises(ValueError, match=r"unknown radar format 'bufr'.*odim.*radolan"):
        get_reader("bufr")


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_every_reader_returns_a_valid_frame_and_is_detected_by_content(
    radar_samples, fmt, tmp_path
):
    path = radar_samples / SAMPLES[fmt]
    # detection by content: the extension is hidden
    disguised = tmp_path / "frame.bin"
    shutil.copy(path, disguised)
    assert detect_format(disguised) == fmt
    ds = validate_cube(read(path), check_values=True)
    assert ds.sizes["time"] == 1
    refl = ds.reflectivity.values[0]
    assert np.isnan(refl).any() or fmt == "cf-netcdf"  # outside coverage
    assert (refl == NO_ECHO_DBZ).any()  # measured, no echo
    assert np.nanmax(refl) > 20.0  # real weather in every sample


def _lonlat(ds, x, y):
    return pyproj.Transformer.from_crs(cube_crs(ds), "EPSG:4326", always_xy=True).transform(x, y)


def _within_km(ds, lonlat_file, x, y, km=1.0):
    geod = pyproj.Geod(ellps="WGS84")
    lon, lat = _lonlat(ds, x, y)
    _, _, dist = geod.inv(lon, lat, *lonlat_file)
    assert dist < km * KM, f"corner off by {dist / KM:.2f} km"


def _edges(ds):
    x, y = ds.x.values, ds.y.values
    dx, dy = x[1] - x[0], y[1] - y[0]
    return x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2


ODIM_SETS = ["rmi-20210704", "opera-20180824", "opera-cirrus-20241126"]


@pytest.mark.parametrize("folder", ODIM_SETS)
def test_odim_values_flags_and_corners(radar_samples, folder):
    path = sorted((radar_samples / "odim" / folder).iterdir())[0]
    ds = read(path, "odim")
    refl = ds.reflectivity.values[0]
    with h5py.File(path) as f:
        where = dict(f["where"].attrs)
        what = {}
        for group in ("dataset1/what", "dataset1/data1/what"):  # older OPERA: dataset level
            what.update(dict(f[group].attrs) if group in f else {})
        raw = f["dataset1/data1/data"][()]
    q = what["quantity"].decode()
    gain, offset = what.get("gain", 1.0), what.get("offset", 0.0)
    nodata = np.isnan(raw) | (raw == what.get("nodata", np.nan))
    undetect = raw == what.get("undetect", np.nan)
    values = raw * gain + offset
    valid = ~nodata & ~undetect
    # the field's max against the provider's own scaling
    expected = values[valid].max() if q == "DBZH" else rate_to_dbz(values[valid].max())
    assert np.nanmax(refl) == pytest.approx(float(expected), abs=1e-3)
    assert np.array_equal(np.isnan(refl), nodata)
    assert (refl[undetect] == NO_ECHO_DBZ).all()
    assert ds.reflectivity.attrs["source_quantity"] == q
    left, right, top, bottom = _edges(ds)
    _within_km(ds, (where["UL_lon"], where["UL_lat"]), left, top)
    _within_km(ds, (where["LR_lon"], where["LR_lat"]), right, bottom)
    _within_km(ds, (where["LL_lon"], where["LL_lat"]), left, bottom)
    _within_km(ds, (where["UR_lon"], where["UR_lat"]), right, top)


def test_rate_conversion_round_trips_through_the_kept_attributes(radar_samples):
    ds = read(radar_samples / SAMPLES["odim"], zr=ZR(300.0, 1.4))
    attrs = ds.reflectivity.attrs
    assert (attrs["zr_a"], attrs["zr_b"], attrs["source_units"]) == (300.0, 1.4, "mm h-1")
    with h5py.File(radar_samples / SAMPLES["odim"]) as f:
        raw = f["dataset1/data1/data"][()].astype(np.float64)
    back = dbz_to_rate(ds.reflectivity.values[0], ZR(attrs["zr_a"], attrs["zr_b"]))
    ok = np.isfinite(raw)
    np.testing.assert_allclose(back[ok], raw[ok], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "minutes", "centre"),
    [
        ("netcdf/bom-c10-20201031/66_20201031_120000.prcp-c10.nc", 10, (153.24, -27.7178)),
        ("netcdf/bom-cscn-20180616/2_20180616_120000.prcp-cscn.nc", 6, (144.752, -37.852)),
    ],
)
def test_cf_netcdf_accumulation_and_projection(radar_samples, name, minutes, centre):
    path = radar_samples / name
    ds = read(path, "cf-netcdf")
    with netCDF4.Dataset(path) as nc:
        amount = nc["precipitation"][:].filled(np.nan)
    attrs = ds.reflectivity.attrs
    assert attrs["source_quantity"] == "ACRR" and attrs["accumulation_minutes"] == minutes
    assert np.nanmax(ds.reflectivity.values) == pytest.approx(
        float(rate_to_dbz(np.nanmax(amount) * 60 / minutes)), abs=1e-3
    )
    assert cube_crs(ds).to_cf()["grid_mapping_name"] == "albers_conical_equal_area"
    # the projection origin (x = y = 0, the radar) is the provider's stated centre
    lon, lat = _lonlat(ds, 0.0, 0.0)
    assert lon == pytest.approx(centre[0], abs=0.01) and lat == pytest.approx(centre[1], abs=0.01)
    assert abs(ds.x.values[1] - ds.x.values[0]) == 500.0  # km in the file, metres in the cube


def test_mrms_grib2_values_and_grid(radar_samples):
    import eccodes

    path = radar_samples / SAMPLES["mrms-grib2"]
    ds = read(path, "mrms-grib2")
    with open(path, "rb") as fh:
        h = eccodes.codes_grib_new_from_file(fh)
        values = eccodes.codes_get_values(h)
        lat0 = eccodes.codes_get(h, "latitudeOfFirstGridPointInDegrees")
        lon0 = eccodes.codes_get(h, "longitudeOfFirstGridPointInDegrees")
        eccodes.codes_release(h)
    assert ds.reflectivity.shape == (1, 3500, 7000)
    assert np.nanmax(ds.reflectivity.values) == pytest.approx(
        float(rate_to_dbz(values.max())), abs=1e-3
    )
    assert np.isnan(ds.reflectivity.values).sum() == (values < 0).sum()  # -3: no coverage
    lon, lat = _lonlat(ds, ds.x.values[0], ds.y.values[0])  # first pixel centre
    assert lon == pytest.approx(lon0 - 360, abs=1e-6) and lat == pytest.approx(lat0, abs=1e-6)
    assert str(ds.time.values[0])[:16] == "2019-06-10T00:00"


@pytest.mark.parametrize(
    ("product", "corner"),
    [("rx", (3.5889, 46.9526)), ("ry", (3.5889, 46.9526)), ("rw", (3.5889, 46.9526)),
     ("ex", (2.3419, 43.9336))],
)  # fmt: skip
def test_radolan_products_scaling_flags_and_dwd_corners(radar_samples, product, corner):
    path = radar_samples / f"radolan/raa01-{product}_10000-1408102050-dwd---bin.gz"
    ds = read(path, "radolan")
    with gzip.open(path) as fh:
        blob = fh.read()
    body = blob[blob.index(b"\x03") + 1 :]
    rows, cols = ds.reflectivity.shape[1:]
    refl = ds.reflectivity.values[0]
    if product in ("rx", "ex"):
        raw = np.frombuffer(body[: rows * cols], np.uint8).reshape(rows, cols)
        valid = raw < 249
        assert np.nanmax(refl) == pytest.approx(raw[valid].max() * 0.5 - 32.5)
        assert np.array_equal(np.isnan(refl), ~valid)
    else:
        raw = np.frombuffer(body[: 2 * rows * cols], "<u2").reshape(rows, cols)
        valid = (raw & 0xA000) == 0
        precision, minutes = (0.01, 5) if product == "ry" else (0.1, 60)
        rate = (raw[valid] & 0x0FFF).max() * precision * 60 / minutes
        assert np.nanmax(refl) == pytest.approx(float(rate_to_dbz(rate)), abs=1e-3)
        assert np.array_equal(np.isnan(refl), ~valid)
    left, _, bottom, _ = _edges(ds)  # rows run south to north: y[0] is the southern row
    _within_km(ds, corner, left, bottom, km=0.1)
    assert str(ds.time.values[0])[:16] == "2014-08-10T20:50"


def test_knmi_calibration_and_corners(radar_samples):
    path = radar_samples / SAMPLES["knmi-hdf5"]
    ds = read(path, "knmi-hdf5")
    with h5py.File(path) as f:
        raw = f["image1/image_data"][()]
        corners = f["geographic"].attrs["geo_product_corners"].reshape(4, 2)
    valid = raw != 65535
    assert np.array_equal(np.isnan(ds.reflectivity.values[0]), ~valid)
    assert np.nanmax(ds.reflectivity.values) == pytest.approx(
        float(rate_to_dbz(raw[valid].max() * 0.01 * 12)), abs=1e-3
    )
    left, right, top, bottom = _edges(ds)
    ll, ul, ur, lr = corners  # lon/lat pairs as KNMI lists them
    _within_km(ds, ul, left, top)
    _within_km(ds, ur, right, top)
    _within_km(ds, lr, right, bottom)
    _within_km(ds, ll, left, bottom)


def test_fmi_pgm_values_pixel_size_and_time(radar_samples):
    from mimcast.pipeline.readers.fmi_pgm import read_header

    path = radar_samples / SAMPLES["fmi-pgm"]
    ds = read(path, "fmi-pgm")
    comments, width, height, _, body = read_header(path)
    raw = np.frombuffer(body[: width * height], np.uint8).reshape(height, width)
    assert np.nanmax(ds.reflectivity.values) == (raw[raw < 255].max() - 64) / 2
    assert np.isnan(ds.reflectivity.values[0]).sum() == (raw == 255).sum()
    # the pixel size derived from the corners agrees with the header's own figure
    assert abs(ds.x.values[1] - ds.x.values[0]) == pytest.approx(
        float(comments["metersperpixel_x"][0]), abs=1.0
    )
    assert abs(ds.y.values[1] - ds.y.values[0]) == pytest.approx(
        float(comments["metersperpixel_y"][0]), abs=1.0
    )
    assert str(ds.time.values[0])[:16] == "2016-09-28T14:45"


def test_mch_gif_codes_and_swiss_grid(radar_samples):
    from PIL import Image

    path = radar_samples / SAMPLES["mch-gif"]
    ds = read(path, "mch-gif")
    codes = np.asarray(Image.open(path))
    refl = ds.reflectivity.values[0]
    assert np.array_equal(np.isnan(refl), codes == 255)
    # back through MeteoSwiss' own relation, a code is (code - 71.5) / 2 dBZ
    rain = dbz_to_rate(refl, MARSHALL_PALMER)
    wet = np.isfinite(refl) & (codes >= 2) & (codes <= 250)
    np.testing.assert_allclose(rate_to_dbz(rain[wet], ZR(316, 1.5)), (codes[wet] - 71.5) / 2,
                               atol=1e-3)  # fmt: skip
    np.testing.assert_allclose(code_to_rate(np.array([71])), (10 ** (-0.5 / 20) / 316) ** (1 / 1.5))
    # the Swiss grid: LV03 (600 km, 200 km) is the old observatory of Bern
    col = int(np.argmin(np.abs(ds.x.values - 600_000)))
    row = int(np.argmin(np.abs(ds.y.values - 200_000)))
    _within_km(ds, (7.43958, 46.95241), ds.x.values[col], ds.y.values[row], km=1.0)
    assert ds.reflectivity.shape == (1, 640, 710)
    assert str(ds.time.values[0])[:16] == "2015-05-15T15:45"


BROKEN = ["odim", "cf-netcdf", "radolan", "knmi-hdf5", "fmi-pgm", "mch-gif"]


@pytest.mark.parametrize("fmt", BROKEN)
def test_truncated_files_fail_with_a_clear_error_naming_the_file(radar_samples, fmt, tmp_path):
    src = radar_samples / SAMPLES[fmt]
    blob = src.read_bytes()
    bad = tmp_path / f"truncated{''.join(Path(src).suffixes)}"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReaderError) as err:
        read(bad)
    assert str(bad) in str(err.value)


def test_garbage_and_empty_files_are_unknown_format(tmp_path):
    junk = tmp_path / "notes.h5"
    junk.write_text("this is not radar data\n")
    with pytest.raises(ReaderError, match=r"notes.h5: unknown format"):
        read(junk)
    empty = tmp_path / "empty.gz"
    empty.write_bytes(b"")
    with pytest.raises(ReaderError, match="empty file"):
        detect_format(empty)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_a_map_draws_in_every_readers_projection(radar_samples, fmt, tmp_path):
    """Maps in each sample's own projection, with the shipped coastlines/borders (Swiss grid
    included: cartopy's area-of-use threshold used to crash it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mimcast.pipeline import plots

    ds = read(radar_samples / SAMPLES[fmt])
    step = max(1, max(ds.sizes["x"], ds.sizes["y"]) // 400)  # same extent, fewer pixels
    ds = ds.isel(x=slice(None, None, step), y=slice(None, None, step))
    fig = plt.figure(figsize=(4, 4))
    ax, proj = plots.map_axes(fig, ds)
    plots.draw_dbz(ax, proj, ds, ds.reflectivity.values[0])
    fig.savefig(tmp_path / f"{fmt}.png", dpi=60)
    layers = [a for a in ax.artists + ax.collections if type(a).__name__ == "FeatureArtist"]
    plt.close(fig)
    assert layers, "no coastline or border drawn"
    assert (tmp_path / f"{fmt}.png").stat().st_size > 5000


def _nowcast_on(ds, tmp_path, fmt):
    """A persistence nowcast on a sample's own grid (thinned: same projection, fewer pixels)."""
    import xarray as xr

    from mimcast.pipeline.forecasters import get_forecaster
    from mimcast.pipeline.netcdf import write_nowcast
    from mimcast.pipeline.nowcast import NowcastOptions, nowcast

    step = max(1, max(ds.sizes["x"], ds.sizes["y"]) // 200)
    ds = ds.isel(x=slice(None, None, step), y=slice(None, None, step))
    later = ds.assign_coords(time=ds.time.values + np.timedelta64(5, "m"))
    cube = xr.concat([ds, later], "time").assign(observed=("time", np.ones(2, bool)))
    forecast = nowcast(cube.assign_attrs(time_step_minutes=5), get_forecaster("persistence"),
                       NowcastOptions(leads=2))  # fmt: skip
    return ds, write_nowcast(forecast, tmp_path, source=fmt)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_nowcasts_on_every_readers_grid_pass_the_cf_checker(radar_samples, fmt, tmp_path):
    import json
    import subprocess
    import sys

    _, path = _nowcast_on(read(radar_samples / SAMPLES[fmt]), tmp_path, fmt)
    exe = Path(sys.executable).with_name("compliance-checker")
    result = subprocess.run([str(exe), "--test", "cf:1.8", "-f", "json", "-o", "-", str(path)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    report = json.loads(result.stdout[result.stdout.index("{") :])["cf:1.8"]
    checks = report["high_priorities"] + report["medium_priorities"] + report["low_priorities"]
    failed = [(c["name"], c["msgs"]) for c in checks if c["value"][0] < c["value"][1]]
    assert not failed and report["scored_points"] == report["possible_points"]


def test_a_nowcast_on_the_mrms_lat_lon_grid_is_latitude_longitude_for_gdal(radar_samples, tmp_path):
    import json
    import shutil
    import subprocess

    import xarray as xr

    ds, path = _nowcast_on(read(radar_samples / SAMPLES["mrms-grib2"]), tmp_path, "mrms")
    with xr.open_dataset(path) as out:
        assert out.crs.attrs["grid_mapping_name"] == "latitude_longitude"
        assert out.reflectivity.dims == ("time", "lat", "lon")
        assert out.lon.values[0] == pytest.approx(-129.995, abs=1e-6)  # MRMS's first centre
        np.testing.assert_array_equal(out.reflectivity.values[0], ds.reflectivity.values[0])
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdal-bin not installed")
    from mimcast.pipeline.readers.mrms_grib2 import METRES_PER_DEGREE

    gdal = subprocess.run(["gdalinfo", "-json", f"NETCDF:{path}:reflectivity"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads(gdal.stdout)
    x0, dx, _, y0, _, dy = info["geoTransform"]
    lon, lat = ds.x.values / METRES_PER_DEGREE, ds.y.values / METRES_PER_DEGREE
    assert x0 == pytest.approx(lon[0] - (lon[1] - lon[0]) / 2, abs=1e-6)
    assert dx == pytest.approx(lon[1] - lon[0], abs=1e-9) and dy < 0
    assert y0 == pytest.approx(lat[0] + abs(lat[1] - lat[0]) / 2, abs=1e-6)
    assert "GEOGCRS" in info["coordinateSystem"]["wkt"]


def test_a_nowcast_names_the_epsg_crs_of_its_grid(radar_samples, tmp_path):
    """RMI's PROJ string is Belgian Lambert 2008: the product says EPSG:3812 (QGIS shows it
    by name, not as a custom CRS); a grid without an EPSG twin keeps its own definition."""
    import pyproj
    import xarray as xr

    _, path = _nowcast_on(read(radar_samples / SAMPLES["odim"]), tmp_path / "rmi", "rmi")
    with xr.open_dataset(path) as out:
        assert pyproj.CRS.from_wkt(out.crs.attrs["crs_wkt"]).to_epsg(min_confidence=100) == 3812
        assert out.crs.attrs["spatial_ref"] == out.crs.attrs["crs_wkt"]
    _, path = _nowcast_on(read(radar_samples / SAMPLES["radolan"]), tmp_path / "dwd", "dwd")
    with xr.open_dataset(path) as out:
        assert pyproj.CRS.from_wkt(out.crs.attrs["crs_wkt"]).to_epsg() is None


@pytest.mark.parametrize("fmt", ["radolan", "odim"])
def test_geotiffs_per_lead_are_cogs_on_the_nowcast_grid(radar_samples, fmt, tmp_path):
    """One COG per lead, pixel for pixel the nowcast (north-up also for RADOLAN's south-up
    rows), with the valid time in the name and the tags; read back by gdalinfo and rasterio."""
    import json
    import shutil
    import subprocess

    import rasterio

    from mimcast.pipeline.geotiff import write_geotiffs
    from mimcast.pipeline.netcdf import read_nowcast

    ds, nc = _nowcast_on(read(radar_samples / SAMPLES[fmt]), tmp_path, fmt)
    with read_nowcast(nc) as forecast:
        forecast = forecast.load()
    tifs = write_geotiffs(forecast, tmp_path, source=fmt)
    valid = [np.datetime64(t, "m").item().strftime("%Y%m%d%H%M") for t in forecast.time.values]
    assert [p.name.split("valid")[1] for p in tifs] == [f"{v}.tif" for v in valid]
    assert "_005min_" in tifs[0].name and "_010min_" in tifs[1].name
    x, y = ds.x.values, ds.y.values
    with rasterio.open(tifs[1]) as src:
        assert src.tags()["valid_time"] == str(np.datetime64(forecast.time.values[1], "s")) + "Z"
        assert src.tags()["lead_minutes"] == "10" and src.count == 3
        assert src.descriptions[0].startswith("equivalent reflectivity")
        band = src.read(1, masked=True)
        # the strongest echo, found by its (x, y): the same value as the NetCDF there
        field = forecast.reflectivity.values[1]
        r, c = np.unravel_index(np.nanargmax(field), field.shape)
        row, col = src.index(x[c], y[r])
        assert band[row, col] == field[r, c] and not band.mask[row, col]
        assert (band.filled(np.nan) == (field[::-1] if y[1] > y[0] else field)).sum() > 0.9 * (
            np.isfinite(field).sum()
        )
        assert src.transform.e < 0  # north-up
        assert src.width == x.size and src.height == y.size
    if shutil.which("gdalinfo"):
        info = json.loads(subprocess.run(["gdalinfo", "-json", str(tifs[0])], capture_output=True,
                                         text=True, check=True).stdout)  # fmt: skip
        assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
        assert info["driverShortName"] == "GTiff"


QGIS_PROBE = """
import json, os, sys
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
out = {}
for name, uri in zip(("netcdf", "geotiff"), sys.argv[1:]):
    layer = QgsRasterLayer(uri, name)
    e = layer.extent()
    out[name] = {"valid": layer.isValid(), "authid": layer.crs().authid(),
                 "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()],
                 "bands": layer.bandCount()}
print(json.dumps(out), flush=True)
os._exit(0)  # QGIS 3.22 may crash in its own teardown; the answer is out
"""


def test_qgis_opens_the_netcdf_and_the_geotiff_with_the_named_crs(radar_samples, tmp_path):
    """Where python3-qgis is installed (apt), a real QGIS layer: valid, EPSG:3812 by name for
    RMI, and the extent of the radar grid."""
    import json
    import shutil
    import subprocess

    python = shutil.which("python3", path="/usr/bin")
    if not python or subprocess.run([python, "-c", "import qgis.core"],
                                    capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("python3-qgis not installed (apt install python3-qgis)")
    from mimcast.pipeline.geotiff import write_geotiffs
    from mimcast.pipeline.netcdf import read_nowcast

    ds, nc = _nowcast_on(read(radar_samples / SAMPLES["odim"]), tmp_path, "rmi")
    with read_nowcast(nc) as forecast:
        tif = write_geotiffs(forecast.load(), tmp_path, source="rmi")[0]
    result = subprocess.run([python, "-c", QGIS_PROBE, f'NETCDF:"{nc}":reflectivity', str(tif)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    layers = json.loads(result.stdout.strip().splitlines()[-1])
    dx = float(ds.x[1] - ds.x[0])
    edges = [float(ds.x[0]) - dx / 2, float(ds.y.min()) - dx / 2,
             float(ds.x[-1]) + dx / 2, float(ds.y.max()) + dx / 2]  # fmt: skip
    for name in ("netcdf", "geotiff"):
        layer = layers[name]
        assert layer["valid"] and layer["authid"] == "EPSG:3812", layers
        assert layer["extent"] == pytest.approx(edges, abs=1e-3)
    assert layers["geotiff"]["bands"] == 3


def _moved(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` moved k pixels down and 2k right, 0 (no echo in every format) where nothing
    came in."""
    b = np.zeros_like(a)
    b[k:, 2 * k :] = a[: a.shape[0] - k, : a.shape[1] - 2 * k]
    return b


def _write_moving_sequence(src: Path, fmt: str, out: Path, frames: int) -> None:
    """Write ``frames`` files 5 minutes apart in the sample's own format, the sample moved."""
    from datetime import datetime, timedelta

    from PIL import Image

    out.mkdir()
    if fmt == "fmi-pgm":  # time in the header's obstime comment
        raw = gzip.decompress(src.read_bytes())
        frame_ = read(src)
        ny, nx = frame_.sizes["y"], frame_.sizes["x"]
        header, body = raw[: -ny * nx], np.frombuffer(raw[-ny * nx :], np.uint8).reshape(ny, nx)
        t0 = frame_.time.values[0].astype("datetime64[m]").item()
        for k in range(frames):
            stamp = f"{t0 + timedelta(minutes=5 * k):%Y%m%d%H%M}"
            head = header.replace(f"obstime {t0:%Y%m%d%H%M}".encode(), f"obstime {stamp}".encode())
            assert k == 0 or head != header
            moved = head + _moved(body, k).tobytes()
            (out / f"{stamp}_{src.name}").write_bytes(gzip.compress(moved))
    elif fmt == "mch-gif":  # time in the file name only
        with Image.open(src) as img:
            codes, palette = np.asarray(img), img.getpalette()
        for k in range(frames):
            t = datetime(2015, 5, 15, 15, 45) + timedelta(minutes=5 * k)
            moved = Image.fromarray(_moved(codes, k), "P")
            moved.putpalette(palette)
            moved.save(out / f"AQC{t:%y}{t.timetuple().tm_yday:03d}{t:%H%M}F_00005.801.gif")
    else:  # KNMI HDF5: time in the overview's product_datetime attributes
        for k in range(frames):
            end = datetime(2010, 8, 26) + timedelta(minutes=5 * k)
            path = out / f"RAD_NL25_RAP_5min_{end:%Y%m%d%H%M}.h5"
            shutil.copy(src, path)
            with h5py.File(path, "r+") as f:
                data = f["image1/image_data"]
                data[...] = _moved(data[()], k)
                for key, t in (("end", end), ("start", end - timedelta(minutes=5))):
                    f["overview"].attrs[f"product_datetime_{key}"] = np.bytes_(
                        t.strftime("%d-%b-%Y;%H:%M:%S.000").upper()
                    )


@pytest.mark.parametrize("fmt", ["fmi-pgm", "mch-gif", "knmi-hdf5"])
def test_a_sequence_in_a_single_frame_format_is_ingested_and_forecast_with_skill(
    radar_samples, fmt, tmp_path
):
    """The formats ../shared holds as one frame each, as an archive of moving frames in their
    own format: ingest, then `evaluate` with the shipped model, which must beat persistence."""
    import csv

    from mimcast.pipeline.cli import main

    archive, store, out = tmp_path / "archive", tmp_path / "cube.zarr", tmp_path / "evaluation"
    _write_moving_sequence(radar_samples / SAMPLES[fmt], fmt, archive, frames=6)
    assert main(["ingest", str(archive), "--out", str(store), "--quiet"]) == 0
    code = main(["evaluate", str(store), "--out", str(out), "--steps", "2", "--quiet",
                 "--methods", "mimnet", "persistence"])  # fmt: skip
    assert code == 0
    mse = {}
    for row in csv.DictReader((out / "scores.csv").open()):
        if row["metric"] == "MSE":
            mse[row["method"], int(row["lead_time"])] = float(row["value"])
    assert sorted(mse) == [(m, lead) for m in ("mimnet", "persistence") for lead in (5, 10)]
    for lead in (5, 10):  # the echo moved 2.2 px per step: only a forecast that moves it wins
        assert mse["mimnet", lead] < 0.5 * mse["persistence", lead], mse
    assert "mimnet_real.safetensors" in (out / "report.md").read_text()
