"""KNMI RAD_NL25 HDF5 (not ODIM): 5-minute accumulations on a polar stereographic grid.

The calibration formula (``GEO=0.01*PV+0.0``) and the missing value are read from
``image1/calibration``; the projection from ``geographic/map_projection``
(``projection_proj4_params``, in km, converted to metres); the grid from
``geographic``: column/row offsets and pixel sizes in km with the upper-left pixel first
(``geo_pixel_def = LU``). The time is the end of the accumulation
(``overview/product_datetime_end``).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

from mimcast.pipeline.cube import regular_grid
from mimcast.pipeline.readers.common import (
    HDF5_MAGIC,
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    check_image_shape,
    crs_from_proj,
    frame,
    rate_to_dbz,
    text,
)


def _km_proj_to_m(projdef: str) -> str:
    def scale(m: re.Match) -> str:
        value = float(m.group(2))
        return f"+{m.group(1)}={value * 1000.0 if value < 100000 else value}"

    out = re.sub(r"\+(a|b|x_0|y_0)=([-\d.]+)", scale, projdef)
    return out if "+units" in out else out + " +units=m"


def _scalar(value) -> float:
    return float(np.asarray(value).ravel()[0])


def read_knmi_hdf5(path: str | Path, *, zr: ZR = MARSHALL_PALMER):
    """Read a KNMI RAD_NL25 accumulation file as a one-frame cube (dBZ)."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ReaderError(path, f"not a readable HDF5 file ({err})") from err
    with f:
        if "image1" not in f or "geographic" not in f:
            raise ReaderError(path, "not a KNMI HDF5 product (no image1/geographic groups)")
        cal = dict(f["image1/calibration"].attrs)
        geo = dict(f["geographic"].attrs)
        mp = f.get("geographic/map_projection")
        projdef = text(mp.attrs.get("projection_proj4_params", "")) if mp is not None else ""
        crs = crs_from_proj(path, _km_proj_to_m(projdef))
        try:
            check_image_shape(path, f["image1/image_data"].shape, "image_data")
            raw = f["image1/image_data"][()]
        except (OSError, KeyError) as err:
            raise ReaderError(path, f"image data unreadable (truncated?): {err}") from err
        end = text(f["overview"].attrs.get("product_datetime_end", ""))
        start = text(f["overview"].attrs.get("product_datetime_start", ""))
    formula = text(cal.get("calibration_formulas", ""))
    m = re.match(r"GEO\s*=\s*([-\d.eE]+)\s*\*\s*PV\s*\+?\s*([-\d.eE]+)?", formula)
    if not m:
        raise ReaderError(path, f"calibration formula {formula!r} not understood")
    gain, offset = float(m.group(1)), float(m.group(2) or 0.0)
    amount = raw.astype(np.float64) * gain + offset
    for key in ("calibration_missing_data", "calibration_out_of_image"):
        if key in cal:
            amount[raw == _scalar(cal[key])] = np.nan
    try:
        t_end = datetime.strptime(end.split(".")[0], "%d-%b-%Y;%H:%M:%S")
        t_start = datetime.strptime(start.split(".")[0], "%d-%b-%Y;%H:%M:%S")
    except ValueError as err:
        raise ReaderError(path, f"product times {start!r}/{end!r} not understood") from err
    minutes = (t_end - t_start).total_seconds() / 60.0
    if minutes <= 0:
        raise ReaderError(path, f"accumulation period {minutes} min is not positive")
    dx = abs(_scalar(geo["geo_pixel_size_x"])) * 1000.0
    dy = abs(_scalar(geo["geo_pixel_size_y"])) * 1000.0
    ny, nx = raw.shape
    left = _scalar(geo["geo_column_offset"]) * dx
    top = -_scalar(geo["geo_row_offset"]) * dy
    x, y = regular_grid(left, top, dx, dy, nx, ny)
    return frame(
        path, rate_to_dbz(amount * 60.0 / minutes, zr), t_end, x, y, crs, quantity="ACRR",
        units="mm", zr=zr, accumulation_minutes=minutes, institution="KNMI",
    )  # fmt: skip


def guess_can_open(head: bytes, path: Path) -> bool:
    """HDF5 with KNMI's ``overview`` and ``image1`` groups."""
    if not head.startswith(HDF5_MAGIC):
        return False
    with h5py.File(path, "r") as f:
        return "overview" in f and "image1" in f
