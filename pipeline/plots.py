"""Pictures: cartopy quicklooks of nowcasts in the data's own projection, animations, skill curves.

Maps are drawn in the grid's projection (from ``crs_wkt``), with a dBZ colour scale,
gridlines and lat/lon labels, and Natural Earth 1:50m coastlines and land borders shipped in
``data/naturalearth/`` (public domain; "Made with Natural Earth"), so maps need no download
and no cartopy data directory. mimcast never lets cartopy download anything.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import cartopy
import cartopy.crs as ccrs
import matplotlib.pyplot as plt
import numpy as np
import shapely.geometry as sgeom
import xarray as xr
from matplotlib.colors import BoundaryNorm, ListedColormap

from mimcast.pipeline.cube import cube_crs

# never download at run time: drawing must not hang on a closed network
cartopy.config["downloaders"] = {}
if os.environ.get("CARTOPY_DATA_DIR"):
    cartopy.config["pre_existing_data_dir"] = Path(os.environ["CARTOPY_DATA_DIR"])

DBZ_LEVELS = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70]
DBZ_COLORS = [
    "#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802",
    "#e5bc00", "#fd9500", "#fd0000", "#d40000", "#bc0000", "#f800fd",
]  # fmt: skip
DBZ_CMAP = ListedColormap(DBZ_COLORS, name="dbz").with_extremes(
    under=(1, 1, 1, 0), bad=(0.85, 0.85, 0.85, 1.0)
)
DBZ_NORM = BoundaryNorm(DBZ_LEVELS, DBZ_CMAP.N)


class DataProjection(ccrs.Projection):
    """A cartopy projection for any pyproj CRS, bounded by the data's extent."""

    def __init__(self, wkt: str, extent: tuple[float, float, float, float]) -> None:
        self._extent = extent
        super().__init__(wkt)

    @property
    def boundary(self):
        x0, x1, y0, y1 = self._extent
        return sgeom.LinearRing([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])

    @property
    def x_limits(self):
        return self._extent[0], self._extent[1]

    @property
    def y_limits(self):
        return self._extent[2], self._extent[3]

    @property
    def threshold(self):
        return (self._extent[1] - self._extent[0]) / 1000.0

    @threshold.setter
    def threshold(self, _value) -> None:  # cartopy >= 0.23 assigns one in __init__: ignore
        pass


def extent(ds: xr.Dataset) -> tuple[float, float, float, float]:
    """Return the outer edges ``(xmin, xmax, ymin, ymax)`` of the grid."""
    x, y = ds.x.values, ds.y.values
    dx = abs(x[1] - x[0]) if x.size > 1 else 1.0
    dy = abs(y[1] - y[0]) if y.size > 1 else 1.0
    return x.min() - dx / 2, x.max() + dx / 2, y.min() - dy / 2, y.max() + dy / 2


#: Natural Earth 1:50m coastlines and land borders (GeoJSON, gzip), shipped with mimcast.
NATURAL_EARTH = Path(__file__).resolve().parents[1] / "data" / "naturalearth"
_LAYERS = (("ne_50m_coastline", "0.15", 0.6), ("ne_50m_admin_0_boundary_lines_land", "0.35", 0.5))


@functools.cache
def natural_earth(name: str) -> tuple:
    """The line geometries (lon/lat) of a shipped Natural Earth layer, read once."""
    with gzip.open(NATURAL_EARTH / f"{name}.json.gz", "rt") as fh:
        doc = json.load(fh)
    return tuple(sgeom.shape(feature["geometry"]) for feature in doc["features"])


def _lonlat_box(ds: xr.Dataset) -> sgeom.Polygon:
    """A lon/lat box around the grid (its edges transformed, 2 degrees of margin)."""
    import pyproj

    x0, x1, y0, y1 = extent(ds)
    t = np.linspace(0.0, 1.0, 33)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t,
                         np.full_like(t, x0)])  # fmt: skip
    ys = np.concatenate([np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1),
                         y1 - (y1 - y0) * t])  # fmt: skip
    to_lonlat = pyproj.Transformer.from_crs(cube_crs(ds), "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(xs, ys)
    ok = np.isfinite(lon) & np.isfinite(lat)
    if not ok.any():
        return sgeom.box(-180, -90, 180, 90)
    return sgeom.box(max(lon[ok].min() - 2, -180), max(lat[ok].min() - 2, -90),
                     min(lon[ok].max() + 2, 180), min(lat[ok].max() + 2, 90))  # fmt: skip


def _add_geography(ax, ds: xr.Dataset) -> None:
    try:
        box = _lonlat_box(ds)
        for name, color, width in _LAYERS:
            lines = [g for g in natural_earth(name) if g.intersects(box)]
            if lines:
                ax.add_geometries(lines, ccrs.PlateCarree(), facecolor="none", edgecolor=color,
                                  linewidth=width)  # fmt: skip
    except OSError as err:  # a stripped installation: draw the map anyway
        logging.getLogger("mimcast").warning(
            "Natural Earth layers unreadable (%s); maps without coastlines", err
        )


def map_axes(fig, ds: xr.Dataset, position=111):
    """Return a cartopy axes in the data's projection with geography and labelled gridlines."""
    proj = DataProjection(cube_crs(ds).to_wkt(), extent(ds))
    args = position if isinstance(position, tuple) else (position,)
    ax = fig.add_subplot(*args, projection=proj)
    ax.set_extent(extent(ds), crs=proj)
    _add_geography(ax, ds)
    gl = ax.gridlines(draw_labels=True, linewidth=0.4, color="0.4", alpha=0.6)
    gl.top_labels = gl.right_labels = False
    return ax, proj


#: Longest side, in grid pixels, of a field as drawn: a map is at most about 700 pixels wide
#: on screen, so a 4400 x 3800 grid is thinned (every k-th pixel, as "nearest" resampling
#: draws it anyway) before it is drawn: maps of continental grids took seconds each
DRAWN_SIDE = 1400


def drawn(field: np.ndarray) -> np.ndarray:
    """``field`` thinned to at most :data:`DRAWN_SIDE` pixels a side (every k-th pixel)."""
    k = -(-max(field.shape[-2:]) // DRAWN_SIDE)
    return field if k <= 1 else field[..., ::k, ::k]


def draw_dbz(ax, proj, ds: xr.Dataset, field: np.ndarray):
    """Draw a dBZ field on ``ax``; return the image for a colour bar."""
    x0, x1, y0, y1 = extent(ds)
    north_up = ds.y.values[0] > ds.y.values[-1]
    return ax.imshow(
        drawn(field), extent=(x0, x1, y0, y1), origin="upper" if north_up else "lower",
        transform=proj, cmap=DBZ_CMAP, norm=DBZ_NORM, interpolation="nearest",
    )  # fmt: skip


def _method(forecast: xr.Dataset) -> str:
    method = str(forecast.attrs.get("method", "mimnet"))
    return "MIMNet" if method == "mimnet" else method


def quicklook(forecast: xr.Dataset, lead_minutes: int, path: str | Path) -> Path:
    """Draw the forecast reflectivity at ``lead_minutes`` as a PNG map; return its path."""
    leads = forecast["forecast_period"].values.tolist()
    if lead_minutes not in leads:
        raise ValueError(f"lead time {lead_minutes} min not in the forecast (have {leads})")
    i = leads.index(lead_minutes)
    fig = plt.figure(figsize=(8, 7))
    ax, proj = map_axes(fig, forecast)
    img = draw_dbz(ax, proj, forecast, forecast["reflectivity"].values[i])
    ref = np.datetime64(forecast["forecast_reference_time"].values, "m")
    valid = np.datetime64(forecast.time.values[i], "m")
    ax.set_title(f"{_method(forecast)} nowcast +{lead_minutes} min\nvalid {valid} UTC "
                 f"(from {ref} UTC)")  # fmt: skip
    fig.colorbar(img, ax=ax, shrink=0.75, label="reflectivity (dBZ)", extend="max")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def animation(forecast: xr.Dataset, path: str | Path, fps: float = 3.0) -> Path:
    """Write an animated GIF of the forecast reflectivity through all lead times."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig = plt.figure(figsize=(7, 6))
    ax, proj = map_axes(fig, forecast)
    img = draw_dbz(ax, proj, forecast, forecast["reflectivity"].values[0])
    fig.colorbar(img, ax=ax, shrink=0.75, label="reflectivity (dBZ)", extend="max")
    leads = forecast["forecast_period"].values

    def frame(i: int):
        img.set_data(drawn(forecast["reflectivity"].values[i]))
        ax.set_title(f"{_method(forecast)} nowcast +{int(leads[i])} min, valid "
                     f"{np.datetime64(forecast.time.values[i], 'm')} UTC")  # fmt: skip
        return (img,)

    anim = FuncAnimation(fig, frame, frames=len(leads), blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=70)
    plt.close(fig)
    return path


_STYLES = ("o-", "s--", "d-.", "v-", "P--", "X-.", "*-", "h--")


def method_styles(methods: list[str]) -> dict[str, tuple[str, str, str]]:
    """Label, colour and line style per method label: any registered method, no table to edit.

    Model labels (``mimnet...``) come first in solid lines; persistence is always black.
    """
    styles = {}
    for i, m in enumerate(methods):
        color = "k" if m == "persistence" else f"C{i % 10}"
        style = "^:" if m == "persistence" else _STYLES[i % len(_STYLES)]
        styles[m] = (m, color, style)
    return styles


def skill_curves(rows: list[dict], out_dir: str | Path,
                 lead_label: str = "lead time (min)") -> list[Path]:  # fmt: skip
    """Draw CSI vs lead time (one panel per threshold) and MSE vs lead time; return PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = sorted({r["method"] for r in rows}, key=lambda m: (not m.startswith("mimnet"), m))
    styles = method_styles(methods)
    thresholds = sorted({r["threshold"] for r in rows if r["metric"] == "CSI"},
                        key=lambda t: (t.split()[1], float(t.split()[0])))  # fmt: skip
    fig, axes = plt.subplots(1, len(thresholds), figsize=(3.2 * len(thresholds), 3.4),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, thr in zip(axes[0], thresholds, strict=True):
        for m in methods:
            pts = sorted(
                (r["lead_time"], r["value"])
                for r in rows
                if r["method"] == m and r["metric"] == "CSI" and r["threshold"] == thr
            )
            label, color, style = styles[m]
            ax.plot(*zip(*pts, strict=True), style, color=color, label=label, ms=3)
        ax.set(title=f"CSI ≥ {thr}", xlabel=lead_label, ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CSI")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    csi = out / "skill_csi.png"
    fig.savefig(csi, dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m in methods:
        pts = sorted((r["lead_time"], r["value"]) for r in rows
                     if r["method"] == m and r["metric"] == "MSE")  # fmt: skip
        label, color, style = styles[m]
        ax.plot(*zip(*pts, strict=True), style, color=color, label=label, ms=3)
    ax.set(title="MSE (dBZ², valid pixels)", xlabel=lead_label, ylabel="MSE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    mse = out / "skill_mse.png"
    fig.savefig(mse, dpi=90)
    plt.close(fig)
    return [csi, mse]


def example_maps(grid: xr.Dataset, panels: dict[str, np.ndarray], leads: list[int],
                 path: str | Path, title: str) -> Path:  # fmt: skip
    """Draw side-by-side maps: one row per lead time, one column per field (dBZ)."""
    names = list(panels)
    # constrained layout leaves room for each map's gridline labels: the titles of one row
    # overlapped the longitude labels of the row above
    fig = plt.figure(figsize=(3.3 * len(names), 3.2 * len(leads) + 0.6), layout="constrained")
    img = None
    for i, lead_index in enumerate(leads):
        for j, name in enumerate(names):
            ax, proj = map_axes(fig, grid, (len(leads), len(names), i * len(names) + j + 1))
            img = draw_dbz(ax, proj, grid, panels[name][lead_index])
            # method and lead on two lines: long method names overran their neighbours
            ax.set_title(f"{name}\n+{(lead_index + 1) * int(grid.attrs.get('step', 5))} min",
                         fontsize=9)  # fmt: skip
    fig.suptitle(title)
    if img is not None:
        fig.colorbar(img, ax=fig.axes, shrink=0.6, label="reflectivity (dBZ)")
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def difference_curves(rows: list[dict], out_dir: str | Path, lead_label: str = "lead time (min)",
                      level: float = 0.95) -> list[Path]:  # fmt: skip
    """Draw model-minus-baseline differences with their intervals (one figure per model,
    one panel per score, one line and band per baseline); return the PNGs.

    ``rows``: :func:`mimcast.pipeline.significance.differences`. Above zero is better for
    every panel: MSE is drawn as baseline minus model.
    """
    from mimcast.pipeline.significance import LOWER_IS_BETTER

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(r["method"] for r in rows))
    scores = list(dict.fromkeys((r["metric"], r["threshold"]) for r in rows))
    paths = []
    for model in models:
        mine = [r for r in rows if r["method"] == model]
        bases = list(dict.fromkeys(r["baseline"] for r in mine))
        styles = method_styles(bases)
        fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 3.4),
                                 squeeze=False)  # fmt: skip
        for ax, (metric, threshold) in zip(axes[0], scores, strict=True):
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            for base in bases:
                pts = sorted((r["lead_time"], sign * r["difference"], sign * r["ci_low"],
                              sign * r["ci_high"]) for r in mine
                             if r["baseline"] == base and r["metric"] == metric
                             and r["threshold"] == threshold)  # fmt: skip
                if not pts:
                    continue
                lead, diff, low, high = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
                _, color, style = styles[base]
                ax.plot(lead, diff, style, color=color, ms=3, label=f"vs {base}")
                ax.fill_between(lead, np.minimum(low, high), np.maximum(low, high), color=color,
                                alpha=0.15, linewidth=0)  # fmt: skip
            ax.axhline(0.0, color="0.3", lw=0.8)
            what = f"{metric} ≥ {threshold}" if threshold else f"{metric} (baseline − model)"
            ax.set(title=what, xlabel=lead_label)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{model} better ↑")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{model} against the baselines: difference and {level * 100:g} % interval "
                     "(resampled reference times)", fontsize=10)  # fmt: skip
        fig.tight_layout()
        name = "differences.png" if len(models) == 1 else f"differences_{model}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        paths.append(out / name)
    return paths
