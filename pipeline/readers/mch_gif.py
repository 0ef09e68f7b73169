"""MeteoSwiss AQC GIF composites: palette codes to values on the Swiss grid.

The GIF holds 8-bit codes on the 710 x 640 km CCS4 domain of the Swiss grid (CH1903/LV03,
1 km; the georeferencing is not in the file). MeteoSwiss' 8-bit coding: code ``i`` stands for
reflectivity (i - 71.5) / 2 dBZ, i.e. rain rate (Z / 316)^(1/1.5) mm/h; codes 0-1 and
251-254 mean no precipitation, 255 no data. The time stamp comes from the file name
(``AQC<yy><doy><hh><mm>...``): GIF has no field for it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from mimcast.pipeline.cube import regular_grid
from mimcast.pipeline.readers.common import (
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    check_grid_size,
    frame,
    rate_to_dbz,
)

CRS = "EPSG:21781"  # CH1903 / LV03
LEFT, TOP, PIXEL = 255000.0, 480000.0, 1000.0
MCH_ZR = ZR(a=316.0, b=1.5)


def code_to_rate(codes: np.ndarray) -> np.ndarray:
    """Return rain rate (mm/h) for MeteoSwiss 8-bit codes (NaN for no data)."""
    codes = codes.astype(np.int64)
    rate = (10.0 ** ((codes - 71.5) / 20.0) / MCH_ZR.a) ** (1.0 / MCH_ZR.b)
    rate[(codes < 2) | ((codes > 250) & (codes < 255))] = 0.0
    rate[codes == 255] = np.nan
    return rate


def file_time(path: str | Path) -> datetime:
    """Return the nominal time from a MeteoSwiss name such as ``AQC151351545F_00005.801.gif``."""
    name = Path(path).name
    try:
        year, doy, hh, mm = int(name[3:5]), int(name[5:8]), int(name[8:10]), int(name[10:12])
    except ValueError as err:
        raise ReaderError(path, "file name does not carry a MeteoSwiss time stamp") from err
    return datetime(2000 + year, 1, 1, hh, mm) + timedelta(days=doy - 1)


def read_mch_gif(path: str | Path, *, zr: ZR = MARSHALL_PALMER):
    """Read a MeteoSwiss AQC GIF as a one-frame cube (dBZ)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode != "P":
                raise ReaderError(path, f"GIF mode {img.mode!r}, expected palette codes ('P')")
            check_grid_size(path, img.height, img.width)  # before decoding
            codes = np.asarray(img)
    except Image.DecompressionBombError as err:
        raise ReaderError(path, f"declared image too large ({err})") from err
    except (OSError, UnidentifiedImageError) as err:
        raise ReaderError(path, f"not a readable GIF ({err}); truncated?") from err
    ny, nx = codes.shape
    x, y = regular_grid(LEFT, TOP, PIXEL, PIXEL, nx, ny)
    return frame(
        path, rate_to_dbz(code_to_rate(codes), zr), file_time(path), x, y, CRS,
        quantity="RATE", units="mm h-1", zr=zr, institution="MeteoSwiss",
    )  # fmt: skip


def guess_can_open(head: bytes, path: Path) -> bool:
    """GIF87a / GIF89a."""
    return head.startswith((b"GIF87a", b"GIF89a"))
