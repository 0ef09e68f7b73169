"""MRMS PrecipRate GRIB2 on its regular latitude/longitude grid, via ecCodes.

MRMS uses local tables (discipline 209), so messages are read by their grid and values, not
by parameter name. Values are rain rates in mm/h; negative values (-3: no coverage) are
nodata, 0 is no rain. The regular 0.01 degree grid is expressed, without resampling, in the
equidistant cylindrical projection on the MRMS sphere (R = 6371229 m): x = R lon, y = R lat,
both regular, in metres, so the cube contract holds and every pixel keeps its exact
lat/lon.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimcast.pipeline.readers.common import (
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    check_grid_size,
    frame,
    rate_to_dbz,
)

EARTH_RADIUS = 6371229.0
CRS = f"+proj=eqc +lat_ts=0 +lat_0=0 +lon_0=0 +x_0=0 +y_0=0 +R={EARTH_RADIUS:.0f} +units=m +no_defs"
METRES_PER_DEGREE = EARTH_RADIUS * np.pi / 180.0


def read_mrms_grib2(path: str | Path, *, zr: ZR = MARSHALL_PALMER):
    """Read the first message of an MRMS GRIB2 file as a one-frame cube (dBZ)."""
    import eccodes

    try:
        with open(path, "rb") as fh:
            handle = eccodes.codes_grib_new_from_file(fh)
            if handle is None:
                raise ReaderError(path, "no GRIB message in file")
            try:
                get = lambda key: eccodes.codes_get(handle, key)  # noqa: E731
                if get("gridType") != "regular_ll":
                    raise ReaderError(path, f"grid type {get('gridType')!r}, expected regular_ll")
                ni, nj = int(get("Ni")), int(get("Nj"))
                lat0 = float(get("latitudeOfFirstGridPointInDegrees"))
                lon0 = float(get("longitudeOfFirstGridPointInDegrees"))
                dlat = float(get("jDirectionIncrementInDegrees"))
                dlon = float(get("iDirectionIncrementInDegrees"))
                north_up = int(get("jScansPositively")) == 0
                date, hhmm = int(get("dataDate")), int(get("dataTime"))
                check_grid_size(path, nj, ni)  # before decoding the values
                values = eccodes.codes_get_values(handle)
                missing = float(get("missingValue"))
            finally:
                eccodes.codes_release(handle)
    except ReaderError:
        raise
    except (OSError, eccodes.CodesInternalError, eccodes.GribInternalError) as err:
        raise ReaderError(path, f"not a readable GRIB2 file ({err})") from err
    if values.size != ni * nj:
        raise ReaderError(path, f"{values.size} values for a {nj}x{ni} grid (truncated?)")
    rate = values.reshape(nj, ni).astype(np.float64)
    rate[(rate < 0) | (rate == missing)] = np.nan
    lon0 = lon0 - 360.0 if lon0 > 180.0 else lon0
    x = (lon0 + dlon * np.arange(ni)) * METRES_PER_DEGREE
    step = -dlat if north_up else dlat
    y = (lat0 + step * np.arange(nj)) * METRES_PER_DEGREE
    try:  # minutes: a nanosecond time would wrap silently outside 1678..2262
        time = np.datetime64(f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}T"
                             f"{hhmm // 100:02d}:{hhmm % 100:02d}", "m")  # fmt: skip
    except ValueError as err:
        raise ReaderError(path, f"dataDate {date} / dataTime {hhmm} is not a time") from err
    return frame(
        path, rate_to_dbz(rate, zr), time, x, y, CRS, quantity="RATE", units="mm h-1", zr=zr,
        institution="NOAA/NSSL MRMS",
    )  # fmt: skip


def guess_can_open(head: bytes, path: Path) -> bool:
    """GRIB (edition 2 is checked when decoding)."""
    return head.startswith(b"GRIB")
