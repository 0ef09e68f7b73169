"""Cloud-Optimised GeoTIFFs of a nowcast, one file per lead time, for GIS tools.

QGIS shows the lead times of the NetCDF as bands only; a GeoTIFF per lead time is what its
layers and temporal controller take. :func:`write_geotiffs` writes, for each lead,
``nowcast_<source>_<reference>_<lead>min_valid<valid>.tif`` (times ``YYYYmmddHHMM`` UTC), a
COG (tiled, overviews, deflate) with three bands: reflectivity (dBZ), rain rate (mm h-1) and
the accumulation since the reference time (mm), nodata -9999. The grid is the nowcast's own,
pixel for pixel (no resampling), north-up, in the CRS of the NetCDF (the EPSG one where the
source is one; longitude/latitude for a lat/lon source). Tags: ``valid_time``,
``reference_time``, ``lead_minutes`` and ``TIFFTAG_DATETIME``. Each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from mimcast.pipeline.atomic import atomic_path
from mimcast.pipeline.netcdf import FILL_VALUE, PRODUCTS, nowcast_filename, product_grid

BANDS = {
    "reflectivity": "equivalent reflectivity factor (dBZ)",
    "rainfall_rate": "rain rate (mm h-1)",
    "precipitation_amount": "precipitation since the reference time (mm)",
}


def geotiff_name(source: str, reference: np.datetime64, valid: np.datetime64, lead: int) -> str:
    """Return ``nowcast_<source>_<ref>_<lead>min_valid<valid>.tif``."""
    stem = nowcast_filename(source, reference).removesuffix(".nc")
    stamp = np.datetime64(valid, "m").item().strftime("%Y%m%d%H%M")
    return f"{stem}_{lead:03d}min_valid{stamp}.tif"


def write_geotiffs(forecast: xr.Dataset, out_dir: str | Path, *, source: str) -> list[Path]:
    """Write one COG per lead time of ``forecast`` into ``out_dir``; return the paths."""
    import rasterio
    from affine import Affine
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    grid = product_grid(forecast)  # x/y (or lon/lat) centres and the CRS WKT, as in the NetCDF
    x, y, wkt = grid.x, grid.y, grid.wkt
    flip = y.size > 1 and y[1] > y[0]  # rows south to north (RADOLAN): write north-up
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(abs(y[1] - y[0])) if y.size > 1 else 1.0
    transform = Affine.translation(float(x[0]) - dx / 2, float(y.max()) + dy / 2) @ Affine.scale(
        dx, -dy
    )
    reference = forecast["forecast_reference_time"].values
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, valid in enumerate(forecast.time.values):
        lead = int(forecast["forecast_period"].values[i])
        data = np.stack([forecast[name].values[i] for name in PRODUCTS]).astype(np.float32)
        data = np.where(np.isfinite(data), data, FILL_VALUE)
        if flip:
            data = data[:, ::-1, :]
        profile = {"driver": "GTiff", "width": x.size, "height": y.size, "count": len(PRODUCTS),
                   "dtype": "float32", "crs": rasterio.crs.CRS.from_wkt(wkt),
                   "transform": transform, "nodata": float(FILL_VALUE)}  # fmt: skip
        when = np.datetime64(valid, "s")
        tags = {
            "valid_time": f"{when}Z",
            "reference_time": f"{np.datetime64(reference, 's')}Z",
            "lead_minutes": str(lead),
            "source": source,
            "TIFFTAG_DATETIME": when.item().strftime("%Y:%m:%d %H:%M:%S"),
        }
        path = out / geotiff_name(source, reference, valid, lead)
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(data)
                dst.update_tags(**tags)
                for band, name in enumerate(PRODUCTS, start=1):
                    dst.set_band_description(band, BANDS[name])
                    dst.update_tags(
                        band, quantity=name, units=forecast[name].attrs.get("units", "")
                    )
            with atomic_path(path) as tmp, mem.open() as src:
                rio_copy(src, str(tmp), driver="COG", compress="DEFLATE", predictor=3)
        paths.append(path)
    return paths
