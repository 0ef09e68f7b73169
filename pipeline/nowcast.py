"""Nowcast: run any registered forecaster over a cube at a reference time, on the full domain.

Contract
--------
:func:`nowcast` takes a radar cube and a forecaster (:mod:`mimcast.pipeline.forecasters`:
MIMNet from a checkpoint, persistence, extrapolation, S-PROG, ...) and returns a forecast
dataset: ``reflectivity`` (dBZ), ``rainfall_rate`` (mm/h) and ``precipitation_amount`` (mm
accumulated since the reference time) on dims ``(time, y, x)`` where ``time`` is the valid
time of each lead, with the scalar ``forecast_reference_time``, the ``forecast_period``
coordinate, the cube's ``x``/``y`` and ``crs``. Every method gives the same dataset, so the
same CF NetCDF writer serves all of them. The reference time is the latest one whose input
frames are all observed (``"latest"``) or a given time; a missing or gap frame among the
inputs raises :class:`NowcastError` naming the missing times, and inputs without one valid
pixel raise it too (no all-NaN product).

Models run on grids larger than ``max_pixels`` in overlapping tiles (:func:`predict`),
blended with linear ramps over the overlap, so memory stays bounded whatever the domain.
NaN in a product means unknown: outside the coverage of the last observed frame, or
advected in from outside the grid.
:func:`run_nowcast` is the file-level job (cube path in, NetCDF and maps out) that the CLI
and the Prefect flow both call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mimcast.pipeline.cube import GRID_MAPPING, VARIABLE, parse_time, step_minutes
from mimcast.pipeline.cube import observed as cube_observed
from mimcast.pipeline.defaults import (
    MAP_LEADS,
    MIN_STEP_MINUTES,
    NOWCAST_METHOD,
    RAIN_THRESHOLD_DBZ,
)
from mimcast.pipeline.products import accumulate
from mimcast.pipeline.zr import MARSHALL_PALMER, ZR, dbz_to_rate

log = logging.getLogger("mimcast")


class NowcastError(ValueError):
    """The cube cannot feed a nowcast at the requested time; the message names the frames."""


class NoValidDataError(NowcastError):
    """The inputs (or the forecast) hold no valid pixel: a broken feed, not a missing frame."""


@dataclass(frozen=True)
class NowcastOptions:
    """How a nowcast is run."""

    time: str = "latest"  # reference time (ISO 8601, UTC) or "latest"
    leads: int | None = None  # lead steps; None: the method's default (a model's horizon)
    rain_threshold_dbz: float = RAIN_THRESHOLD_DBZ  # weaker reflectivity gives no rain
    zr: ZR | None = None  # Z-R for products; None: the cube's (zr_a/zr_b) or Marshall-Palmer


@dataclass(frozen=True)
class TileOptions:
    """How a model runs over a grid (what :func:`predict` reads)."""

    device: str = "auto"  # "auto": CUDA when present, else CPU
    bf16: bool | None = None  # bf16 autocast; None: where it pays (models.device.inference_bf16)
    max_pixels: int = 1024 * 1024  # grids with more pixels are tiled (memory budget)
    tile: int = 512  # tile side in pixels
    overlap: int = 64  # overlap between tiles in pixels (blended)


def input_times(cube: xr.Dataset, n_inputs: int, when: str = "latest") -> np.ndarray:
    """Return the ``n_inputs`` input times ending at the reference time ``when``."""
    step = np.timedelta64(step_minutes(cube), "m")
    times = cube.time.values.astype("datetime64[m]")
    observed = cube_observed(cube)
    available = times[observed]
    if when == "latest":
        for ref in available[::-1]:
            wanted = ref - step * np.arange(n_inputs - 1, -1, -1)
            if np.isin(wanted, available).all():
                return wanted
        raise NowcastError(
            f"no reference time in the cube has {n_inputs} consecutive observed frames "
            f"(cube: {times.size} frames, {int((~observed).sum())} gaps)"
        )
    try:
        exact = parse_time(when)
    except ValueError as err:
        raise NowcastError(f"reference time: {err}") from None
    ref = exact.astype("datetime64[m]")
    if ref != exact:
        raise NowcastError(f"reference time {when!r} is not on a whole minute (frames are)")
    wanted = ref - step * np.arange(n_inputs - 1, -1, -1)
    if not np.isin(ref, times) and times[0] <= ref <= times[-1]:
        before, after = times[times < ref][-1], times[times > ref][0]
        raise NowcastError(
            f"reference time {ref} is not a frame of the cube (its {step_minutes(cube)}-minute "
            f"grid has {before} and {after} around it)"
        )
    if not times[0] <= ref <= times[-1]:
        raise NowcastError(
            f"reference time {ref} is outside the cube, which runs from {times[0]} to {times[-1]}"
        )
    missing = [str(t) for t in wanted[~np.isin(wanted, available)]]
    if missing:
        kind = "missing or gaps"
        raise NowcastError(
            f"cannot nowcast from {ref}: input frames {', '.join(missing)} are {kind} "
            f"(the method needs {n_inputs} frames at {step_minutes(cube)}-minute steps)"
        )
    return wanted


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(n, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if not at_start:
            w[:overlap] = ramp[: min(overlap, n)]
        if not at_end:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1][: min(overlap, n)])
    return w


#: Tiled inference reports its progress once it has run this long (seconds): quiet on the
#: grids that take seconds, a line about every tenth of the tiles on those that take minutes
TILE_PROGRESS_AFTER_S = 10.0


def tile_slices(size: int, tile: int, overlap: int) -> list[slice]:
    """Return overlapping slices of length ``tile`` covering ``range(size)``."""
    if size <= tile:
        return [slice(0, size)]
    stride = tile - overlap
    starts = [*range(0, size - tile, stride), size - tile]
    return [slice(s, s + tile) for s in sorted(set(starts))]


def predict(
    model,
    frames: np.ndarray,
    options,
    step_minutes: float | None = None,
    steps: int | None = None,
) -> np.ndarray:
    """Run ``model`` on normalised ``frames`` ``(T_in, H, W)``; return ``(T_out, H, W)`` in [0, 1].

    ``options`` has the fields of :class:`TileOptions` (a
    :class:`~mimcast.pipeline.forecasters.MIMNetForecaster` has them too); tiles when
    ``H * W`` exceeds ``options.max_pixels``. ``step_minutes``: minutes between the frames,
    for a model that takes them (``step_input``). ``steps``: only the first ``steps`` of
    its ``T_out`` output frames (default all).
    """
    import torch

    from mimcast.models.device import inference_bf16, resolve_device
    from mimcast.models.mimnet import autocast

    device = resolve_device(options.device)
    bf16 = inference_bf16(options.bf16, device)
    model = model.to(device).eval()
    n_out = model.config.output_length if steps is None else steps
    _, height, width = frames.shape
    kwargs = {"step_minutes": step_minutes} if step_minutes is not None else {}
    if steps is not None:
        kwargs["steps"] = steps

    def run(block: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(block))[None, :, None].to(device)
        with torch.inference_mode(), autocast(device, enabled=bf16):
            y = model(x, **kwargs)  # (1, T_out, 1, h, w)
        return y[0, :, 0].float().clamp(0, 1).cpu().numpy()

    if height * width <= options.max_pixels:
        return run(frames)
    acc = np.zeros((n_out, height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    rows = tile_slices(height, options.tile, options.overlap)
    cols = tile_slices(width, options.tile, options.overlap)
    n_tiles, done, start = len(rows) * len(cols), 0, time.perf_counter()
    for r in rows:
        wr = _ramp(r.stop - r.start, options.overlap, r.start == 0, r.stop == height)
        for c in cols:
            wc = _ramp(c.stop - c.start, options.overlap, c.start == 0, c.stop == width)
            w = np.outer(wr, wc)
            acc[:, r, c] += run(frames[:, r, c]) * w
            weight[r, c] += w
            done += 1
            seconds = time.perf_counter() - start
            if (n_tiles >= 10 and done % -(-n_tiles // 10) == 0 and done < n_tiles
                    and seconds >= TILE_PROGRESS_AFTER_S):  # fmt: skip
                # a continental grid takes minutes: say how far it is, about every tenth
                log.info("network: %d of %d tiles in %.0f s", done, n_tiles, seconds)
    return acc / weight


def forecast_dataset(
    cube: xr.Dataset,
    dbz: np.ndarray,
    wanted: np.ndarray,
    options: NowcastOptions,
    *,
    source: str,
    method: str,
) -> xr.Dataset:
    """Wrap forecast reflectivity ``(L, H, W)`` from inputs ``wanted`` as the product dataset."""
    step = step_minutes(cube)
    refl_attrs = cube[VARIABLE].attrs
    zr = options.zr or (
        ZR(float(refl_attrs["zr_a"]), float(refl_attrs["zr_b"]))
        if "zr_a" in refl_attrs and "zr_b" in refl_attrs
        else MARSHALL_PALMER
    )
    n_out = dbz.shape[0]
    rate = dbz_to_rate(dbz, zr, options.rain_threshold_dbz).astype(np.float32)
    amount = accumulate(rate, step).astype(np.float32)
    reference = wanted[-1].astype("datetime64[ns]")
    lead = np.arange(1, n_out + 1) * step
    valid_times = reference + lead.astype("timedelta64[m]").astype("timedelta64[ns]")
    attrs: dict[str, Any] = {"zr_a": zr.a, "zr_b": zr.b}
    return xr.Dataset(
        {
            "reflectivity": (("time", "y", "x"), dbz.astype(np.float32), {
                "standard_name": "equivalent_reflectivity_factor", "long_name":
                "forecast equivalent reflectivity factor", "units": "dBZ",
                "grid_mapping": GRID_MAPPING, "cell_methods": "time: point"}),
            "rainfall_rate": (("time", "y", "x"), rate, {
                "standard_name": "rainfall_rate", "long_name": "forecast rain rate",
                "units": "mm h-1", "grid_mapping": GRID_MAPPING, "cell_methods": "time: point",
                "comment": f"Z = {zr.a:g} R^{zr.b:g}; 0 below {options.rain_threshold_dbz:g} dBZ",
                **attrs}),
            "precipitation_amount": (("time", "y", "x"), amount, {
                "standard_name": "precipitation_amount",
                "long_name": "precipitation accumulated since the reference time",
                "units": "kg m-2", "grid_mapping": GRID_MAPPING,
                "cell_methods": "time: sum"}),
            # the accumulation interval of each lead: reference time .. valid time
            "time_bnds": (("time", "nv"), np.stack([np.full_like(valid_times, reference),
                                                    valid_times], axis=1)),
        },
        coords={
            "time": ("time", valid_times, {"standard_name": "time", "long_name": "valid time",
                                           "axis": "T", "bounds": "time_bnds"}),
            "forecast_period": ("time", lead.astype(np.int32), {
                "standard_name": "forecast_period", "long_name": "lead time", "units": "minutes"}),
            "forecast_reference_time": ((), reference, {
                "standard_name": "forecast_reference_time",
                "long_name": "time of the last observed input frame"}),
            "y": cube.y, "x": cube.x, GRID_MAPPING: cube[GRID_MAPPING],
        },
        attrs={"source": source, "input_times": ", ".join(str(t) for t in wanted),
               "time_step_minutes": step, "method": method},
    )  # fmt: skip


def nowcast(
    cube: xr.Dataset,
    forecaster,
    options: NowcastOptions | None = None,
    *,
    source: str = "mimcast",
) -> xr.Dataset:
    """Return the forecast dataset of ``forecaster`` for ``cube`` at ``options.time``."""
    from mimcast.pipeline.forecasters import for_cube

    options = options or NowcastOptions()
    forecaster = for_cube(forecaster, cube)
    n_leads = options.leads or forecaster.default_leads
    if n_leads < 1:
        raise NowcastError(f"lead steps must be >= 1, got {n_leads}")
    if forecaster.max_leads is not None and n_leads > forecaster.max_leads:
        raise NowcastError(
            f"{forecaster.name} predicts at most {forecaster.max_leads} lead steps, {n_leads} asked"
        )
    wanted = input_times(cube, forecaster.input_frames, options.time)
    log.info("%s: %d lead steps from %s", forecaster.name, n_leads, wanted[-1])
    inputs = cube[VARIABLE].sel(time=wanted.astype("datetime64[ns]")).values  # (T_in, H, W)
    if not np.isfinite(inputs[-1]).any():
        raise NoValidDataError(
            f"cannot nowcast from {wanted[-1]}: the last input frame has no valid pixel"
        )
    dbz = np.asarray(forecaster(inputs, n_leads), dtype=np.float32)
    if not np.isfinite(dbz).any():
        raise NoValidDataError(
            f"{forecaster.name} forecast from {wanted[-1]} has no valid pixel; nothing written"
        )
    return forecast_dataset(cube, dbz, wanted, options, source=source, method=forecaster.name)


@dataclass
class NowcastOutputs:
    """Files written by one nowcast."""

    netcdf: Path
    reference_time: str
    pngs: list[Path]
    animation: Path | None
    method: str
    geotiffs: list[Path] = field(default_factory=list)


def run_nowcast(
    cube_path: str | Path,
    out_dir: str | Path,
    *,
    method: str = NOWCAST_METHOD,
    checkpoint: str | Path | None = None,
    postprocess: str | None = None,
    time: str = "latest",
    plot: bool = False,
    leads: tuple[int, ...] = MAP_LEADS,
    source: str | None = None,
    device: str = "auto",
    steps: int | None = None,
    geotiff: bool = False,
    min_step_minutes: float = MIN_STEP_MINUTES,
    refine: int | None = None,
) -> NowcastOutputs:
    """Nowcast from a Zarr cube with a registered method; write NetCDF (and quicklooks).

    ``postprocess``: MIMNet's output post-processing (one of ``POSTPROCESS``); None: the
    checkpoint's default.
    ``geotiff``: also write a Cloud-Optimised GeoTIFF per lead time (:mod:`pipeline.geotiff`).
    ``min_step_minutes``: on archives with shorter steps, MIMNet's shortest model step and
    the span per step of the frames extrapolation and S-PROG estimate their motion on (every
    k-th frame; see :mod:`~mimcast.pipeline.forecasters`).
    ``refine``: MIMNet runs on a grid this many times finer than the cube's (None: near the
    grid it was trained on; :class:`~mimcast.pipeline.forecasters.MIMNetForecaster`).
    """
    from mimcast.pipeline.cube import open_cube
    from mimcast.pipeline.forecasters import for_cube, get_forecaster
    from mimcast.pipeline.netcdf import write_nowcast

    cube = open_cube(cube_path)
    log.info("loading %s", method)
    forecaster = get_forecaster(method, checkpoint=str(checkpoint) if checkpoint else None,
                                device=device, min_step_minutes=min_step_minutes,
                                postprocess=postprocess, refine=refine)  # fmt: skip
    forecaster = for_cube(forecaster, cube)
    name = _source_name(cube_path, source)
    forecast = nowcast(cube, forecaster, NowcastOptions(time=time, leads=steps), source=name)
    if method == "mimnet":
        model, about = "MIMNet", forecaster.describe()
    else:
        model, about = method, forecaster.description
    log.info("writing the NetCDF")
    path = write_nowcast(forecast, out_dir, source=name, model=model, checkpoint=about)
    pngs, gif = [], None
    if plot:
        from mimcast.pipeline.plots import animation, quicklook

        log.info("drawing maps")

        have = forecast["forecast_period"].values.tolist()
        stem = path.with_suffix("")
        for lead in [lead for lead in leads if lead in have] or have[-1:]:
            pngs.append(quicklook(forecast, lead, f"{stem}_{lead:03d}min.png"))
        gif = animation(forecast, f"{stem}.gif")
    ref = str(np.datetime64(forecast["forecast_reference_time"].values, "m"))
    tifs = []
    if geotiff:
        from mimcast.pipeline.geotiff import write_geotiffs

        tifs = write_geotiffs(forecast, out_dir, source=name)
    return NowcastOutputs(path, ref, pngs, gif, method, tifs)


def _source_name(cube_path: str | Path, source: str | None) -> str:
    """The source in product names: given, else the cube's name without ``.zarr``."""
    return source or Path(cube_path).name.removesuffix(".zarr")


def existing_product(
    cube_path: str | Path,
    out_dir: str | Path,
    *,
    method: str = NOWCAST_METHOD,
    checkpoint: str | Path | None = None,
    time: str = "latest",
    source: str | None = None,
    min_step_minutes: float = MIN_STEP_MINUTES,
) -> Path | None:
    """Return the product that a nowcast at ``time`` would write, if it exists already.

    A scheduled run asks this first: with no new frame since the last product there is
    nothing to do. Any problem (no cube, missing inputs, an unusable model) returns ``None``,
    so that :func:`run_nowcast` meets and reports it.
    """
    from mimcast.models.checkpoint import CheckpointError
    from mimcast.pipeline.cube import CubeError, open_cube
    from mimcast.pipeline.forecasters import for_cube, get_forecaster
    from mimcast.pipeline.netcdf import nowcast_filename

    try:
        cube = open_cube(cube_path, quiet=True)
        forecaster = get_forecaster(method, checkpoint=str(checkpoint) if checkpoint else None,
                                    min_step_minutes=min_step_minutes)  # fmt: skip
        forecaster = for_cube(forecaster, cube)
        ref = input_times(cube, forecaster.input_frames, time)[-1]
    except (CubeError, NowcastError, CheckpointError, OSError):
        return None
    path = Path(out_dir) / nowcast_filename(_source_name(cube_path, source), ref)
    return path if path.exists() else None
