"""Radar readers: one module per archive format behind a registry.

``read_<format>(path) -> xr.Dataset`` returns one time step under the cube contract.
:func:`get_reader` maps a format name to its reader (an unknown name raises ``ValueError``
listing the known ones), :func:`detect_format` recognises a file by its content (magic
bytes and structure, not the extension), and :func:`read` does both.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import xarray as xr

from pipeline.readers.cf_netcdf import read_cf_netcdf
from pipeline.readers.common import MARSHALL_PALMER, ZR, ReaderError, dbz_to_rate, rate_to_dbz
from pipeline.readers.fmi_pgm import read_fmi_pgm
from pipeline.readers.knmi_hdf5 import read_knmi_hdf5
from pipeline.readers.mch_gif import read_mch_gif
from pipeline.readers.mrms_grib2 import read_mrms_grib2
from pipeline.readers.odim import read_odim
from pipeline.readers.radolan import read_radolan

__all__ = [
    "MARSHALL_PALMER",
    "ZR",
    "ReaderError",
    "dbz_to_rate",
    "detect_format",
    "get_reader",
    "list_readers",
    "rate_to_dbz",
    "read",
]

_READERS: dict[str, Callable[..., xr.Dataset]] = {
    "odim": read_odim,
    "cf-netcdf": read_cf_netcdf,
    "mrms-grib2": read_mrms_grib2,
    "radolan": read_radolan,
    "knmi-hdf5": read_knmi_hdf5,
    "fmi-pgm": read_fmi_pgm,
    "mch-gif": read_mch_gif,
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def list_readers() -> list[str]:
    """Return the known format names."""
    return sorted(_READERS)


def get_reader(name: str) -> Callable[..., xr.Dataset]:
    """Return the reader for format ``name``; an unknown name raises ``ValueError``."""
    try:
        return _READERS[name]
    except KeyError:
        raise ValueError(
            f"unknown radar format {name!r}; known formats: {', '.join(list_readers())} (or 'auto')"
        ) from None


def _hdf5_kind(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "Conventions" in f.attrs and b"ODIM" in bytes(f.attrs["Conventions"]):
                return "odim"
            if "what" in f and "where" in f and "dataset1" in f:
                return "odim"
            if "overview" in f and "image1" in f:
                return "knmi-hdf5"
            return "cf-netcdf"  # NetCDF4 is HDF5 underneath
    except OSError as err:
        raise ReaderError(path, f"HDF5 file unreadable (truncated or corrupt?): {err}") from err


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
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(64)
        except (OSError, EOFError) as err:
            raise ReaderError(path, f"gzip stream unreadable ({err})") from err
        if head.startswith(b"P5"):
            return "fmi-pgm"
        if len(head) > 17 and head[2:8].isdigit() and head[8:13] == b"10000":
            return "radolan"
        raise ReaderError(path, "unknown format: gzip content is neither RADOLAN nor PGM")
    if head.startswith(HDF5_MAGIC):
        return _hdf5_kind(path)
    if head.startswith((b"CDF\x01", b"CDF\x02", b"CDF\x05")):
        return "cf-netcdf"
    if head.startswith(b"GRIB"):
        return "mrms-grib2"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "mch-gif"
    if head.startswith(b"P5"):
        return "fmi-pgm"
    if len(head) > 17 and head[2:8].isdigit() and head[8:13] == b"10000":
        return "radolan"
    raise ReaderError(path, f"unknown format (first bytes {head[:8]!r})")


def read(path: str | Path, format: str = "auto", *, zr: ZR = MARSHALL_PALMER) -> xr.Dataset:
    """Read one radar file as a one-frame cube; ``format="auto"`` detects it by content."""
    name = detect_format(path) if format == "auto" else format
    reader = get_reader(name)
    return reader(path, zr=zr)
