"""Radar readers: one module per archive format, each owning its decoding and its detection.

A reader module has ``read_<format>(path, *, zr=...) -> xr.Dataset`` (one time step under the
cube contract) and ``guess_can_open(head, path) -> bool`` (``head``: the first 64 bytes,
after gunzipping a gzip file), as xarray's backends do. :func:`get_reader` maps a format
name to its reader (an unknown name raises ``ValueError`` listing the known ones),
:func:`detect_format` asks each reader in turn whether it can open a file (by content, never
by extension), and :func:`read` does both.

Another package adds a format without editing mimcast through the ``mimcast.readers`` entry
point group: the entry point names a module (or object) with ``read`` and ``guess_can_open``.
Plugins are asked before the built-in readers.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import xarray as xr

from mimcast.pipeline.cube import VARIABLE
from mimcast.pipeline.readers import (
    cf_netcdf,
    fmi_pgm,
    knmi_hdf5,
    mch_gif,
    mrms_grib2,
    odim,
    radolan,
)
from mimcast.pipeline.readers.common import (
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    check_time,
    dbz_to_rate,
    rate_to_dbz,
)

__all__ = [
    "MARSHALL_PALMER",
    "ZR",
    "Reader",
    "ReaderError",
    "dbz_to_rate",
    "detect_format",
    "get_reader",
    "list_readers",
    "rate_to_dbz",
    "read",
]


@dataclass(frozen=True)
class Reader:
    """A format: its decoder and its detector."""

    name: str
    read: Callable[..., xr.Dataset]
    guess_can_open: Callable[[bytes, Path], bool]


# detection order: the specific HDF5 layouts before NetCDF4, which claims any HDF5 left
_BUILTIN = (
    Reader("odim", odim.read_odim, odim.guess_can_open),
    Reader("knmi-hdf5", knmi_hdf5.read_knmi_hdf5, knmi_hdf5.guess_can_open),
    Reader("cf-netcdf", cf_netcdf.read_cf_netcdf, cf_netcdf.guess_can_open),
    Reader("mrms-grib2", mrms_grib2.read_mrms_grib2, mrms_grib2.guess_can_open),
    Reader("radolan", radolan.read_radolan, radolan.guess_can_open),
    Reader("fmi-pgm", fmi_pgm.read_fmi_pgm, fmi_pgm.guess_can_open),
    Reader("mch-gif", mch_gif.read_mch_gif, mch_gif.guess_can_open),
)


@functools.cache
def _readers() -> tuple[Reader, ...]:
    plugins = []
    for ep in entry_points(group="mimcast.readers"):
        obj = ep.load()
        plugins.append(Reader(ep.name, obj.read, obj.guess_can_open))
    return (*plugins, *_BUILTIN)


def list_readers() -> list[str]:
    """Return the known format names."""
    return sorted(r.name for r in _readers())


def get_reader(name: str) -> Callable[..., xr.Dataset]:
    """Return the reader for format ``name``; an unknown name raises ``ValueError``."""
    for reader in _readers():
        if reader.name == name:
            return reader.read
    raise ValueError(
        f"unknown radar format {name!r}; known formats: {', '.join(list_readers())} (or 'auto')"
    )


def detect_format(path: str | Path) -> str:
    """Return the format name of ``path`` from its content.

    Raises
    ------
    ReaderError
        When no reader recognises the content.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as err:
        raise ReaderError(path, f"cannot open ({err})") from err
    if not head:
        raise ReaderError(path, "empty file")
    gzipped = head[:2] == b"\x1f\x8b"
    if gzipped:
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(64)
        except (OSError, EOFError) as err:
            raise ReaderError(path, f"gzip stream unreadable ({err})") from err
    for reader in _readers():
        try:
            if reader.guess_can_open(head, path):
                return reader.name
        except OSError as err:  # a damaged container: say so rather than "unknown"
            raise ReaderError(path, f"file unreadable (truncated or corrupt?): {err}") from err
    what = "gzip content" if gzipped else "first bytes"
    raise ReaderError(path, f"unknown format ({what} {head[:8]!r})")


def read(path: str | Path, format: str = "auto", *, zr: ZR = MARSHALL_PALMER) -> xr.Dataset:
    """Read one radar file as a one-frame cube; ``format="auto"`` detects it by content."""
    name = detect_format(path) if format == "auto" else format
    reader = get_reader(name)
    ds = reader(path, zr=zr)
    # the same checks for plugins as frame() makes for the built-in readers
    check_time(path, ds.time.values[0])
    values = ds[VARIABLE].values
    if np.isinf(values).any():
        ds[VARIABLE] = ds[VARIABLE].where(np.isfinite(values))
    return ds
