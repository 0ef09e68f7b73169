"""Gridded CF NetCDF with a grid mapping (e.g. BoM Rainfields accumulations).

The data variable is the one with a ``grid_mapping`` attribute and ``(y, x)`` (or a leading
length-one ``time``) dims. Its CF ``standard_name`` tells the quantity:
``equivalent_reflectivity_factor`` (dBZ), ``rainfall_rate`` (mm h-1),
``precipitation_flux`` (kg m-2 s-1), or ``precipitation_amount``/``thickness_of_rainfall_amount``
(kg m-2 = mm, accumulated between ``start_time`` and the valid time). Projected coordinates in
km are converted to metres. The CRS comes from the grid-mapping variable via pyproj's
``CRS.from_cf`` (``crs_wkt`` first, where present).
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr

from mimcast.pipeline.readers.common import (
    HDF5_MAGIC,
    MARSHALL_PALMER,
    MAX_PIXELS,
    ZR,
    ReaderError,
    check_grid_size,
    frame,
    rate_to_dbz,
)

ACCUMULATIONS = ("precipitation_amount", "thickness_of_rainfall_amount", "rainfall_amount")
_SCALE = {"m": 1.0, "meter": 1.0, "metre": 1.0, "meters": 1.0, "km": 1000.0, "kilometer": 1000.0}


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


@functools.lru_cache(maxsize=32)
def _crs_from_cf(attrs_json: str) -> pyproj.CRS:
    """Build (once per distinct grid mapping: pyproj's datum lookup is slow) the CRS."""
    gm = json.loads(attrs_json)
    return pyproj.CRS.from_wkt(gm["crs_wkt"]) if "crs_wkt" in gm else pyproj.CRS.from_cf(gm)


def _data_variable(ds: xr.Dataset, path) -> xr.DataArray:
    candidates = [v for v in ds.data_vars.values() if "grid_mapping" in v.attrs]
    if not candidates:
        raise ReaderError(path, "missing projection: no variable has a 'grid_mapping' attribute")
    return max(candidates, key=lambda v: v.size)


def _metres(coord: xr.DataArray, path) -> np.ndarray:
    units = str(coord.attrs.get("units", "m")).strip().lower()
    if units not in _SCALE:
        raise ReaderError(path, f"coordinate '{coord.name}' has units {units!r}, expected m or km")
    return coord.values.astype(np.float64) * _SCALE[units]


def _valid_time(ds: xr.Dataset, var: xr.DataArray, path) -> np.datetime64:
    for name in ("valid_time", "time"):
        if name in ds.variables and np.issubdtype(ds[name].dtype, np.datetime64):
            return np.datetime64(ds[name].values.ravel()[-1], "ns")
    times = [v for v in ds.variables.values() if np.issubdtype(v.dtype, np.datetime64)]
    if not times:
        raise ReaderError(path, "no time variable (valid_time or time)")
    return np.datetime64(times[0].values.ravel()[-1], "ns")


#: The netCDF-C library is not thread-safe: readers in dask threads take turns.
NETCDF_LOCK = threading.Lock()


def read_cf_netcdf(path: str | Path, *, zr: ZR = MARSHALL_PALMER) -> xr.Dataset:
    """Read one gridded CF NetCDF time step as a one-frame cube (dBZ)."""
    with NETCDF_LOCK:
        try:
            ds = xr.open_dataset(path, engine="netcdf4", mask_and_scale=True, decode_times=True)
            values = sum(v.size for v in ds.variables.values())
            if values > 4 * MAX_PIXELS:  # before loading: the header may declare anything
                ds.close()
                raise ReaderError(path, f"declares {values / 1e6:.0f} million values, more "
                                  "than any radar frame; damaged or hostile file?")  # fmt: skip
            ds.load()
        except ReaderError:
            raise
        except (OSError, ValueError, RuntimeError, AttributeError) as err:
            raise ReaderError(path, f"not a readable NetCDF file ({err})") from err
        ds.close()
    with ds:
        var = _data_variable(ds, path)
        if var.ndim == 3 and var.shape[0] == 1:
            var = var.isel({var.dims[0]: 0})
        if var.ndim != 2:
            raise ReaderError(path, f"variable '{var.name}' has dims {var.dims}, expected (y, x)")
        ydim, xdim = var.dims
        check_grid_size(path, *var.shape)
        gm_name = var.attrs["grid_mapping"]
        if gm_name not in ds.variables:
            raise ReaderError(path, f"missing projection: grid mapping '{gm_name}' not in file")
        gm = dict(ds[gm_name].attrs)
        try:
            crs = _crs_from_cf(json.dumps(gm, sort_keys=True, default=_plain))
        except (pyproj.exceptions.CRSError, KeyError, TypeError) as err:
            raise ReaderError(path, f"grid mapping '{gm_name}' not understood: {err}") from err
        x, y = _metres(ds[xdim], path), _metres(ds[ydim], path)
        try:
            values = var.values.astype(np.float64)
        except (OSError, RuntimeError) as err:
            raise ReaderError(path, f"data unreadable (truncated or corrupt?): {err}") from err
        time = _valid_time(ds, var, path)
        std = var.attrs.get("standard_name", "")
        units = var.attrs.get("units", "")
        start = ds["start_time"].values if "start_time" in ds.variables else None
        institution = ds.attrs.get("institution")

    if std == "equivalent_reflectivity_factor":
        return frame(path, values, time, x, y, crs, quantity="DBZH", units="dBZ",
                     institution=institution)  # fmt: skip
    if std == "rainfall_rate":
        rate, quantity, minutes = values, "RATE", None
    elif std == "precipitation_flux":
        rate, quantity, minutes = values * 3600.0, "RATE", None
    elif std in ACCUMULATIONS:
        if start is None or not np.issubdtype(np.asarray(start).dtype, np.datetime64):
            raise ReaderError(path, f"'{var.name}' is an accumulation but 'start_time' is missing")
        minutes = float((time - np.datetime64(start, "ns")) / np.timedelta64(1, "m"))
        if minutes <= 0:
            raise ReaderError(path, f"accumulation period {minutes} min is not positive")
        rate, quantity = values * 60.0 / minutes, "ACRR"
    else:
        raise ReaderError(
            path, f"variable '{var.name}' has standard_name {std!r}: not reflectivity or rain"
        )
    return frame(
        path, rate_to_dbz(rate, zr), time, x, y, crs, quantity=quantity,
        units=units or "mm", zr=zr, accumulation_minutes=minutes, institution=institution,
    )  # fmt: skip


def guess_can_open(head: bytes, path: Path) -> bool:
    """NetCDF classic/64-bit, or NetCDF4 (any HDF5 that no more specific reader claimed)."""
    return head.startswith((b"CDF\x01", b"CDF\x02", b"CDF\x05", HDF5_MAGIC))
