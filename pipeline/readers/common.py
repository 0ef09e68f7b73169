"""Shared pieces of the readers: errors, the Z-R relation, and building a one-frame cube.

Every reader returns one time step under the cube contract (:mod:`pipeline.cube`). Rain
rates and accumulations become reflectivity through a configurable Z = a R^b relation
(:class:`ZR`, Marshall-Palmer by default). The original quantity and the relation used are
kept as attributes of ``reflectivity`` (``source_quantity``, ``source_units``, ``zr_a``,
``zr_b``, and ``accumulation_minutes`` for accumulations) so products can convert back.
"""

from __future__ import annotations

import gzip
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr

from mimcast.pipeline.cube import VARIABLE, build_cube
from mimcast.pipeline.zr import MARSHALL_PALMER, ZR, dbz_to_rate, rate_to_dbz

__all__ = [
    "MARSHALL_PALMER",
    "MAX_PIXELS",
    "ZR",
    "ReaderError",
    "check_grid_size",
    "check_image_shape",
    "check_time",
    "crs_from_proj",
    "dbz_to_rate",
    "frame",
    "parse_time",
    "rate_to_dbz",
    "read_bounded",
    "text",
]


#: The first bytes of every HDF5 file (ODIM_H5, KNMI HDF5, NetCDF4).
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


#: The largest frame a reader decodes: 50 million pixels (MRMS CONUS, the largest real
#: composite we know, is 3500 x 7000 = 24.5 million). A header declaring more is refused
#: before anything is allocated, so a hostile file cannot exhaust memory.
MAX_PIXELS = 50_000_000

#: Plausible radar times: digital composites start in the 1980s; a file may run ahead of
#: the clock by at most a day. Anything else is a wrong clock or a damaged header.
EARLIEST_TIME = np.datetime64("1980-01-01T00:00:00", "s")
FUTURE_SLACK = timedelta(days=1)


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
    when = check_time(path, time)
    dbz = np.asarray(dbz, dtype=np.float32)
    if dbz.shape != (len(y), len(x)):
        raise ReaderError(path, f"data shape {dbz.shape} does not match the grid {len(y)}x{len(x)}")
    dbz[np.isinf(dbz)] = np.nan  # +-inf (a rate of 0 or infinity, bad floats) is no data
    ds = build_cube(dbz[None], [when], x, y, crs, source=str(Path(path).name))
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


def check_time(path: str | Path, time: datetime | np.datetime64) -> np.datetime64:
    """Return ``time`` as ``datetime64[ns]`` if plausible for radar, else raise ReaderError.

    The check happens before the conversion to nanoseconds, whose range (1678..2262) would
    otherwise wrap a year-2500 time silently into 1915.
    """
    if isinstance(time, datetime):
        if time.tzinfo is not None:
            time = time.astimezone(UTC).replace(tzinfo=None)
        when = np.datetime64(time, "s")
    else:
        when = np.datetime64(time)
        if np.isnat(when):
            raise ReaderError(path, "time is missing (NaT)")
    latest = np.datetime64(datetime.now(UTC).replace(tzinfo=None) + FUTURE_SLACK, "s")
    if when < EARLIEST_TIME or when > latest:
        raise ReaderError(
            path, f"time {np.datetime64(when, 's')} is implausible for a radar composite "
            f"(accepted {EARLIEST_TIME} .. one day from now); wrong clock or damaged header?"
        )  # fmt: skip
    return when.astype("datetime64[ns]")


def check_image_shape(path: str | Path, shape: tuple[int, ...], name: str = "data") -> None:
    """Refuse a declared dataset that is not a 2-D image of an acceptable size."""
    if len(shape) != 2:
        raise ReaderError(path, f"{name} has shape {shape}, expected a 2-D image")
    check_grid_size(path, *shape)


def check_grid_size(path: str | Path, ny: int, nx: int) -> None:
    """Refuse a declared grid that is empty or larger than :data:`MAX_PIXELS`."""
    if ny < 1 or nx < 1:
        raise ReaderError(path, f"declared grid {ny}x{nx} is empty")
    if ny * nx > MAX_PIXELS:
        raise ReaderError(
            path, f"declared grid {ny}x{nx} ({ny * nx / 1e6:.0f} million pixels) exceeds the "
            f"limit of {MAX_PIXELS / 1e6:.0f} million; damaged or hostile header?"
        )  # fmt: skip


def is_gzip(path: str | Path) -> bool:
    """Return whether ``path`` starts with the gzip magic."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_bounded(path: str | Path, limit: int) -> bytes:
    """Return at most ``limit`` bytes of a file, gunzipped if gzip; refuse anything longer.

    A decompression bomb stops at ``limit + 1`` bytes instead of filling memory.
    """
    try:
        with (gzip.open if is_gzip(path) else open)(path, "rb") as fh:
            data = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise ReaderError(path, f"cannot decompress/read ({err}); truncated?") from err
    if len(data) > limit:
        raise ReaderError(
            path, f"more than {limit} bytes (decompressed); a frame of this format is smaller: "
            "trailing garbage or a decompression bomb"
        )  # fmt: skip
    return data


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
