"""The radar cube: the one data contract between mimcast's stages.

Every stage hands the next an ``xr.Dataset`` that passes :func:`validate_cube`:

- dims ``(time, y, x)`` on the data variable ``reflectivity``;
- ``time``: UTC instants as timezone-naive ``datetime64``, strictly increasing, no NaT;
- ``x`` / ``y``: 1-D projected coordinates in metres of the pixel centres, regularly spaced,
  with CF ``standard_name``, ``axis``, ``units`` and ``long_name``; ``x`` increases eastwards,
  ``y`` may run either way (north-up images have ``y`` decreasing);
- ``crs``: a scalar grid-mapping variable with ``crs_wkt`` and, where CF can express the
  projection, its CF parameters (``grid_mapping_name`` ...), all produced by pyproj;
- ``reflectivity``: equivalent reflectivity factor in dBZ, ``float32``; ``NaN`` where there is
  no data (outside radar coverage, or a missing time step); :data:`NO_ECHO_DBZ` where the
  radar measured and saw no echo (ODIM's ``undetect``); CF ``standard_name``, ``units``,
  ``long_name`` and ``grid_mapping = "crs"``.

:func:`open_cube`, :func:`observed`, :func:`step_minutes` and :func:`complete_windows` are
the one way every stage opens a cube and reads its time axis. :func:`build_cube` makes such
a dataset from arrays; :func:`validate_cube` checks one and
raises :class:`CubeError`, naming the field and what was expected, at the first violation.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:  # pyproj loads on first use: a GPU trainer needs no projections
    import pyproj

#: dBZ written where the radar measured and found no echo (ODIM ``undetect``). It is the
#: lowest value of the usual 8-bit DBZH coding (offset -32 dBZ, gain 0.5 dB); defined beside
#: the Z-R relation, whose rain rate 0 it is.
from mimcast.pipeline.zr import NO_ECHO_DBZ as NO_ECHO_DBZ

#: Name of the data variable and of the grid-mapping variable.
VARIABLE = "reflectivity"
GRID_MAPPING = "crs"

X_ATTRS: dict[str, str] = {
    "standard_name": "projection_x_coordinate",
    "long_name": "x coordinate of projection (pixel centre)",
    "axis": "X",
    "units": "m",
}
Y_ATTRS: dict[str, str] = {
    "standard_name": "projection_y_coordinate",
    "long_name": "y coordinate of projection (pixel centre)",
    "axis": "Y",
    "units": "m",
}
TIME_ATTRS: dict[str, str] = {
    "standard_name": "time",
    "long_name": "nominal time of the radar composite (UTC)",
    "axis": "T",
}
REFLECTIVITY_ATTRS: dict[str, str] = {
    "standard_name": "equivalent_reflectivity_factor",
    "long_name": "equivalent reflectivity factor",
    "units": "dBZ",
    "grid_mapping": GRID_MAPPING,
}
#: Encoding for CF/NetCDF/Zarr writers: time in minutes since the epoch, UTC.
TIME_ENCODING: dict[str, str] = {
    "units": "minutes since 1970-01-01 00:00:00",
    "calendar": "standard",
}

_RELATIVE_SPACING_TOLERANCE = 1e-6

#: Store attributes of the commit protocol (see :mod:`pipeline.ingest`): the number of
#: committed frames, and who is writing (JSON) while a write is under way.
COMMITTED_ATTR = "mimcast_frames"
PENDING_ATTR = "mimcast_pending"

log = logging.getLogger("mimcast")


class CubeError(ValueError):
    """A dataset violates the radar cube contract; the message names the field."""


def crs_variable(crs: pyproj.CRS | str) -> xr.DataArray:
    """Return the CF grid-mapping variable for ``crs``.

    Parameters
    ----------
    crs
        Anything ``pyproj.CRS.from_user_input`` accepts (PROJ string, WKT, EPSG code).

    Returns
    -------
    xr.DataArray
        A scalar ``int32`` variable whose attributes are pyproj's CF parameters plus
        ``crs_wkt`` (always present, also for projections CF cannot name).
    """
    import pyproj

    wkt = pyproj.CRS.from_user_input(crs).to_wkt()
    return xr.DataArray(np.int32(0), attrs=dict(_cf_attrs(wkt)))


@functools.lru_cache(maxsize=64)
def _cf_attrs(wkt: str) -> tuple[tuple[str, Any], ...]:
    """CF grid-mapping attributes for a CRS (cached: readers call this once per frame)."""
    import pyproj

    crs = pyproj.CRS.from_wkt(wkt)
    with warnings.catch_warnings():
        # pyproj warns when a parameter has no CF name; crs_wkt below keeps all of them
        warnings.simplefilter("ignore", UserWarning)
        attrs: dict[str, Any] = dict(crs.to_cf())
    if attrs.get("grid_mapping_name") == "polar_stereographic":
        # CF requires the pole; pyproj omits it for variant B (a standard parallel given)
        parallel = float(attrs.get("standard_parallel", 90.0))
        attrs.setdefault("latitude_of_projection_origin", 90.0 if parallel >= 0 else -90.0)
    attrs["crs_wkt"] = wkt
    attrs.setdefault("spatial_ref", wkt)  # the name GDAL looks for first
    return tuple(attrs.items())


def cube_crs(ds: xr.Dataset) -> pyproj.CRS:
    """Return the CRS of a cube, rebuilt from its ``crs`` variable's ``crs_wkt``."""
    if GRID_MAPPING not in ds.variables:
        raise CubeError(f"'{GRID_MAPPING}': missing grid-mapping variable")
    import pyproj

    return pyproj.CRS.from_wkt(ds[GRID_MAPPING].attrs["crs_wkt"])


def build_cube(
    reflectivity: Any,
    times: Sequence[Any] | np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    crs: pyproj.CRS | str,
    *,
    source: str | None = None,
) -> xr.Dataset:
    """Assemble a radar cube that passes :func:`validate_cube`.

    Parameters
    ----------
    reflectivity
        Array-like ``(time, y, x)`` in dBZ (numpy or dask); cast to ``float32``.
    times
        Nominal UTC times, timezone-naive (anything ``np.datetime64`` accepts).
    x, y
        Projected pixel-centre coordinates in metres.
    crs
        The grid's projection (PROJ string, WKT, EPSG code or ``pyproj.CRS``).
    source
        Optional provenance for the global ``source`` attribute.

    Returns
    -------
    xr.Dataset
        The validated cube.
    """
    times = np.asarray(times, dtype="datetime64[ns]")
    data = reflectivity.astype(np.float32) if hasattr(reflectivity, "astype") else reflectivity
    ds = xr.Dataset(
        {VARIABLE: (("time", "y", "x"), data, dict(REFLECTIVITY_ATTRS))},
        coords={
            "time": ("time", times, dict(TIME_ATTRS)),
            "y": ("y", np.asarray(y, dtype=np.float64), dict(Y_ATTRS)),
            "x": ("x", np.asarray(x, dtype=np.float64), dict(X_ATTRS)),
            GRID_MAPPING: crs_variable(crs),
        },
        attrs={"Conventions": "CF-1.8"},
    )
    ds["time"].encoding.update(TIME_ENCODING)
    if source:
        ds.attrs["source"] = source
    return validate_cube(ds)


def _require_attrs(name: str, actual: dict[str, Any], expected: dict[str, str]) -> None:
    for key, value in expected.items():
        if key not in actual:
            raise CubeError(f"'{name}': missing attribute {key!r} (expected {value!r})")
        if str(actual[key]) != value:
            raise CubeError(f"'{name}': attribute {key!r} is {actual[key]!r}, expected {value!r}")


def _check_axis(ds: xr.Dataset, name: str, attrs: dict[str, str]) -> None:
    if name not in ds.coords:
        raise CubeError(f"'{name}': missing coordinate (projected pixel centres in metres)")
    coord = ds[name]
    if coord.dims != (name,):
        raise CubeError(f"'{name}': must be 1-D along '{name}', got dims {coord.dims}")
    if not np.issubdtype(coord.dtype, np.floating):
        raise CubeError(f"'{name}': dtype {coord.dtype}, expected a floating-point type")
    values = np.asarray(coord.values)
    if not np.all(np.isfinite(values)):
        raise CubeError(f"'{name}': contains NaN or infinite values")
    _require_attrs(name, coord.attrs, attrs)
    if values.size >= 2:
        steps = np.diff(values)
        if name == "x" and np.any(steps <= 0):
            raise CubeError("'x': must increase strictly (west to east)")
        if not (np.all(steps > 0) or np.all(steps < 0)):
            raise CubeError(f"'{name}': must be strictly monotonic")
        spread = np.abs(steps - steps[0]).max()
        if spread > _RELATIVE_SPACING_TOLERANCE * abs(steps[0]) + 1e-6:
            raise CubeError(f"'{name}': grid spacing is irregular (varies by {spread:.3g} m)")


@functools.lru_cache(maxsize=64)
def _crs_facts(wkt: str) -> tuple[bool, tuple[str, ...], str | None]:
    """Whether a CRS is projected, its axis units and CF grid-mapping name (cached)."""
    import pyproj

    crs = pyproj.CRS.from_wkt(wkt)
    units = tuple(sorted({axis.unit_name for axis in crs.axis_info}))
    return crs.is_projected, units, dict(_cf_attrs(wkt)).get("grid_mapping_name")


def validate_cube(ds: xr.Dataset, *, check_values: bool = False) -> xr.Dataset:
    """Check that ``ds`` is a radar cube and return it unchanged.

    Parameters
    ----------
    ds
        The dataset to check.
    check_values
        Also compute the data (costly for a lazy cube) and reject infinities and values
        outside the physical range [-50, 100] dBZ.

    Returns
    -------
    xr.Dataset
        ``ds`` itself, so calls can be chained.

    Raises
    ------
    CubeError
        At the first violation, naming the field and what was expected.
    """
    if not isinstance(ds, xr.Dataset):
        raise CubeError(f"cube: expected an xarray.Dataset, got {type(ds).__name__}")
    if VARIABLE not in ds.data_vars:
        raise CubeError(f"'{VARIABLE}': missing data variable (dBZ on dims (time, y, x))")
    refl = ds[VARIABLE]
    if refl.dims != ("time", "y", "x"):
        raise CubeError(f"'{VARIABLE}': dims are {refl.dims}, expected ('time', 'y', 'x')")
    if refl.dtype != np.float32:
        raise CubeError(f"'{VARIABLE}': dtype is {refl.dtype}, expected float32 (NaN = no data)")
    _require_attrs(VARIABLE, refl.attrs, REFLECTIVITY_ATTRS)

    if "time" not in ds.coords:
        raise CubeError("'time': missing coordinate (UTC datetime64)")
    time = ds["time"]
    if not np.issubdtype(time.dtype, np.datetime64):
        raise CubeError(f"'time': dtype is {time.dtype}, expected datetime64 (naive, UTC)")
    tvalues = np.asarray(time.values)
    if np.any(np.isnat(tvalues)):
        raise CubeError("'time': contains NaT")
    if tvalues.size >= 2 and np.any(np.diff(tvalues) <= np.timedelta64(0, "ns")):
        raise CubeError("'time': must increase strictly (sort and drop duplicates first)")
    _require_attrs("time", time.attrs, {"standard_name": "time"})

    _check_axis(ds, "x", X_ATTRS)
    _check_axis(ds, "y", Y_ATTRS)

    if GRID_MAPPING not in ds.variables:
        raise CubeError(f"'{GRID_MAPPING}': missing grid-mapping variable (with crs_wkt)")
    gm = ds[GRID_MAPPING]
    if gm.ndim != 0:
        raise CubeError(f"'{GRID_MAPPING}': must be a scalar variable, got dims {gm.dims}")
    if "crs_wkt" not in gm.attrs:
        raise CubeError(f"'{GRID_MAPPING}': missing attribute 'crs_wkt'")
    import pyproj

    try:
        is_projected, units, cf_name = _crs_facts(str(gm.attrs["crs_wkt"]))
    except pyproj.exceptions.CRSError as err:
        raise CubeError(f"'{GRID_MAPPING}': crs_wkt does not parse: {err}") from err
    if not is_projected:
        raise CubeError(f"'{GRID_MAPPING}': expected a projected CRS")
    if units != ("metre",):
        raise CubeError(f"'{GRID_MAPPING}': axis units are {list(units)}, expected metre")
    if cf_name and gm.attrs.get("grid_mapping_name") != cf_name:
        raise CubeError(
            f"'{GRID_MAPPING}': attribute 'grid_mapping_name' is "
            f"{gm.attrs.get('grid_mapping_name')!r}, expected {cf_name!r} (use crs_variable())"
        )

    if check_values:
        values = np.asarray(refl.values)
        finite = values[np.isfinite(values)]
        if np.isinf(values).any():
            raise CubeError(f"'{VARIABLE}': contains infinite values (use NaN for no data)")
        if finite.size and (finite.min() < -50.0 or finite.max() > 100.0):
            raise CubeError(
                f"'{VARIABLE}': values span [{finite.min():.1f}, {finite.max():.1f}] dBZ, "
                "expected within [-50, 100]; is the input rain rate or raw counts?"
            )
    return ds


def regular_grid(
    x0: float, y0: float, dx: float, dy: float, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return pixel-centre ``(x, y)`` for a north-up grid whose upper-left corner is ``(x0, y0)``.

    ``x`` increases by ``dx`` and ``y`` decreases by ``dy`` (both positive sizes in metres).
    """
    x = x0 + dx * (np.arange(width) + 0.5)
    y = y0 - dy * (np.arange(height) + 0.5)
    return x, y


# --------------------------------------------------------------------------------------------
# access: the one place that opens cubes and reads their time axis


@dataclass(frozen=True)
class StoreState:
    """Commit bookkeeping of a cube store: frames on disk, frames committed, writer if any."""

    frames: int
    committed: int
    pending: str | None

    @property
    def interrupted(self) -> bool:
        """True when a write started and did not finish (uncommitted frames or a marker)."""
        return self.pending is not None or self.frames != self.committed


def is_consolidated(store: str | Path) -> bool:
    """Return whether a Zarr store has consolidated metadata (v2 ``.zmetadata``)."""
    return (Path(store) / ".zmetadata").exists()


def lock_path(store: str | Path) -> Path:
    """Return the lock file that serialises writers of ``store`` (hidden, beside it)."""
    store = Path(store)
    return store.with_name(f".{store.name}.lock")


def writer_active(store: str | Path) -> bool:
    """Return whether an ingest holds the writer lock of ``store`` right now."""
    import filelock

    path = lock_path(store)
    if not path.exists():
        return False
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def store_state(store: str | Path) -> StoreState | None:
    """Return the commit state of a Zarr cube, or ``None`` when ``store`` is not one."""
    import zarr

    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
        frames = int(group["time"].shape[0])
    except Exception:
        return None
    attrs = dict(group.attrs)
    committed = int(attrs.get(COMMITTED_ATTR, frames))
    pending = attrs.get(PENDING_ATTR)
    if pending is not None:
        try:
            who = json.loads(pending)
            pending = (
                f"{who.get('action', 'write')} by PID {who['pid']} on {who['host']} "
                f"at {who['started']}"
            )
        except (ValueError, KeyError, TypeError):
            pending = str(pending)
    return StoreState(frames, committed, pending)


def open_cube(store: str | Path, *, quiet: bool = False) -> xr.Dataset:
    """Open a Zarr cube lazily (dask) and check the contract; :class:`CubeError` if unusable.

    Only committed frames are shown: when a write was interrupted (a killed or failed
    ingest), the frames beyond the last commit are left out and a warning says so, unless
    ``quiet``. The next ``mimcast ingest`` into the cube repairs it.
    """
    store = Path(store)
    if not store.exists():
        raise CubeError(f"{store}: no such cube (run 'mimcast ingest' first)")
    try:
        ds = xr.open_zarr(store, consolidated=is_consolidated(store))
    except Exception as err:
        raise CubeError(f"{store}: not a readable Zarr cube ({err})") from err
    committed = ds.attrs.pop(COMMITTED_ATTR, None)
    pending = ds.attrs.pop(PENDING_ATTR, None)
    if committed is not None and (pending is not None or ds.sizes["time"] != committed):
        if ds.sizes["time"] < committed:
            raise CubeError(
                f"{store}: holds {ds.sizes['time']} frames but {committed} were committed; "
                "the store was damaged outside mimcast: rebuild it from the source files"
            )
        if not quiet and writer_active(store):
            log.info("%s: an ingest is appending; using the %d committed frames",
                     store, committed)  # fmt: skip
        elif not quiet:
            state = store_state(store)
            log.warning(
                "%s: a write was interrupted (%s); using the %d committed frames, ignoring %d "
                "uncommitted; run 'mimcast ingest' into this cube again to repair it",
                store, state.pending if state else "unknown writer", committed,
                ds.sizes["time"] - committed,
            )  # fmt: skip
        ds = ds.isel(time=slice(0, int(committed)))
    if ds.sizes["time"] == 0:
        raise CubeError(f"{store}: the cube holds no committed frame")
    return validate_cube(ds)


def axis_breaks(cube: xr.Dataset) -> np.ndarray:
    """Return, per frame, whether the time axis jumps before it (more than one step).

    Ingest leaves long gaps out of the axis (see :mod:`pipeline.ingest`); no window may
    span such a break. The first frame is never a break.
    """
    times = np.asarray(cube.time.values, dtype="datetime64[s]")
    out = np.zeros(times.size, dtype=bool)
    if times.size > 1:
        step = np.timedelta64(step_minutes(cube), "m")
        out[1:] = np.diff(times) != step
    return out


def observed(cube: xr.Dataset) -> np.ndarray:
    """Return the per-frame ``observed`` flags (all True for a cube without gap bookkeeping)."""
    if "observed" in cube:
        return np.asarray(cube["observed"].values, dtype=bool)
    return np.ones(cube.sizes["time"], dtype=bool)


def parse_time(text: str) -> np.datetime64:
    """Return the UTC time ``text`` names, to the second (``datetime64[s]``).

    One rule for every option that takes a time: ISO 8601 with ``T`` or a space, minutes or
    seconds, optionally ending in ``Z`` or ``+00:00`` (times are UTC; another offset is
    refused rather than silently shifted).
    """
    bad = f"{text!r} is not an ISO 8601 UTC time (e.g. 2024-07-01T12:30 or 2024-07-01T12:30Z)"
    value = str(text).strip()
    for suffix in ("Z", "z", "+00:00", "+0000"):
        if value.endswith(suffix):
            value = value[: -len(suffix)]
            break
    clock = value.split("T")[-1].split(" ")[-1]
    if re.search(r"[+-]\d\d:?\d\d$", clock):  # another offset
        raise ValueError(bad)
    try:
        return np.datetime64(value.replace(" ", "T"), "s")
    except ValueError:
        raise ValueError(bad) from None


def step_minutes(cube: xr.Dataset) -> int:
    """Return the cube's time step in minutes (its attribute, else the first difference)."""
    step = int(cube.attrs.get("time_step_minutes") or 0)
    if not step:
        if cube.sizes["time"] < 2:
            raise CubeError("cannot tell the time step of a one-frame cube")
        step = int(np.diff(cube.time.values[:2])[0] / np.timedelta64(1, "m"))
    return step


def pixel_metres(cube: xr.Dataset) -> float | None:
    """The cube's grid spacing in metres (the geometric mean of x and y); None when an axis
    has under two pixels or is not in metres."""
    spacing = []
    for axis in ("x", "y"):
        coord = cube[axis]
        if coord.size < 2 or coord.attrs.get("units", "m") not in ("m", "metre", "meter"):
            return None
        spacing.append(abs(float(coord.values[1] - coord.values[0])))
    return float(np.sqrt(spacing[0] * spacing[1])) or None


def complete_windows(
    flags: np.ndarray, length: int, stride: int = 1, breaks: np.ndarray | None = None
) -> np.ndarray:
    """Return the start indices of windows of ``length`` frames that are all observed.

    ``breaks`` (from :func:`axis_breaks`): frames where the time axis jumps; a window may
    start at one but not contain one after its first frame.
    """
    flags = np.asarray(flags, dtype=bool)
    if flags.size < length or length < 1:
        return np.zeros(0, dtype=np.int64)
    run = np.convolve(flags.astype(np.int64), np.ones(length, dtype=np.int64), "valid")
    ok = run == length
    if breaks is not None and length > 1:
        jumps = np.asarray(breaks, dtype=np.int64)
        inner = np.convolve(jumps[1:], np.ones(length - 1, dtype=np.int64), "valid")
        ok &= inner == 0
    starts = np.flatnonzero(ok)
    return starts[starts % stride == 0] if stride > 1 else starts
