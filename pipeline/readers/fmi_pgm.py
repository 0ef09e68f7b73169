"""FMI PGM composites (optionally gzipped): 8-bit dBZ, projection in the header comments.

The header comments carry the stereographic projection (``centrallongitude``,
``centrallatitude``, ``truelatitude``), the lon/lat of the bottom-left and top-right corners,
``metersperpixel_x``/``_y`` and ``obstime``. Values: dBZ = (v - 64) / 2; 255 is nodata. FMI
uses a sphere of radius 6371288 m.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyproj

from mimcast.pipeline.cube import NO_ECHO_DBZ, regular_grid
from mimcast.pipeline.readers.common import ReaderError, crs_from_proj, frame, parse_time

SPHERE_RADIUS = 6371288.0


def _open(path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_header(path: str | Path) -> tuple[dict, int, int, int, bytes]:
    """Return ``(comments, width, height, maxval, pixel bytes)`` of a binary PGM (P5)."""
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ReaderError(path, f"cannot decompress/read ({err}); truncated?") from err
    if not raw.startswith(b"P5"):
        raise ReaderError(path, "not a binary PGM (no P5 magic)")
    comments: dict[str, list[str]] = {}
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise ReaderError(path, "PGM header not terminated")
        line = raw[pos:nl].decode("ascii", errors="replace").strip()
        pos = nl + 1
        if line.startswith("#"):
            parts = line[1:].split()
            if parts:
                comments[parts[0]] = parts[1:]
        elif line:
            fields.extend(int(v) for v in line.split())
    width, height, maxval = fields[:3]
    return comments, width, height, maxval, raw[pos:]


def read_fmi_pgm(path: str | Path, **_ignored):
    """Read an FMI PGM composite as a one-frame cube (dBZ)."""
    comments, width, height, maxval, body = read_header(path)
    if maxval > 255:
        raise ReaderError(path, f"16-bit PGM (maxval {maxval}) is not an FMI dBZ composite")
    if len(body) < width * height:
        raise ReaderError(path, f"{len(body)} pixel bytes, expected {width * height} (truncated)")
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
