"""FMI PGM composites (optionally gzipped): 8-bit dBZ, projection in the header comments.

The header comments carry the stereographic projection (``centrallongitude``,
``centrallatitude``, ``truelatitude``), the lon/lat of the bottom-left and top-right corners,
``metersperpixel_x``/``_y`` and ``obstime``. Values: dBZ = (v - 64) / 2; 255 is nodata. FMI
uses a sphere of radius 6371288 m.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pyproj

from mimcast.pipeline.cube import NO_ECHO_DBZ, regular_grid
from mimcast.pipeline.readers.common import (
    ReaderError,
    check_grid_size,
    crs_from_proj,
    frame,
    is_gzip,
    parse_time,
)

SPHERE_RADIUS = 6371288.0


#: PGM header bytes read before the size is known (FMI headers are about 1 kB)
MAX_HEADER = 65536


def read_header(path: str | Path) -> tuple[dict, int, int, int, bytes]:
    """Return ``(comments, width, height, maxval, pixel bytes)`` of a binary PGM (P5).

    The size comes from the header and is checked before the pixels are read; a file
    longer than the header declares (trailing garbage, a decompression bomb) is refused.
    """
    try:
        fh = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
        with fh:
            raw = fh.read(MAX_HEADER)
            comments, width, height, maxval, pos = _parse_header(path, raw)
            check_grid_size(path, height, width)
            if maxval > 255:
                raise ReaderError(path, f"16-bit PGM (maxval {maxval}) is not an FMI dBZ composite")
            expected = width * height
            body = raw[pos:] + fh.read(max(expected - (len(raw) - pos), 0) + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise ReaderError(path, f"cannot decompress/read ({err}); truncated?") from err
    if len(body) < expected:
        raise ReaderError(path, f"{len(body)} pixel bytes, expected {expected} (truncated)")
    if len(body) > expected:
        raise ReaderError(path, f"data after the {expected} pixel bytes the header declares "
                          "(trailing garbage)")  # fmt: skip
    return comments, width, height, maxval, body


def _parse_header(path, raw: bytes) -> tuple[dict, int, int, int, int]:
    if not raw.startswith(b"P5"):
        raise ReaderError(path, "not a binary PGM (no P5 magic)")
    comments: dict[str, list[str]] = {}
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise ReaderError(path, f"PGM header not terminated within {MAX_HEADER} bytes")
        line = raw[pos:nl].decode("ascii", errors="replace").strip()
        pos = nl + 1
        if line.startswith("#"):
            parts = line[1:].split()
            if parts:
                comments[parts[0]] = parts[1:]
        elif line:
            try:
                fields.extend(int(v) for v in line.split())
            except ValueError as err:
                raise ReaderError(path, f"PGM header field not a number: {line[:40]!r}") from err
    width, height, maxval = fields[:3]
    return comments, width, height, maxval, pos


def read_fmi_pgm(path: str | Path, **_ignored):
    """Read an FMI PGM composite as a one-frame cube (dBZ)."""
    comments, width, height, _, body = read_header(path)
    kind = (comments.get("type") or [""])[0]
    if kind != "stereographic":
        raise ReaderError(path, f"missing projection: header type {kind!r}, expected stereographic")
    try:
        lon0 = comments["centrallongitude"][0]
        lat0 = comments["centrallatitude"][0]
        lat_ts = comments["truelatitude"][0]
        ll = [float(v) for v in comments["bottomleft"]]
        ur = [float(v) for v in comments["topright"]]
        obstime = comments["obstime"][0]
    except (KeyError, IndexError, ValueError) as err:
        raise ReaderError(
            path, f"header comment {err} missing: projection or time unknown"
        ) from err
    crs = crs_from_proj(
        path,
        f"+proj=stere +lon_0={lon0} +lat_0={lat0} +lat_ts={lat_ts} +R={SPHERE_RADIUS:.0f} "
        "+x_0=0 +y_0=0 +units=m +no_defs",
    )
    to_xy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    left, bottom = to_xy.transform(*ll)
    right, top = to_xy.transform(*ur)
    dx, dy = (right - left) / width, (top - bottom) / height
    x, y = regular_grid(left, top, dx, dy, width, height)
    raw = np.frombuffer(body[: width * height], dtype=np.uint8).reshape(height, width)
    dbz = (raw.astype(np.float32) - 64.0) / 2.0
    dbz = np.maximum(dbz, NO_ECHO_DBZ)
    dbz[raw == 255] = np.nan
    time = parse_time(path, obstime, "%Y%m%d%H%M")
    return frame(path, dbz, time, x, y, crs, quantity="DBZH", units="dBZ",
                 institution="Finnish Meteorological Institute")  # fmt: skip


def guess_can_open(head: bytes, path: Path) -> bool:
    """Binary PGM (``P5``), gzip or plain."""
    return head.startswith(b"P5")
