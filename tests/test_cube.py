"""The cube contract accepts a good cube and rejects each kind of bad one, naming the field."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import xarray as xr

from mimcast.pipeline.cube import (
    NO_ECHO_DBZ,
    CubeError,
    build_cube,
    crs_variable,
    cube_crs,
    regular_grid,
    validate_cube,
)

LAEA = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"


def good_cube(nt: int = 3, ny: int = 5, nx: int = 4) -> xr.Dataset:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 50, (nt, ny, nx)).astype(np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = NO_ECHO_DBZ
    times = np.datetime64("2024-07-01T12:00") + np.arange(nt) * np.timedelta64(5, "m")
    x, y = regular_grid(4_000_000.0, 3_000_000.0, 1000.0, 1000.0, nx, ny)
    return build_cube(data, times, x, y, LAEA)


def test_good_cube_passes_and_keeps_everything():
    ds = good_cube()
    assert validate_cube(ds, check_values=True) is ds
    assert ds.reflectivity.dims == ("time", "y", "x")
    assert ds.reflectivity.dtype == np.float32
    assert np.isnan(ds.reflectivity.values[0, 0, 0])
    assert cube_crs(ds) == pyproj.CRS.from_user_input(LAEA)
    assert ds.crs.attrs["grid_mapping_name"] == "lambert_azimuthal_equal_area"
    # pixel centres: half a pixel in from the corner, y north-up (decreasing)
    assert ds.x.values[0] == 4_000_500.0
    assert ds.y.values[0] == 2_999_500.0 and ds.y.values[1] < ds.y.values[0]


def test_crs_variable_keeps_cf_parameters_for_a_projection_cf_cannot_name():
    # Eckert IV has no CF grid_mapping_name: crs_wkt must still carry it
    var = crs_variable("+proj=eck4 +lon_0=0 +datum=WGS84 +units=m")
    assert "grid_mapping_name" not in var.attrs
    method = pyproj.CRS.from_wkt(var.attrs["crs_wkt"]).coordinate_operation.method_name
    assert method == "Eckert IV"


def _drop_attr(var: str, attr: str):
    def mutate(ds: xr.Dataset) -> xr.Dataset:
        ds[var].attrs.pop(attr)
        return ds

    return mutate


def _set_attr(var: str, attr: str, value):
    def mutate(ds: xr.Dataset) -> xr.Dataset:
        ds[var].attrs[attr] = value
        return ds

    return mutate


BAD = {
    "not a dataset": (lambda ds: ds.reflectivity, "xarray.Dataset"),
    "no variable": (lambda ds: ds.rename({"reflectivity": "dbz"}), "'reflectivity': missing"),
    "wrong dim order": (lambda ds: ds.transpose("time", "x", "y"), "dims are"),
    "float64": (lambda ds: ds.astype({"reflectivity": np.float64}), "float32"),
    "no standard_name": (_drop_attr("reflectivity", "standard_name"), "'standard_name'"),
    "units mm/h": (_set_attr("reflectivity", "units", "mm h-1"), "'units' is 'mm h-1'"),
    "no long_name": (_drop_attr("reflectivity", "long_name"), "'long_name'"),
    "no grid_mapping": (_drop_attr("reflectivity", "grid_mapping"), "'grid_mapping'"),
    "time not datetime": (
        lambda ds: ds.assign_coords(time=("time", np.arange(3.0), {"standard_name": "time"})),
        "'time': dtype",
    ),
    "time decreasing": (lambda ds: ds.isel(time=[2, 1, 0]), "'time': must increase"),
    "time duplicate": (lambda ds: ds.isel(time=[0, 1, 1]), "'time': must increase"),
    "time NaT": (
        lambda ds: ds.assign_coords(
            time=("time", ds.time.values.copy().astype("datetime64[ns]"), ds.time.attrs)
        ).pipe(lambda d: d.assign_coords(time=d.time.where(d.time != d.time[1]))),
        "NaT",
    ),
    "x in km": (_set_attr("x", "units", "km"), "'x': attribute 'units'"),
    "y no axis": (_drop_attr("y", "axis"), "'y': missing attribute 'axis'"),
    "x decreasing": (lambda ds: ds.isel(x=slice(None, None, -1)), "'x': must increase"),
    "y irregular": (
        lambda ds: ds.assign_coords(y=("y", ds.y.values + np.array([0, 0, 300, 0, 0]), ds.y.attrs)),
        "irregular",
    ),
    "x integer": (
        lambda ds: ds.assign_coords(x=("x", ds.x.values.astype(np.int64), ds.x.attrs)),
        "'x': dtype",
    ),
    "no crs": (lambda ds: ds.drop_vars("crs"), "'crs': missing"),
    "crs without wkt": (_drop_attr("crs", "crs_wkt"), "'crs_wkt'"),
    "crs garbage": (_set_attr("crs", "crs_wkt", "PROJCRS[nonsense"), "does not parse"),
    "geographic crs": (
        lambda ds: ds.assign_coords(crs=crs_variable("EPSG:4326")),
        "expected a projected CRS",
    ),
    "crs in feet": (
        lambda ds: ds.assign_coords(crs=crs_variable("EPSG:2227")),
        "expected metre",
    ),
    "cf name mismatch": (_set_attr("crs", "grid_mapping_name", "mercator"), "grid_mapping_name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_cube_is_rejected_naming_the_field(case):
    mutate, fragment = BAD[case]
    with pytest.raises(CubeError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        validate_cube(mutate(good_cube()))


@pytest.mark.parametrize("value", [np.inf, 250.0])
def test_value_check_rejects_unphysical_values(value):
    ds = good_cube()
    ds.reflectivity.values[2, 2, 2] = value
    validate_cube(ds)  # structure alone is fine
    with pytest.raises(CubeError, match="'reflectivity'"):
        validate_cube(ds, check_values=True)


def test_lazy_cube_is_not_computed_by_validation():
    from dask.callbacks import Callback

    computed = []

    class Count(Callback):
        def _start(self, dsk):
            computed.append(len(dsk))

    ds = good_cube().chunk({"time": 1})
    with Count():
        validate_cube(ds)
        assert computed == []  # validation looked at metadata only
        ds.reflectivity.values  # noqa: B018 - the counter does see a real computation
    assert len(computed) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-07-01T12:30", "2024-07-01T12:30:00"),
        ("2024-07-01T12:30Z", "2024-07-01T12:30:00"),
        ("2024-07-01 12:30:15", "2024-07-01T12:30:15"),
        ("2024-07-01T12:30:00+00:00", "2024-07-01T12:30:00"),
        ("2024-07-01", "2024-07-01T00:00:00"),
        ("2024-07-01T12:30+02:00", None),  # another offset: refused, never shifted silently
        ("13:02x", None),
        ("yesterday", None),
    ],
)
def test_one_time_parser_for_every_option(text, expected):
    from mimcast.pipeline.cube import parse_time

    if expected is None:
        with pytest.raises(ValueError, match="is not an ISO 8601 UTC time"):
            parse_time(text)
    else:
        assert parse_time(text) == np.datetime64(expected)
