"""ODIM_H5 composites (object COMP/IMAGE): DBZH, TH, RATE, ACRR.

``gain``/``offset``/``nodata``/``undetect`` are taken from the data-level ``what`` group,
else the dataset-level one (older OPERA layout), else defaults (1, 0, none, none); NaN in
float data is nodata too (RMI). The grid comes from ``where/projdef`` with ``xscale``/
``yscale`` and the upper-left corner: ``UL_x``/``UL_y`` where the file has them, otherwise
``UL_lon``/``UL_lat`` projected with ``projdef``. The time is the nominal ``what/date`` and
``what/time``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyproj

from mimcast.pipeline.cube import NO_ECHO_DBZ, regular_grid
from mimcast.pipeline.readers.common import (
    HDF5_MAGIC,
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    check_image_shape,
    crs_from_proj,
    frame,
    parse_time,
    rate_to_dbz,
    text,
)

QUANTITIES = ("DBZH", "TH", "RATE", "ACRR")
UNITS = {"DBZH": "dBZ", "TH": "dBZ", "RATE": "mm h-1", "ACRR": "mm"}


def _attrs(group) -> dict:
    return dict(group.attrs) if group is not None else {}


def _find_data(f: h5py.File, path, quantity: str | None):
    """Return ``(data_group, coding)`` of the first dataset/data with a wanted quantity."""
    wanted = (quantity,) if quantity else QUANTITIES
    found = []
    for ds_name in sorted((k for k in f if k.startswith("dataset")), key=lambda k: int(k[7:])):
        dset = f[ds_name]
        ds_what = _attrs(dset.get("what"))
        for d_name in sorted(
            (k for k in dset if k.startswith("data") and k[4:].isdigit()), key=lambda k: int(k[4:])
        ):
            data_what = _attrs(dset[d_name].get("what"))
            coding = {**ds_what, **data_what}
            q = text(coding.get("quantity", ""))
            found.append(q)
            if q in wanted and "data" in dset[d_name]:
                return dset, dset[d_name], q, coding
    raise ReaderError(
        path,
        f"no ODIM dataset with quantity {' or '.join(wanted)} (found: {found or 'none'})",
    )


def read_odim(path: str | Path, *, zr: ZR = MARSHALL_PALMER, quantity: str | None = None):
    """Read one ODIM_H5 composite as a one-frame cube (dBZ).

    Parameters
    ----------
    path
        The ``.h5``/``.hdf`` file.
    zr
        Z-R relation for RATE and ACRR.
    quantity
        Force a quantity (DBZH, TH, RATE, ACRR); default: the first present in that order.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ReaderError(path, f"not a readable HDF5 file ({err})") from err
    with f:
        what, where = _attrs(f.get("what")), _attrs(f.get("where"))
        obj = text(what.get("object", ""))
        if obj not in ("COMP", "IMAGE"):
            raise ReaderError(path, f"ODIM object {obj!r} is not a composite (COMP/IMAGE)")
        dset, group, q, coding = _find_data(f, path, quantity)
        try:
            check_image_shape(path, group["data"].shape)  # before reading: the header may lie
            raw = group["data"][()]
        except (OSError, KeyError) as err:
            raise ReaderError(path, f"data unreadable (truncated or corrupt?): {err}") from err
        ds_where = _attrs(dset.get("where"))
        geo = {**where, **ds_where}
        projdef = text(where.get("projdef", ds_where.get("projdef", "")))
        crs = crs_from_proj(path, projdef)
        date = text(what.get("date", ""))
        hhmmss = text(what.get("time", ""))
    time = parse_time(path, date + hhmmss, "%Y%m%d%H%M%S")

    ny, nx = raw.shape
    try:
        dx, dy = float(geo["xscale"]), float(geo["yscale"])
    except KeyError as err:
        raise ReaderError(path, f"where/{err.args[0]} missing: grid spacing unknown") from err
    if "UL_x" in geo and "UL_y" in geo:
        ul_x, ul_y = float(geo["UL_x"]), float(geo["UL_y"])
    elif "UL_lon" in geo and "UL_lat" in geo:
        to_xy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        ul_x, ul_y = to_xy.transform(float(geo["UL_lon"]), float(geo["UL_lat"]))
        # lat/lon corners carry projection round-off: snap to the millimetre
        ul_x, ul_y = round(ul_x, 3), round(ul_y, 3)
    else:
        raise ReaderError(path, "where has neither UL_x/UL_y nor UL_lon/UL_lat: grid unknown")
    x, y = regular_grid(ul_x, ul_y, dx, dy, nx, ny)

    gain = float(coding.get("gain", 1.0))
    offset = float(coding.get("offset", 0.0))
    values = raw.astype(np.float64) * gain + offset
    nodata = np.isnan(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
    if "nodata" in coding:
        nodata |= raw == coding["nodata"]
    undetect = raw == coding["undetect"] if "undetect" in coding else np.zeros(raw.shape, bool)

    if q in ("DBZH", "TH"):
        dbz = values.astype(np.float32)
        dbz[undetect] = NO_ECHO_DBZ
        used_zr, minutes = None, None
    else:
        rate = values
        minutes = None
        if q == "ACRR":
            minutes = _accumulation_minutes(dset, path)
            rate = values * 60.0 / minutes
        rate[undetect] = 0.0
        dbz = rate_to_dbz(rate, zr)
        used_zr = zr
    dbz[nodata] = np.nan
    return frame(
        path, dbz, time, x, y, crs, quantity=q, units=UNITS[q], zr=used_zr,
        accumulation_minutes=minutes,
    )  # fmt: skip


def _accumulation_minutes(dset, path) -> float:
    what = _attrs(dset.get("what"))
    try:
        start = parse_time(path, text(what["startdate"]) + text(what["starttime"]), "%Y%m%d%H%M%S")
        end = parse_time(path, text(what["enddate"]) + text(what["endtime"]), "%Y%m%d%H%M%S")
    except KeyError as err:
        raise ReaderError(path, "ACRR without start/end time: accumulation period unknown") from err
    minutes = (end - start).total_seconds() / 60.0
    if minutes <= 0:
        raise ReaderError(path, f"ACRR accumulation period {minutes} min is not positive")
    return minutes


def guess_can_open(head: bytes, path: Path) -> bool:
    """HDF5 with ODIM's ``Conventions`` attribute, or its what/where/dataset1 layout."""
    if not head.startswith(HDF5_MAGIC):
        return False
    with h5py.File(path, "r") as f:
        if "Conventions" in f.attrs and b"ODIM" in bytes(f.attrs["Conventions"]):
            return True
        return "what" in f and "where" in f and "dataset1" in f
