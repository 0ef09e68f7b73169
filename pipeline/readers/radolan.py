"""DWD RADOLAN binary composites (optionally gzipped): RY, RW, RX, EX and relatives.

The ASCII header ends with ETX (0x03): product (2 chars), DDhhmm, radar id, MMYY, then
tokens ``BY`` (file size), ``VS``, ``SW``, ``PR`` (precision, e.g. ``E-02``), ``INT``
(interval, minutes), ``GP`` (rows x cols), ``MS`` (radar list). RX/EX/WX hold one byte per
pixel in RVP6 units (dBZ = v/2 - 32.5; 249 clutter, 250 nodata). Rain products hold
little-endian uint16: 12 value bits times the precision (mm per interval), flags 0x1000
(interpolated), 0x2000 (nodata), 0x4000 (negative), 0x8000 (clutter). Rows run from south to
north. The grid is DWD's polar stereographic projection on a sphere of radius 6370.04 km,
true at 60 N, centred on 10 E, with the lower-left corner 450/450 km (900x900), 370/550 km
(1100x900), 470/600 km (1200x1100) or 600/800 km (1500x1400) west/south of 9 E 51 N.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyproj

from mimcast.pipeline.cube import NO_ECHO_DBZ
from mimcast.pipeline.readers.common import (
    MARSHALL_PALMER,
    ZR,
    ReaderError,
    frame,
    parse_time,
    rate_to_dbz,
    read_bounded,
)

CRS = "+proj=stere +lat_0=90 +lat_ts=60 +lon_0=10 +x_0=0 +y_0=0 +R=6370040 +units=m +no_defs"
#: (rows, cols) -> (km west of 9E 51N, km south of it) of the lower-left corner, and pixel km
GRIDS = {
    (900, 900): (450.0, 450.0, 1.0),
    (1100, 900): (370.0, 550.0, 1.0),
    (1200, 1100): (470.0, 600.0, 1.0),
    (1500, 1400): (600.0, 800.0, 1.0),
    (460, 460): (460.0, 460.0, 2.0),
}
REFLECTIVITY_PRODUCTS = ("RX", "EX", "WX")
MAX_HEADER = 1024


def read_header(path: str | Path) -> tuple[dict, bytes]:
    """Return the parsed header and the data bytes after it.

    The data must be exactly what the header declares (``GP`` rows x cols, 1 or 2 bytes per
    pixel, and ``BY`` bytes in all where given): a longer file (trailing garbage, a
    decompression bomb) is refused without being decompressed further.
    """
    largest = max(rows * cols for rows, cols in GRIDS) * 2
    raw = read_bounded(path, MAX_HEADER + largest)
    end = raw.find(b"\x03", 0, MAX_HEADER)
    if end < 0:
        raise ReaderError(path, "no RADOLAN header (no ETX within the first 1024 bytes)")
    header = raw[:end].decode("ascii", errors="replace")
    if not re.match(r"^[A-Z%][A-Z0-9]\d{6}10000\d{4}", header):
        raise ReaderError(path, f"not a RADOLAN composite header: {header[:24]!r}")
    info = {"product": header[:2]}
    info["time"] = parse_time(path, header[2:8] + header[13:17], "%d%H%M%m%y")
    tokens = {
        "BY": r"BY\s*(\d+)", "PR": r"PR\s*E([+-]\d+)", "INT": r"INT\s*(\d+)",
        "GP": r"GP\s*(\d+)\s*x\s*(\d+)",
    }  # fmt: skip
    for key, pattern in tokens.items():
        m = re.search(pattern, header)
        if m:
            info[key] = m.groups()
    if "GP" not in info:
        raise ReaderError(path, "RADOLAN header lacks the grid size token GP")
    rows, cols = (int(v) for v in info["GP"])
    radolan_grid(path, rows, cols)  # an unknown grid is refused before anything else
    body = raw[end + 1 :]
    expected = rows * cols * (1 if info["product"] in REFLECTIVITY_PRODUCTS else 2)
    if len(body) < expected:
        raise ReaderError(path, f"{len(body)} data bytes, expected {expected} (truncated)")
    if len(body) > expected:
        raise ReaderError(
            path, f"{len(body) - expected} bytes after the {expected} data bytes the header "
            "declares (trailing garbage)"
        )  # fmt: skip
    if "BY" in info and int(info["BY"][0]) != len(raw):
        raise ReaderError(path, f"header says BY {info['BY'][0]} bytes, the file has {len(raw)}")
    return info, body


def radolan_grid(path, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Return pixel-centre x, y (metres; y increasing northwards) of a RADOLAN grid."""
    if (rows, cols) not in GRIDS:
        raise ReaderError(path, f"unknown RADOLAN grid {rows}x{cols} (known: {sorted(GRIDS)})")
    west, south, km = GRIDS[(rows, cols)]
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform(9.0, 51.0)
    left, bottom = x0 - west * 1000.0, y0 - south * 1000.0
    x = left + km * 1000.0 * (np.arange(cols) + 0.5)
    y = bottom + km * 1000.0 * (np.arange(rows) + 0.5)
    return x, y


def read_radolan(path: str | Path, *, zr: ZR = MARSHALL_PALMER):
    """Read one RADOLAN composite as a one-frame cube (dBZ)."""
    info, body = read_header(path)
    rows, cols = (int(v) for v in info["GP"])
    product = info["product"]
    x, y = radolan_grid(path, rows, cols)
    if product in REFLECTIVITY_PRODUCTS:
        raw = np.frombuffer(body[: rows * cols], dtype=np.uint8).reshape(rows, cols)
        dbz = raw.astype(np.float32) * 0.5 - 32.5
        dbz[raw <= 0] = NO_ECHO_DBZ
        dbz[(raw == 249) | (raw == 250)] = np.nan
        return frame(path, dbz, info["time"], x, y, CRS, quantity="DBZH", units="dBZ",
                     institution="Deutscher Wetterdienst")  # fmt: skip
    raw = np.frombuffer(body[: 2 * rows * cols], dtype="<u2").reshape(rows, cols)
    precision = 10.0 ** int(info.get("PR", ("0",))[0])
    minutes = float(info.get("INT", ("60",))[0])
    amount = (raw & 0x0FFF).astype(np.float64) * precision
    amount[raw & 0x4000 != 0] *= -1
    amount[(raw & 0x2000 != 0) | (raw & 0x8000 != 0)] = np.nan
    rate = amount * 60.0 / minutes
    return frame(
        path, rate_to_dbz(rate, zr), info["time"], x, y, CRS, quantity="ACRR", units="mm",
        zr=zr, accumulation_minutes=minutes, institution="Deutscher Wetterdienst",
    )  # fmt: skip


def guess_can_open(head: bytes, path: Path) -> bool:
    """RADOLAN header: product id, DDhhmm, then the radar-site code 10000 (gzip or plain)."""
    return len(head) > 17 and head[2:8].isdigit() and head[8:13] == b"10000"
