"""Shared pieces of the readers: errors, the Z-R relation, and building a one-frame cube.

Every reader returns one time step under the cube contract (:mod:`pipeline.cube`). Rain
rates and accumulations become reflectivity through a configurable Z = a R^b relation
(:class:`ZR`, Marshall-Palmer by default). The original quantity and the relation used are
kept as attributes of ``reflectivity`` (``source_quantity``, ``source_units``, ``zr_a``,
``zr_b``, and ``accumulation_minutes`` for accumulations) so products can convert back.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr

from mimcast.pipeline.cube import VARIABLE, build_cube
from mimcast.pipeline.zr import MARSHALL_PALMER, ZR, dbz_to_rate, rate_to_dbz

__all__ = [
    "MARSHALL_PALMER",
    "ZR",
    "ReaderError",
    "crs_from_proj",
    "dbz_to_rate",
    "frame",
    "parse_time",
    "rate_to_dbz",
    "text",
]


#: The first bytes of every HDF5 file (ODIM_H5, KNMI HDF5, NetCDF4).
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class ReaderError(ValueError):
    """A file cannot be read as the requested format; the message names file and problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


def frame(
    path: str | Path,
    dbz: np.ndarray,
    time: datetime | np.datetime64,
    x: np.ndarray,
    y: np.ndarray,
    crs: pyproj.CRS | str,
    *,
    quantity: str,
    units: str,
    zr: ZR | None = None,
    accumulation_minutes: float | None = None,
    institution: str | None = None,
) -> xr.Dataset:
    """Return a one-time-step cube for ``dbz`` ``(y, x)``, with provenance attributes."""
    dbz = np.asarray(dbz, dtype=np.float32)
    if dbz.shape != (len(y), len(x)):
        raise ReaderError(path, f"data shape {dbz.shape} does not match the grid {len(y)}x{len(x)}")
    ds = build_cube(dbz[None], [np.datetime64(time, "ns")], x, y, crs, source=str(Path(path).name))
    attrs = ds[VARIABLE].attrs
    attrs["source_quantity"] = quantity
    attrs["source_units"] = units
    if zr is not None:
        attrs["zr_a"], attrs["zr_b"] = float(zr.a), float(zr.b)
    if accumulation_minutes is not None:
        attrs["accumulation_minutes"] = float(accumulation_minutes)
    if institution:
        ds.attrs["institution"] = institution
    return ds


def parse_time(path: str | Path, text: str, fmt: str) -> datetime:
    """Parse ``text`` with ``fmt`` or raise a :class:`ReaderError` naming the file."""
    try:
        return datetime.strptime(text.strip(), fmt)
    except ValueError as err:
        raise ReaderError(path, f"time {text!r} does not match {fmt!r}") from err


def crs_from_proj(path: str | Path, projdef: str) -> pyproj.CRS:
    """Return the CRS of a PROJ string or raise a :class:`ReaderError` naming the file."""
    if not projdef or not projdef.strip():
        raise ReaderError(path, "missing projection (empty projection definition)")
    try:
        return pyproj.CRS.from_proj4(projdef) if "+proj" in projdef else pyproj.CRS(projdef)
    except pyproj.exceptions.CRSError as err:
        raise ReaderError(path, f"projection {projdef!r} not understood: {err}") from err


def text(value) -> str:
    """Decode an HDF5 string attribute (bytes, numpy bytes or 1-element array)."""
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else b""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("ascii", errors="replace").rstrip("\x00")
    return str(value)
