"""Synthetic storm archives: the weather a nowcaster has to learn, in a real radar format.

Contract
--------
:func:`synthetic_cube` returns a radar cube (see :mod:`pipeline.cube`) and
:func:`write_archive` writes the same frames as ODIM_H5 composite files, one per time step,
named ``synthetic_dbzh_<YYYYmmddHHMM>.h5``. Both are deterministic per
:class:`SyntheticConfig` (seed included), and the cube holds exactly the values the files
decode to (8-bit DBZH: gain 0.5 dB, offset -32 dBZ, 0 = undetect, 255 = nodata).

The weather
-----------
- **Advection** by a smooth, slowly varying, divergence-free wind: a mean wind
  (``wind_u``, ``wind_v`` in m/s) plus a sinusoidal stream-function perturbation of amplitude
  ``wind_variation`` and length scale ``wind_scale_km`` that drifts with period
  ``wind_period_frames``. Stratiform rain is advected semi-Lagrangian (its Lagrangian
  coordinates are carried with the flow); storm cells are advected at their centre.
- **Convective cells** that initiate, grow to a peak at ``peak_fraction`` of their lifetime
  (accumulation), decay and vanish (dissipation), while their elliptic shape stretches,
  shears and rotates (deformation). Cells are drawn at random at ``cell_rate`` or given
  explicitly in ``cells``.
- **Stratiform areas**: a smooth random field (a sum of Fourier modes that evolve slowly),
  thresholded to cover about ``stratiform_fraction`` of the domain with light rain.
- **Speckle**: isolated weak echoes (clutter-like), a ``speckle_fraction`` of the pixels.
- **Coverage**: the union of ``radars`` range circles; outside it, nodata (NaN in the cube).

Rain rate becomes reflectivity through Z = a R^b (``zr_a``, ``zr_b``); echoes below
``min_dbz`` are reported as undetect, which decodes to :data:`pipeline.cube.NO_ECHO_DBZ`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pyproj
import xarray as xr
from scipy import ndimage

from mimcast.pipeline.atomic import atomic_path
from mimcast.pipeline.cube import NO_ECHO_DBZ, build_cube, parse_time, regular_grid
from mimcast.pipeline.zr import MARSHALL_PALMER

#: 8-bit DBZH coding used by the generated files (the usual ODIM choice).
GAIN = 0.5
OFFSET = NO_ECHO_DBZ
UNDETECT = 0
NODATA = 255
ODIM_CONVENTIONS = "ODIM_H5/V2_4"
FILE_PATTERN = "synthetic_dbzh_{stamp}.h5"


@dataclass(frozen=True)
class StormCell:
    """One convective cell; positions in pixels (column, row; row 0 is the northern edge)."""

    birth: float  # frame index at which the cell initiates (may be negative: spin-up)
    lifetime: float  # frames from initiation to complete dissipation
    col: float  # column of the cell centre at birth
    row: float  # row of the cell centre at birth
    peak_rain: float  # rain rate at the core at maturity, mm/h
    radius: float  # Gaussian core radius at maturity, pixels
    stretch: float = 0.8  # elongation over the lifetime: major axis grows by (1 + stretch)
    shear: float = 0.3  # shear of the shape over the lifetime (x += shear * y at the end)
    rotation: float = 3.0  # degrees per frame the shape rotates (positive: anticlockwise)
    orientation: float = 0.0  # orientation of the major axis at birth, degrees from east


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic storm archive; every field has a realistic default."""

    height: int = 256  # rows of the grid
    width: int = 256  # columns of the grid
    frames: int = 24  # number of time steps
    step_minutes: int = 5  # minutes between time steps
    seed: int = 0  # random seed: the same seed gives the same archive
    start: str = "2024-07-01T12:00:00"  # UTC time of the first frame (ISO 8601, no zone)
    pixel_size_m: float = 1000.0  # grid spacing in metres (square pixels)
    projdef: str = (  # PROJ string of the grid (ETRS89-LAEA Europe, as OPERA uses)
        "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"
    )
    centre_lon: float = 6.0  # longitude of the domain centre, degrees east
    centre_lat: float = 50.5  # latitude of the domain centre, degrees north
    wind_u: float = 8.0  # mean eastward wind, m/s
    wind_v: float = 4.0  # mean northward wind, m/s
    wind_variation: float = 1.5  # amplitude of the smooth wind perturbation, m/s
    wind_scale_km: float = 300.0  # wavelength of the wind perturbation, km
    wind_period_frames: float = 96.0  # period of the perturbation's drift, frames
    cell_rate: float = 0.5  # new cells per frame per 256 x 256 pixels
    cell_lifetime: tuple[float, float] = (10.0, 30.0)  # range of cell lifetimes, frames
    cell_peak_rain: tuple[float, float] = (8.0, 120.0)  # range of peak rain rates, mm/h
    cell_radius: tuple[float, float] = (3.0, 9.0)  # range of core radii, pixels
    peak_fraction: float = 0.4  # part of the lifetime spent growing before the peak
    cells: tuple[StormCell, ...] | None = None  # explicit cells; None draws them at cell_rate
    stratiform_fraction: float = 0.15  # approximate fraction of the domain with stratiform rain
    stratiform_rain: float = 2.0  # typical stratiform rain rate, mm/h
    stratiform_scale_km: float = 150.0  # length scale of stratiform areas, km
    texture: float = 0.35  # std of the log rain-rate texture carried by the flow (0: smooth)
    texture_scale_km: float = 12.0  # length scale of that texture, km
    stratiform_evolution_frames: float = 150.0  # period of the stratiform shape's evolution
    speckle_fraction: float = 3e-4  # fraction of pixels with isolated clutter-like echo
    radars: int = 3  # radars in the composite (their range circles make the coverage)
    coverage_radius: float = 0.5  # radar range as a fraction of the larger grid side
    min_dbz: float = 7.0  # weaker echoes are reported as undetect
    zr_a: float = MARSHALL_PALMER.a  # Z = a R^b (Marshall-Palmer)
    zr_b: float = MARSHALL_PALMER.b  # Z = a R^b (Marshall-Palmer)

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"size {self.height}x{self.width}: each side must be at least 8")
        if self.frames < 1:
            raise ValueError(f"frames={self.frames}: must be at least 1")
        if self.step_minutes < 1:
            raise ValueError(f"step_minutes={self.step_minutes}: must be at least 1")
        if not 0.0 < self.peak_fraction < 1.0:
            raise ValueError(f"peak_fraction={self.peak_fraction}: must lie in (0, 1)")
        if not 0.0 <= self.stratiform_fraction < 1.0:
            raise ValueError(f"stratiform_fraction={self.stratiform_fraction}: must be in [0,1)")
        try:
            parse_time(self.start)
        except ValueError as err:
            raise ValueError(f"start: {err}") from None
        crs = pyproj.CRS.from_user_input(self.projdef)
        if not crs.is_projected:
            raise ValueError(f"projdef={self.projdef!r}: must be a projected CRS in metres")

    @property
    def step_seconds(self) -> float:
        """Seconds between frames."""
        return 60.0 * self.step_minutes

    def mean_displacement(self) -> tuple[float, float]:
        """Mean displacement per time step in pixels as ``(dcol, drow)`` (rows grow southwards)."""
        scale = self.step_seconds / self.pixel_size_m
        return self.wind_u * scale, -self.wind_v * scale


# --------------------------------------------------------------------------------------------
# geometry


def grid(config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, pyproj.CRS]:
    """Return pixel-centre ``x``, ``y`` (metres) and the CRS of the configured domain."""
    crs = pyproj.CRS.from_user_input(config.projdef)
    to_xy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    cx, cy = to_xy.transform(config.centre_lon, config.centre_lat)
    px = config.pixel_size_m
    # snap the upper-left corner to whole pixels, as operational grids are
    x0 = math.floor((cx - config.width * px / 2) / px) * px
    y0 = math.floor((cy + config.height * px / 2) / px) * px
    x, y = regular_grid(x0, y0, px, px, config.width, config.height)
    return x, y, crs


def corners(config: SyntheticConfig) -> dict[str, float]:
    """Return ODIM corner attributes (``LL_lon`` ... ``UR_lat``): outer corners of corner pixels."""
    x, y, crs = grid(config)
    half = config.pixel_size_m / 2
    left, right = x[0] - half, x[-1] + half
    top, bottom = y[0] + half, y[-1] - half
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    out: dict[str, float] = {}
    for name, (cx, cy) in {
        "LL": (left, bottom),
        "UL": (left, top),
        "UR": (right, top),
        "LR": (right, bottom),
    }.items():
        lon, lat = to_ll.transform(cx, cy)
        out[f"{name}_lon"], out[f"{name}_lat"] = float(lon), float(lat)
    return out


def times(config: SyntheticConfig) -> np.ndarray:
    """Return the nominal frame times as ``datetime64[ns]`` (UTC, naive)."""
    start = parse_time(config.start).astype("datetime64[ns]")
    step = np.timedelta64(config.step_minutes, "m")
    return start + step * np.arange(config.frames)


def coverage_mask(config: SyntheticConfig) -> np.ndarray:
    """Return a boolean ``(height, width)`` mask, True inside the radars' combined coverage."""
    rng = np.random.default_rng([config.seed, 1])
    h, w = config.height, config.width
    radius = config.coverage_radius * max(h, w)
    rows, cols = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), dtype=bool)
    for k in range(config.radars):
        angle = 2 * math.pi * k / max(config.radars, 1) + rng.uniform(0, 2 * math.pi)
        dist = 0.28 * min(h, w) * (config.radars > 1)
        rc = h / 2 + dist * math.sin(angle) + rng.uniform(-0.05, 0.05) * h
        cc = w / 2 + dist * math.cos(angle) + rng.uniform(-0.05, 0.05) * w
        mask |= (rows - rc) ** 2 + (cols - cc) ** 2 <= radius**2
    return mask


# --------------------------------------------------------------------------------------------
# weather


def wind(config: SyntheticConfig, col: np.ndarray, row: np.ndarray, t: float) -> tuple:
    """Return the displacement per step ``(dcol, drow)`` in pixels at positions and frame ``t``.

    The perturbation derives from a stream function, so the flow is divergence-free.
    """
    mean_c, mean_r = config.mean_displacement()
    scale = config.step_seconds / config.pixel_size_m
    amp = config.wind_variation * scale
    k = 2 * math.pi * config.pixel_size_m / (config.wind_scale_km * 1000.0)
    phase = 2 * math.pi * t / config.wind_period_frames
    rng = np.random.default_rng([config.seed, 2])
    p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
    # psi = amp/k sin(k c + p1) sin(k r + p2 + phase): dcol = dpsi/dr, drow = -dpsi/dc
    dcol = mean_c + amp * np.sin(k * col + p1) * np.cos(k * row + p2 + phase)
    drow = mean_r - amp * np.cos(k * col + p1) * np.sin(k * row + p2 + phase)
    return dcol, drow


def draw_cells(config: SyntheticConfig) -> tuple[StormCell, ...]:
    """Return the configured cells, or draw them at random (deterministic per seed)."""
    if config.cells is not None:
        return config.cells
    rng = np.random.default_rng([config.seed, 3])
    max_life = config.cell_lifetime[1]
    dc, dr = config.mean_displacement()
    margin = math.hypot(dc, dr) * max_life + 3 * config.cell_radius[1]
    h_ext, w_ext = config.height + 2 * margin, config.width + 2 * margin
    expected = config.cell_rate * (config.frames + max_life) * h_ext * w_ext / 256**2
    cells = []
    for _ in range(rng.poisson(expected)):
        cells.append(
            StormCell(
                birth=float(rng.uniform(-max_life, config.frames)),
                lifetime=float(rng.uniform(*config.cell_lifetime)),
                col=float(rng.uniform(-margin, config.width + margin)),
                row=float(rng.uniform(-margin, config.height + margin)),
                # heavy cells are rarer than weak ones
                peak_rain=float(
                    np.exp(rng.uniform(*np.log(np.asarray(config.cell_peak_rain, dtype=float))))
                ),
                radius=float(rng.uniform(*config.cell_radius)),
                stretch=float(rng.uniform(0.2, 1.5)),
                shear=float(rng.uniform(-0.6, 0.6)),
                rotation=float(rng.uniform(-6.0, 6.0)),
                orientation=float(rng.uniform(0.0, 180.0)),
            )
        )
    return tuple(cells)


def life_cycle(config: SyntheticConfig, age_fraction: np.ndarray | float) -> np.ndarray:
    """Return the intensity envelope in [0, 1] at ``age_fraction`` of a cell's lifetime.

    It rises smoothly from 0 at initiation to 1 at ``peak_fraction`` and falls back to 0 at
    the end of the lifetime; outside [0, 1] it is 0.
    """
    tau = np.asarray(age_fraction, dtype=float)
    p = config.peak_fraction
    grow = np.sin(0.5 * np.pi * np.clip(tau / p, 0, 1)) ** 2
    decay = np.cos(0.5 * np.pi * np.clip((tau - p) / (1 - p), 0, 1)) ** 2
    env = np.where(tau < p, grow, decay)
    return np.where((tau > 0) & (tau < 1), env, 0.0)


def cell_tracks(config: SyntheticConfig, cells: tuple[StormCell, ...]) -> np.ndarray:
    """Return cell centres ``(n_cells, frames, 2)`` as (col, row), advected by :func:`wind`."""
    out = np.full((len(cells), config.frames, 2), np.nan)
    for i, cell in enumerate(cells):
        t0 = math.floor(cell.birth)
        col, row = cell.col, cell.row
        for t in range(t0, config.frames):
            if t >= 0:
                out[i, t] = col, row
            dcol, drow = wind(config, np.asarray(col), np.asarray(row), t)
            col, row = col + float(dcol), row + float(drow)
    return out


def _cell_rain(
    config: SyntheticConfig, cell: StormCell, centre: np.ndarray, t: int, rain: np.ndarray
) -> None:
    """Add one cell's rain rate at frame ``t`` into ``rain`` (in place, on its bounding box)."""
    tau = (t - cell.birth) / cell.lifetime
    env = float(life_cycle(config, tau))
    if env <= 0.0:
        return
    size = cell.radius * (0.55 + 0.45 * env)  # cells widen as they develop
    a = size * math.sqrt(1.0 + cell.stretch * tau)  # major semi-axis
    b = size / math.sqrt(1.0 + cell.stretch * tau)  # minor semi-axis (area kept)
    theta = math.radians(cell.orientation + cell.rotation * (t - cell.birth))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shear = np.array([[1.0, cell.shear * tau], [0.0, 1.0]])
    shape = shear @ rot @ np.diag([a, b])  # maps the unit circle to the cell's ellipse
    inv = np.linalg.inv(shape @ shape.T)
    reach = 4.0 * math.sqrt(np.linalg.eigvalsh(shape @ shape.T).max())
    c, r = centre
    c0, c1 = max(int(c - reach), 0), min(int(c + reach) + 2, config.width)
    r0, r1 = max(int(r - reach), 0), min(int(r + reach) + 2, config.height)
    if c0 >= c1 or r0 >= r1:
        return
    rows, cols = np.mgrid[r0:r1, c0:c1]
    dx = cols - c
    dy = r - rows  # y points north
    q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
    rain[r0:r1, c0:c1] += cell.peak_rain * env * np.exp(-0.5 * q)


class _Stratiform:
    """Smooth random rain field carried along the flow by semi-Lagrangian advection."""

    def __init__(self, config: SyntheticConfig, n_modes: int = 24) -> None:
        self.config = config
        self.large = _Modes(config, config.stratiform_scale_km, n_modes, stream=4)
        self.small = _Modes(config, config.texture_scale_km, n_modes, stream=6)
        frac = min(max(config.stratiform_fraction, 1e-6), 1 - 1e-6)
        self.threshold = math.sqrt(2) * _erfinv(1 - 2 * frac)  # P(N(0,1) > z) = frac
        h, w = config.height, config.width
        self.rows, self.cols = np.mgrid[0:h, 0:w].astype(np.float64)
        # Lagrangian coordinates minus Eulerian ones: zero at the first frame
        self.dev_c = np.zeros((h, w))
        self.dev_r = np.zeros((h, w))

    def advance(self, t: int) -> None:
        """Carry the Lagrangian coordinates from frame ``t - 1`` to frame ``t``."""
        dcol, drow = wind(self.config, self.cols, self.rows, t - 1)
        dep_c, dep_r = self.cols - dcol, self.rows - drow  # departure points
        coords = np.stack([dep_r, dep_c])
        self.dev_c = -dcol + ndimage.map_coordinates(self.dev_c, coords, order=1, mode="nearest")
        self.dev_r = -drow + ndimage.map_coordinates(self.dev_r, coords, order=1, mode="nearest")

    def rain(self, t: int) -> np.ndarray:
        """Return the stratiform rain rate (mm/h) at frame ``t`` (after :meth:`advance`)."""
        if self.config.stratiform_fraction <= 0:
            return np.zeros_like(self.rows)
        lc, lr = self.cols + self.dev_c, self.rows + self.dev_r
        excess = self.large(lc, lr, t) - self.threshold
        return self.config.stratiform_rain * np.clip(excess, 0.0, None) * 2.0

    def texture(self, t: int) -> np.ndarray:
        """Return a multiplicative log-normal texture (mean about 1) carried by the flow."""
        if self.config.texture <= 0:
            return np.ones_like(self.rows)
        lc, lr = self.cols + self.dev_c, self.rows + self.dev_r
        sigma = self.config.texture
        return np.exp(sigma * self.small(lc, lr, t) - 0.5 * sigma**2)


class _Modes:
    """A smooth random field of unit variance: a sum of slowly evolving Fourier modes."""

    def __init__(self, config: SyntheticConfig, scale_km: float, n_modes: int, stream: int):
        rng = np.random.default_rng([config.seed, stream])
        k0 = 2 * math.pi * config.pixel_size_m / (scale_km * 1000.0)
        mag = k0 * rng.uniform(0.5, 1.6, n_modes)
        ang = rng.uniform(0, 2 * math.pi, n_modes)
        self.kc, self.kr = mag * np.cos(ang), mag * np.sin(ang)
        amp = rng.uniform(0.5, 1.0, n_modes)
        self.amp = amp / math.sqrt(float(np.sum(amp**2)) / 2)  # unit variance
        self.phase = rng.uniform(0, 2 * math.pi, n_modes)
        self.omega = rng.uniform(-1, 1, n_modes) * 2 * math.pi / config.stratiform_evolution_frames

    def __call__(self, cols: np.ndarray, rows: np.ndarray, t: float) -> np.ndarray:
        field = np.zeros_like(cols)
        for kc, kr, amp, ph, om in zip(
            self.kc, self.kr, self.amp, self.phase, self.omega, strict=True
        ):
            field += amp * np.cos(kc * cols + kr * rows + ph + om * t)
        return field


def _erfinv(y: float) -> float:
    """Inverse error function (scipy's, kept behind a name for readability)."""
    from scipy.special import erfinv

    return float(erfinv(y))


def rain_to_dbz(
    rain: np.ndarray, a: float = MARSHALL_PALMER.a, b: float = MARSHALL_PALMER.b
) -> np.ndarray:
    """Return reflectivity in dBZ for rain rate in mm/h through Z = a R^b (-inf for R = 0)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(a) + 10.0 * b * np.log10(rain)


def encode(dbz: np.ndarray, coverage: np.ndarray, min_dbz: float) -> np.ndarray:
    """Return 8-bit ODIM DBZH counts: undetect below ``min_dbz``, nodata outside coverage."""
    counts = np.clip(np.rint((dbz - OFFSET) / GAIN), 1, 254)
    counts = np.where(np.isfinite(dbz) & (dbz >= min_dbz), counts, UNDETECT)
    counts = np.where(coverage, counts, NODATA)
    return counts.astype(np.uint8)


def decode(counts: np.ndarray) -> np.ndarray:
    """Return dBZ (float32) for 8-bit counts: nodata becomes NaN, undetect ``NO_ECHO_DBZ``."""
    dbz = (OFFSET + GAIN * counts.astype(np.float32)).astype(np.float32)
    dbz[counts == UNDETECT] = NO_ECHO_DBZ
    dbz[counts == NODATA] = np.nan
    return dbz


def iter_frames(config: SyntheticConfig) -> Iterator[tuple[np.datetime64, np.ndarray]]:
    """Yield ``(time, counts)`` per frame: 8-bit DBZH counts of shape ``(height, width)``."""
    cells = draw_cells(config)
    tracks = cell_tracks(config, cells)
    strat = _Stratiform(config)
    cover = coverage_mask(config)
    rng = np.random.default_rng([config.seed, 5])
    for t, when in enumerate(times(config)):
        if t > 0:
            strat.advance(t)
        rain = strat.rain(t)
        for i, cell in enumerate(cells):
            if not np.isnan(tracks[i, t, 0]):
                _cell_rain(config, cell, tracks[i, t], t, rain)
        rain *= strat.texture(t)
        dbz = rain_to_dbz(rain, config.zr_a, config.zr_b)
        speckle = rng.random(rain.shape) < config.speckle_fraction
        clutter = rng.uniform(config.min_dbz, 30.0, rain.shape)
        dbz = np.where(speckle, np.fmax(dbz, clutter), dbz)
        yield when, encode(dbz, cover, config.min_dbz)


def synthetic_cube(config: SyntheticConfig | None = None) -> xr.Dataset:
    """Return the synthetic archive as an in-memory radar cube (no files written).

    Like a cube that ``mimcast ingest`` wrote from its files: every frame observed, and the
    time step recorded.
    """
    config = config or SyntheticConfig()
    x, y, crs = grid(config)
    stamps, frames = [], []
    for when, counts in iter_frames(config):
        stamps.append(when)
        frames.append(decode(counts))
    cube = build_cube(np.stack(frames), stamps, x, y, crs, source="mimcast synthetic storms")
    cube = cube.assign(observed=("time", np.ones(len(stamps), bool)))
    return cube.assign_attrs(time_step_minutes=int(config.step_minutes))


# --------------------------------------------------------------------------------------------
# ODIM_H5 files


def _s(text: str) -> np.bytes_:
    """ODIM strings are fixed-length, null-terminated."""
    return np.bytes_(text.encode("ascii"))


def _write_odim(path: Path, config: SyntheticConfig, when: np.datetime64, counts: np.ndarray):
    stamp = when.astype("datetime64[s]").item()
    end = stamp + timedelta(minutes=config.step_minutes)
    date, time = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S")
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        f.attrs["Conventions"] = _s(ODIM_CONVENTIONS)
        what = f.create_group("what")
        what.attrs.update(
            {
                "object": _s("COMP"),
                "version": _s("H5rad 2.4"),
                "date": _s(date),
                "time": _s(time),
                "source": _s("ORG:999,CMT:mimcast synthetic composite"),
            }
        )
        where = f.create_group("where")
        where.attrs["projdef"] = _s(config.projdef)
        where.attrs["xsize"] = np.int64(config.width)
        where.attrs["ysize"] = np.int64(config.height)
        where.attrs["xscale"] = np.float64(config.pixel_size_m)
        where.attrs["yscale"] = np.float64(config.pixel_size_m)
        for key, value in corners(config).items():
            where.attrs[key] = np.float64(value)
        how = f.create_group("how")
        how.attrs["software"] = _s("mimcast")
        how.attrs["simulated"] = _s("True")
        how.attrs["zr_a"] = np.float64(config.zr_a)
        how.attrs["zr_b"] = np.float64(config.zr_b)
        how.attrs["nodes"] = _s(",".join(f"'syn{k:02d}'" for k in range(config.radars)))
        ds_what = f.create_group("dataset1/what")
        ds_what.attrs.update(
            {
                "product": _s("MAX"),
                "startdate": _s(date),
                "starttime": _s(time),
                "enddate": _s(end.strftime("%Y%m%d")),
                "endtime": _s(end.strftime("%H%M%S")),
            }
        )
        data_what = f.create_group("dataset1/data1/what")
        data_what.attrs["quantity"] = _s("DBZH")
        data_what.attrs["gain"] = np.float64(GAIN)
        data_what.attrs["offset"] = np.float64(OFFSET)
        data_what.attrs["nodata"] = np.float64(NODATA)
        data_what.attrs["undetect"] = np.float64(UNDETECT)
        data = f["dataset1/data1"].create_dataset(
            "data",
            data=counts,
            chunks=(min(256, config.height), min(256, config.width)),
            compression="gzip",
            compression_opts=6,
            track_times=False,
        )
        data.attrs["CLASS"] = _s("IMAGE")
        data.attrs["IMAGE_VERSION"] = _s("1.2")


def archive_path(out_dir: Path, when: np.datetime64) -> Path:
    """Return the file name of the frame at ``when`` inside ``out_dir``."""
    stamp = when.astype("datetime64[s]").item().strftime("%Y%m%d%H%M")
    return Path(out_dir) / FILE_PATTERN.format(stamp=stamp)


def write_archive(
    config: SyntheticConfig, out_dir: str | Path, *, progress: bool = False
) -> list[Path]:
    """Write the synthetic archive as ODIM_H5 files into ``out_dir`` and return their paths.

    Each file is written to a temporary name and renamed when complete, so an interrupted
    run never leaves a partial file under a final name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = iter_frames(config)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=config.frames, desc="synth", unit="frame")
    paths = []
    for when, counts in frames:
        path = archive_path(out, when)
        with atomic_path(path) as tmp:
            _write_odim(tmp, config, when, counts)
        paths.append(path)
    return paths
